"""Learning curves and summary tables across run directories (a sweep, or runs made by hand).

Runs are grouped by config keys (`norm`, `batch_size`, ...); each group's seeds are aggregated into
a mean with a min-max (or std) band, and a table gives each group's final and best value of a
metric, mean +/- std over seeds, and the epochs it took to reach a threshold.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os

from absl import logging
import numpy as np

from ln_jax.training import rundir
from ln_jax.errors import UserError

METHOD_NAMES = {'none': 'Baseline', 'batch': 'BatchNorm', 'layer': 'LayerNorm'}  # the paper's
DEFAULT_GROUP_BY = ('norm', 'batch_size')
DEFAULT_METRIC = 'test_error'


@dataclasses.dataclass
class Run:
  path: str       # relative to the compared directory
  config: dict    # flattened: {'norm': 'layer', 'data.source': 'idx', ...}
  records: list   # metrics.jsonl, one per step (the latest line wins), in step order
  complete: bool


def read_run(path: str, root: str) -> Run:
  """Raises UserError for an unreadable config.json or a damaged metrics.jsonl line."""
  config = rundir.flatten(rundir.read_config(path)['config'])
  by_step = {r['step']: r for r in rundir.read_metrics(path)}  # a re-run repeats steps
  return Run(os.path.relpath(path, root), config, [by_step[s] for s in sorted(by_step)],
             rundir.is_complete(path))


def _sweep_order(root: str) -> list[str]:
  path = os.path.join(root, 'sweep.json')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [m['name'] for m in json.load(f)['members']]


def find_runs(root: str) -> list[Run]:
  """Every run directory under `root` (itself included), in the sweep's member order if it has
  one, else by path."""
  if not os.path.isdir(root):
    raise UserError(f'{root} is not a directory; pass a sweep directory or a folder of runs')
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d != 'checkpoints')
    if rundir.CONFIG_FILE in filenames:
      paths.append(dirpath)
  runs = []
  for path in paths:
    try:
      run = read_run(path, root)
    except UserError as e:
      logging.warning('skipping %s: %s', path, e)
      continue
    if run.records:
      runs.append(run)
    else:
      logging.warning('skipping %s: no metrics yet', path)
  if not runs:
    raise UserError(f'no run directories with metrics under {root}; run scripts/sweep.py or '
                    'scripts/train.py into it first')
  order = {name: i for i, name in enumerate(_sweep_order(root))}
  return sorted(runs, key=lambda r: (order.get(r.path, len(order)), r.path))


def sweep_defaults(root: str) -> tuple[str, tuple[str, ...]]:
  """The metric and grouping the sweep's experiment file asks for, else the defaults."""
  path = os.path.join(root, 'sweep.json')
  if os.path.exists(path):
    with open(path) as f:
      sweep = json.load(f)
    return sweep['metrics'][0], tuple(sweep['group_by'])
  return DEFAULT_METRIC, DEFAULT_GROUP_BY


def group_runs(runs: list[Run], keys: tuple[str, ...]) -> dict[tuple, list[Run]]:
  """Runs by their values of `keys`, groups in order of first appearance."""
  for key in keys:
    if not any(key in r.config for r in runs):
      raise UserError(f'no run has config key {key!r}; group by keys such as '
                      f'{", ".join(sorted(runs[0].config)[:8])}')
  groups = {}
  for run in runs:
    groups.setdefault(tuple(run.config.get(k) for k in keys), []).append(run)
  for values, members in groups.items():
    differ = sorted(k for k in members[0].config if k != 'seed' and
                    len({repr(r.config.get(k)) for r in members}) > 1)
    if differ:
      logging.warning('group %s mixes runs that differ in %s; add them to --group_by to split',
                      values, ', '.join(differ))
  return groups


def values(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, values) of `metric` where the run recorded a finite value."""
  pairs = [(r['epoch'], r[metric]) for r in run.records
           if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  epochs, vals = zip(*pairs)
  return np.asarray(epochs, float), np.asarray(vals, float)


def aggregate(runs: list[Run], metric: str) -> dict[str, np.ndarray]:
  """Mean, min, max and std over runs at every epoch any of them evaluated."""
  series = [values(r, metric) for r in runs]
  epochs = np.unique(np.round(np.concatenate([e for e, _ in series]), 6))
  table = np.full((len(series), len(epochs)), np.nan)
  for i, (e, v) in enumerate(series):
    table[i, np.searchsorted(epochs, np.round(e, 6))] = v
  # Every epoch column holds at least the value of the run that evaluated there.
  return {'epoch': epochs, 'mean': np.nanmean(table, 0), 'min': np.nanmin(table, 0),
          'max': np.nanmax(table, 0), 'std': np.nanstd(table, 0),
          'count': np.sum(~np.isnan(table), 0)}


def _mean_std(xs) -> tuple[float, float]:
  xs = np.asarray(xs, float)
  if not len(xs):
    return math.nan, math.nan
  return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def summarize(groups: dict[tuple, list[Run]], keys: tuple[str, ...], metric: str,
              threshold: float) -> list[dict]:
  """One row per group: final and best `metric` (mean, std over runs), epochs to reach
  `threshold` (mean over the runs that reached it) and the median training speed."""
  rows = []
  for group_values, runs in groups.items():
    finals, bests, reach, speeds = [], [], [], []
    for run in runs:
      epochs, vals = values(run, metric)
      if not len(vals):
        continue
      finals.append(vals[-1])
      bests.append(vals.min())
      hit = np.nonzero(vals <= threshold)[0]
      if len(hit):
        reach.append(epochs[hit[0]])
      # The first window of a run includes compilation: leave it out of the speed.
      speeds += [r['steps_per_s'] for r in run.records[1:] if r.get('steps_per_s')]
    row = dict(zip(keys, group_values))
    row['runs'] = len(runs)
    row['unfinished'] = sum(not r.complete for r in runs)
    row['final_mean'], row['final_std'] = _mean_std(finals)
    row['best_mean'], row['best_std'] = _mean_std(bests)
    row['epochs_to_threshold'] = float(np.mean(reach)) if reach else math.nan
    row['reached'] = len(reach)
    row['steps_per_s'] = float(np.median(speeds)) if speeds else math.nan
    rows.append(row)
  return rows


def label(key: str, value) -> str:
  if key == 'norm':
    return METHOD_NAMES.get(value, str(value))
  return f'{key}={value}'


def _fmt(x: float, percent: bool) -> str:
  if not math.isfinite(x):
    return '-'
  return f'{100 * x:.2f}' if percent else f'{x:.4g}'


def markdown_table(rows: list[dict], keys: tuple[str, ...], metric: str,
                   threshold: float) -> str:
  percent = metric.endswith('_error')
  unit = ' (%)' if percent else ''
  header = [*keys, 'runs', f'final {metric}{unit}', f'best {metric}{unit}',
            f'epochs to {_fmt(threshold, percent)}{"%" if percent else ""}', 'steps/s']
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for row in rows:
    runs = str(row['runs']) + (f' ({row["unfinished"]} unfinished)' if row['unfinished'] else '')
    cells = [label(k, row[k]) if k == 'norm' else str(row[k]) for k in keys]
    spread = lambda name: (f' ± {_fmt(row[name + "_std"], percent)}' if row['runs'] > 1 else '')
    cells += [runs,
              _fmt(row['final_mean'], percent) + spread('final'),
              _fmt(row['best_mean'], percent) + spread('best'),
              f'{_fmt(row["epochs_to_threshold"], False)} ({row["reached"]}/{row["runs"]})',
              _fmt(row['steps_per_s'], False)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def csv_table(rows: list[dict]) -> str:
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()
