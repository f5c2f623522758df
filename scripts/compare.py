"""Compares the runs under one or several folders: selection on the validation set, the tuned
value per group, seeds as means with 95% intervals, paired differences between methods, and the
experiment's claims with their verdicts. Writes, into the first folder (or --output_dir),
Figure 6-style learning curves (PNG, PDF), the summary table (Markdown, CSV, also printed) and
claims.md / claims.json.

  python scripts/compare.py /tmp/f6
  python scripts/compare.py /tmp/f6_a /tmp/f6_b --output_dir=/tmp/f6_both --all_settings

A folder may hold a sweep or any run directories made by hand; the sweep's experiment file sets
the default metric, grouping, tuned keys, selection metric and claims (as recorded in sweep.json),
and the figure's panels and axes (its PANEL_BY and PLOT, read from the file at compare time).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from ln_jax import cli
from ln_jax.errors import UserError

_METRIC = flags.DEFINE_string(
    'metric', None, 'Metric to tabulate and plot below the training loss (default: the '
    "experiment's first, else the task's selection metric on test: test_error for classification).")
_GROUP_BY = flags.DEFINE_list('group_by', None, 'Config keys whose values make a curve; seeds '
                              'are averaged (default: the experiment\'s, else norm,batch_size).')
_TUNED = flags.DEFINE_list('tuned', None, 'Config keys tuned per group on the validation metric '
                           '(default: the experiment\'s TUNED, else none).')
_SELECT_BY = flags.DEFINE_string(
    'select_by', None, 'Validation metric each run is read at its best of, and tuned keys are '
    "chosen on (default: the experiment's, else the task's selection metric on valid).")
_ALL_SETTINGS = flags.DEFINE_bool('all_settings', False, 'Plot and tabulate every value of the '
                                  'tuned keys, not only the selected one.')
_ALLOW_MIXED = flags.DEFINE_bool('allow_mixed', False, 'Average runs of a group that differ in '
                                 'keys that are neither grouped, tuned nor the seed.')
_PANEL_BY = flags.DEFINE_string(
    'panel_by', None, "Group key with one panel per value (default: the experiment's PANEL_BY, "
    'else batch_size when grouped on, else one panel for all groups).')
_THRESHOLD = flags.DEFINE_float(
    'threshold', 0.02, 'The table gives the epochs each group took to reach metric <= threshold '
    "(>= for a higher-is-better metric), in the metric's stored units (0.02: 2% error).")
_BAND = flags.DEFINE_enum('band', 'ci', ['ci', 'minmax', 'std'], 'Band around each mean curve: '
                          '95% t interval of the mean, min-max or +/- std over seeds (groups of '
                          'fewer than 3 seeds draw each seed instead).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'Where the figures and tables go '
                                  '(default: the first folder).')


def main(argv):
  roots = argv[1:]
  if not roots:
    raise UserError('give the folders to compare: python scripts/compare.py DIR [DIR ...]')
  from ln_jax.analysis import claims as claims_lib
  from ln_jax.analysis import compare
  from ln_jax.analysis import plots
  from ln_jax.analysis import selection
  from ln_jax.analysis import tables
  from ln_jax.training import rundir
  from ln_jax.analysis import metrics as metrics_lib
  runs = compare.find_runs(roots)
  tasks = {(r.task or {}).get('name', 'classification') for r in runs}
  if len(tasks) > 1:
    raise UserError(f'the runs belong to different tasks ({", ".join(sorted(tasks))}); compare '
                    'the runs of one task at a time')
  defaults = compare.sweep_defaults(roots)
  task_metric, task_select = metrics_lib.default_keys(runs)
  metric = _METRIC.value or defaults.metric or task_metric
  group_by = tuple(_GROUP_BY.value or defaults.group_by)
  tuned = tuple(_TUNED.value if _TUNED.value is not None else defaults.tuned)
  select_by = _SELECT_BY.value or defaults.select_by or task_select
  metric_info = metrics_lib.info(runs, metric, '--metric')
  select_info = metrics_lib.info(runs, select_by, '--select_by')
  claim_infos = {claim.get('metric', metric): metrics_lib.info(
      runs, claim.get('metric', metric), f'the metric of claim {claim.get("text", "")!r}')
      for claim in defaults.claims}
  if not any(metric in r for run in runs for r in run.records):
    raise UserError(f'no run recorded {metric!r}; choose --metric from '
                    f'{", ".join(k for k in runs[0].records[-1] if k not in ("step", "epoch"))}')
  out_dir = _OUTPUT_DIR.value or roots[0]
  os.makedirs(out_dir, exist_ok=True)
  if not os.access(out_dir, os.W_OK):
    raise UserError(f'cannot write into {out_dir}; fix its permissions or pass --output_dir')
  panel_key = compare.panel_key(group_by, _PANEL_BY.value, defaults.panel_by)
  groups = compare.group_runs(runs, group_by, tuned, _ALLOW_MIXED.value)
  selection.check_select_by(runs, select_by)
  tuned_groups = selection.tune(groups, tuned, select_by)
  results = claims_lib.evaluate(defaults.claims, group_by, tuned, tuned_groups, select_by)

  rows = tables.summarize(tuned_groups, group_by, tuned, metric, select_by, _THRESHOLD.value,
                          _ALL_SETTINGS.value)
  table = tables.markdown_table(rows, group_by, tuned, metric_info, select_info,
                                _THRESHOLD.value)
  diffs = tables.differences_markdown(tables.differences(tuned_groups, group_by, metric,
                                                         select_by), group_by, metric_info,
                                      select_by)
  chosen = [f'{", ".join(compare.label(k, v) for k, v in zip(group_by, values))}: '
            f'{selection.describe(tuned, settings[0])} (best mean {select_by} of '
            f'{len(settings)})' for values, settings in tuned_groups.items()] if tuned else []

  curves = []
  for values, settings in tuned_groups.items():
    for setting in settings if _ALL_SETTINGS.value else settings[:1]:
      images = compare.train_size(setting.runs[0])
      detail = ', '.join(filter(None, [selection.describe(tuned, setting),
                                       f'{images:,} images' if images else '']))
      curves.append({'values': values, 'runs': setting.runs, 'detail': detail})
  prefix = os.path.join(out_dir, f'comparison_{metric}')
  figures = plots.learning_curves(curves, group_by, panel_key, metric, _BAND.value, prefix,
                                  defaults.plot)
  report = table + ('\nPaired differences between methods:\n\n' + diffs if diffs else '')
  rundir.write_text_atomic(prefix + '.md', report)
  rundir.write_text_atomic(prefix + '.csv', tables.csv_table(rows))
  written = [*figures, prefix + '.md', prefix + '.csv']
  if results:
    claims_text = claims_lib.markdown(results, select_by, claim_infos)
    rundir.write_text_atomic(os.path.join(out_dir, 'claims.md'), claims_text)
    rundir.write_json_atomic(os.path.join(out_dir, 'claims.json'), claims_lib.to_json(results))
    written += [os.path.join(out_dir, 'claims.md'), os.path.join(out_dir, 'claims.json')]

  print(f'{len(runs)} runs in {len(groups)} groups under {", ".join(roots)}; each run read at '
        f'its best {select_by}\n')
  if chosen:
    print(f'selected {", ".join(tuned)} per group:\n  ' + '\n  '.join(chosen) + '\n')
  print(report)
  if results:
    print('claims:\n' + claims_text)
  print('wrote ' + ', '.join(written))


if __name__ == '__main__':
  cli.run(main)
