"""The summary table (one row per group, or per setting with all settings shown) and the table of
paired differences between methods.

Every headline number is read at each run's best-validation evaluation ("test at best valid"),
next to its final value; seeds are summarized by their mean and 95% t interval.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from ln_jax.analysis import compare
from ln_jax.analysis import convergence
from ln_jax.analysis import metrics as metrics_lib
from ln_jax.analysis import selection
from ln_jax.analysis import stats


def summarize(tuned_groups: dict, keys: tuple, tuned: tuple, metric: str, select_by: str,
              threshold: float, all_settings: bool = False) -> list[dict]:
  """One row per group's selected setting (per setting with `all_settings`). The epochs to the
  threshold: the mean, over the runs that reach it, of the epoch each first does (interpolated
  between evaluations, convergence.epochs_to_reach)."""
  rows = []
  for group_values, settings in tuned_groups.items():
    for rank, setting in enumerate(settings if all_settings else settings[:1]):
      runs = setting.runs
      row = dict(zip(keys, group_values))
      row.update(zip(tuned, setting.tuned))
      row['selected'] = rank == 0
      row['settings_tried'] = len(settings)
      row['runs'] = len(runs)
      row['unfinished'] = sum(not r.complete for r in runs)
      row['train_images'] = compare.train_size(runs[0])
      for name, final in (('at_best', False), ('final', True)):
        interval = stats.t_interval(list(selection.by_seed(runs, metric, select_by, final)
                                         .values()))
        row[f'{name}_mean'], row[f'{name}_low'], row[f'{name}_high'] = (
            interval.mean, interval.low, interval.high)
      selected = list(selection.by_seed(runs, select_by, select_by).values())
      row[f'{select_by}_at_best'] = float(np.mean(selected)) if selected else math.nan
      reach = [e for e, reached in (convergence.epochs_to_reach(r, metric, threshold)
                                    for r in runs) if reached]
      row['epochs_to_threshold'] = float(np.mean(reach)) if reach else math.nan
      row['reached'] = len(reach)
      # The first window of a run includes compilation: leave it out of the speed.
      speeds = [r['steps_per_s'] for run in runs for r in run.records[1:] if r.get('steps_per_s')]
      row['steps_per_s'] = float(np.median(speeds)) if speeds else math.nan
      rows.append(row)
  return rows


def fmt(x: float) -> str:
  if not isinstance(x, (int, float)) or not math.isfinite(x):
    return '-'
  return f'{x:.4g}'


def _with_interval(row: dict, name: str, metric: metrics_lib.MetricInfo) -> str:
  text = metric.show(row[f'{name}_mean'])
  if math.isfinite(row[f'{name}_low']):
    text += f' [{metric.show(row[f"{name}_low"])}, {metric.show(row[f"{name}_high"])}]'
  return text


def markdown_table(rows: list[dict], keys: tuple, tuned: tuple, metric: metrics_lib.MetricInfo,
                   select: metrics_lib.MetricInfo, threshold: float) -> str:
  """`metric` and `select`: the compared and the selection metric (units and scale from their
  task); `threshold` is in the metric's stored units."""
  unit, select_by = metric.unit_suffix, select.key
  side = '<=' if metric.lower_is_better else '>='
  header = [*keys, *(f'{k.split(".")[-1]} (of {{n}})' for k in tuned), 'train images', 'runs',
            f'{metric.key} at best {select_by}{unit}, 95% CI',
            f'final {metric.key}{unit}, 95% CI', f'{select_by}{select.unit_suffix}',
            f'epochs to {side} {metric.show(threshold)}{unit}', 'steps/s']
  lines = []
  for row in rows:
    runs = str(row['runs']) + (f' ({row["unfinished"]} unfinished)' if row['unfinished'] else '')
    cells = [compare.label(k, row[k]) if k == 'norm' else str(row[k]) for k in keys]
    cells += [f'{row[k]:g}' + ('' if row['selected'] else ' (not selected)')
              if isinstance(row[k], float) else str(row[k]) for k in tuned]
    images = row['train_images']
    cells += [f'{images:,}' if images else '-', runs, _with_interval(row, 'at_best', metric),
              _with_interval(row, 'final', metric), select.show(row[f'{select_by}_at_best']),
              f'{fmt(row["epochs_to_threshold"])} ({row["reached"]}/{row["runs"]})',
              fmt(row['steps_per_s'])]
    lines.append('| ' + ' | '.join(cells) + ' |')
  tried = max((r['settings_tried'] for r in rows), default=1)
  header = [h.replace('{n}', str(tried)) for h in header]
  return '\n'.join(['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header), *lines]) + '\n'


def differences(tuned_groups: dict, keys: tuple, metric: str, select_by: str) -> list[dict]:
  """Paired differences between the selected settings of groups that differ only in the first
  group key (the method, e.g. norm), on their shared seeds."""
  rows = []
  group_list = list(tuned_groups)
  for i, a in enumerate(group_list):
    for b in group_list[i + 1:]:
      if a[0] == b[0] or a[1:] != b[1:]:
        continue
      values_a = selection.by_seed(tuned_groups[a][0].runs, metric, select_by)
      values_b = selection.by_seed(tuned_groups[b][0].runs, metric, select_by)
      interval, how = stats.paired_difference(values_a, values_b)
      rows.append({'a': a, 'b': b, 'how': how, **interval.to_dict()})
  return rows


def differences_markdown(rows: list[dict], keys: tuple, metric: metrics_lib.MetricInfo,
                         select_by: str) -> str:
  if not rows:
    return ''
  scale = metric.scale
  unit = ' (points)' if metric.unit == '%' else metric.unit_suffix
  name = lambda values: ', '.join(compare.label(k, v) if k == 'norm' else f'{k.split(".")[-1]}'
                                  f' {v}' for k, v in zip(keys, values))
  lines = [f'| A | B | A - B: {metric.key} at best {select_by}{unit} | 95% CI | p | seeds |',
           '|---|---|---|---|---|---|']
  for r in rows:
    interval = (f'[{r["low"] * scale:+.3g}, {r["high"] * scale:+.3g}]'
                if math.isfinite(r['low']) else '-')
    p = f'{r["p_value"]:.3g}' if math.isfinite(r['p_value']) else '-'
    lines.append(f'| {name(r["a"])} | {name(r["b"])} | {r["mean"] * scale:+.3g} | {interval} '
                 f'| {p} | {r["how"]} |')
  return '\n'.join(lines) + '\n'


def csv_table(rows: list[dict]) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()
