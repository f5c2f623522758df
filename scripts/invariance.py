"""Measures Table 1 of the LN paper on ln_jax's own layers and prints it.

  python scripts/invariance.py
  python scripts/invariance.py --norms=layer,rms --dtype=float32 --output_dir=/tmp/inv

For each normalizer, one layer h = norm(W x) on random data, six re-scalings and re-centerings of
the weights or the data, and the largest relative change of h (see ln_jax/analysis/invariance.py). Prints
the table and writes invariance.md and invariance.json into --output_dir. Normalizer settings
other than the epsilon (e.g. --config.norm_fast_variance=true) come from --config.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ln_jax import cli
from ln_jax.analysis import invariance

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_ROOT, 'configs', 'pi_mnist.py'),
    'Config file whose normalizer settings the layers use.', lock_config=True)
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'runs/invariance',
                                  'Folder for invariance.md and invariance.json (created).')
_NORMS = flags.DEFINE_list('norms', None, 'Rows to measure (default: all normalizers).')
_EPSILON = flags.DEFINE_float('epsilon', 0.0, 'Normalizer epsilon; any > 0 makes the '
                              'invariances approximate.', lower_bound=0.0)
_DTYPE = flags.DEFINE_enum('dtype', 'float64', invariance.DTYPES, 'Precision of the measurement.')
_THRESHOLD = flags.DEFINE_float('threshold', None, 'Largest deviation still called Invariant '
                                '(default 1e-9 in float64, 1e-4 in float32).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the data, parameters and transformations.',
                             lower_bound=0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  settings = dict(epsilon=_EPSILON.value, dtype=_DTYPE.value, threshold=_THRESHOLD.value)
  invariance.check_settings(_NORMS.value, **settings)  # fail before creating anything
  invariance.prepare_output_dir(_OUTPUT_DIR.value)  # and before measuring, not after
  table = invariance.measure_table(_CONFIG.value, _NORMS.value, seed=_SEED.value, **settings)
  markdown_path, json_path = invariance.write_table(table, _OUTPUT_DIR.value)
  print(invariance.to_markdown(table), end='')
  logging.info('wrote %s and %s', markdown_path, json_path)


if __name__ == '__main__':
  cli.run(main)
