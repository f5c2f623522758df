"""Trains one run into --workdir, or resumes the run already there.

  python scripts/train.py --config=configs/pi_mnist.py --workdir=/tmp/pi_ln \
      --config.norm=layer --config.batch_size=4

Running the same command again resumes from the latest checkpoint; a workdir holding a run with a
different config is refused unless --fresh replaces it. SIGTERM or Ctrl-C saves a checkpoint and
stops (exit status 143 or 130); a user mistake prints one `error:` line (exit status 2).
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
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (created if missing); a run already '
                                'there with the same config is resumed.')
_FRESH = flags.DEFINE_bool('fresh', False, 'Delete the run already in --workdir (config, metrics, '
                           'events, checkpoints) and start over.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host: join the job via jax.distributed.initialize() first; '
    'every process needs the same --workdir, on a filesystem they all share.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _DISTRIBUTED.value:
    from ln_jax.training import parallel
    parallel.initialize_distributed()
  from ln_jax.training import train  # imports JAX: keep flag errors fast
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, fresh=_FRESH.value)


if __name__ == '__main__':
  cli.run(main)
