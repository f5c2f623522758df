"""Trains one run into --workdir.

  python scripts/train.py --config=configs/pi_mnist.py --workdir=/tmp/pi_ln \
      --config.norm=layer --config.batch_size=4
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from ml_collections import config_flags

from ln_jax import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created if missing).')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host: join the job via jax.distributed.initialize() first.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _DISTRIBUTED.value:
    from ln_jax import parallel
    parallel.initialize_distributed()
  from ln_jax import train
  cli.prepare_workdir(_WORKDIR.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
