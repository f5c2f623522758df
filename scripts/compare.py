"""Compares the runs under DIR: Figure 6-style learning curves (PNG, PDF) and a summary table
(printed, and saved as Markdown and CSV), all written into DIR.

  python scripts/compare.py /tmp/f6
  python scripts/compare.py /tmp/f6 --metric=valid_error --group_by=norm,batch_size --band=std

DIR may hold a sweep or any run directories made by hand; the sweep's experiment file sets the
default metric and grouping.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from ln_jax import cli
from ln_jax.errors import UserError

_METRIC = flags.DEFINE_string('metric', None, 'Metric to tabulate and plot below the training '
                              'NLL (default: the experiment\'s first, else test_error).')
_GROUP_BY = flags.DEFINE_list('group_by', None, 'Config keys whose values make a curve; seeds '
                              'are averaged (default: the experiment\'s, else norm,batch_size).')
_PANEL_BY = flags.DEFINE_string('panel_by', 'batch_size', 'Group key with one panel per value '
                                '(the first group key when this one is not grouped on).')
_THRESHOLD = flags.DEFINE_float('threshold', 0.02, 'The table gives the epochs each group took '
                                'to reach metric <= threshold.', lower_bound=0.0)
_BAND = flags.DEFINE_enum('band', 'minmax', ['minmax', 'std'], 'Band around each mean curve.')


def main(argv):
  if len(argv) != 2:
    raise UserError('give one directory to compare: python scripts/compare.py DIR [--metric=...]')
  from ln_jax.analysis import compare
  from ln_jax.analysis import plots
  root = argv[1]
  runs = compare.find_runs(root)
  metric, group_by = compare.sweep_defaults(root)
  metric = _METRIC.value or metric
  group_by = tuple(_GROUP_BY.value or group_by)
  if not any(metric in r for run in runs for r in run.records):
    raise UserError(f'no run recorded {metric!r}; choose --metric from '
                    f'{", ".join(k for k in runs[0].records[-1] if k not in ("step", "epoch"))}')
  panel_key = _PANEL_BY.value if _PANEL_BY.value in group_by else group_by[0]
  groups = compare.group_runs(runs, group_by)
  rows = compare.summarize(groups, group_by, metric, _THRESHOLD.value)
  table = compare.markdown_table(rows, group_by, metric, _THRESHOLD.value)

  prefix = os.path.join(root, f'comparison_{metric}')
  if not os.access(root, os.W_OK):
    raise UserError(f'cannot write into {root}; fix its permissions')
  with open(prefix + '.md', 'w') as f:
    f.write(table)
  with open(prefix + '.csv', 'w') as f:
    f.write(compare.csv_table(rows))
  figures = plots.learning_curves(groups, group_by, panel_key, metric, _BAND.value, prefix)
  print(f'{len(runs)} runs in {len(groups)} groups under {root}\n')
  print(table)
  print('wrote ' + ', '.join([*figures, prefix + '.md', prefix + '.csv']))


if __name__ == '__main__':
  cli.run(main)
