"""Reading run directories (a sweep, several sweeps, or runs made by hand) and grouping them.

Runs are grouped by config keys (`norm`, `batch_size`, ...). Inside a group, runs may differ only
in their seed and in the keys the experiment tuned (`learning_rate`): anything else would average
different experiments together, so `group_runs` refuses it unless asked to mix. Selection on the
validation set and the tuned value per group are in selection.py; intervals in stats.py; the
tables in tables.py; claims in claims.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os

from absl import logging
import numpy as np

from ln_jax.analysis import stats
from ln_jax.training import rundir
from ln_jax.errors import UserError

METHOD_NAMES = {'none': 'Baseline', 'batch': 'BatchNorm', 'layer': 'LayerNorm',  # the paper's
                'layer_c': 'LN on c'}  # its DRAW cell
DEFAULT_GROUP_BY = ('norm', 'batch_size')
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MNIST_TRAIN_IMAGES = 60000  # before the validation images are taken off
# Keys that describe where and how a run was made, not what it trained: never a reason to refuse.
NOT_EXPERIMENT_KEYS = ('data.dir', 'log_every_seconds', 'checkpoint_every_epochs',
                       'checkpoint_keep', 'steps_per_call', 'num_devices')


@dataclasses.dataclass
class Run:
  path: str       # relative to the compared directory (prefixed by it when several are compared)
  config: dict    # flattened: {'norm': 'layer', 'data.source': 'idx', ...}
  records: list   # metrics.jsonl, one per step (the latest line wins), in step order
  complete: bool
  task: dict | None = None  # config.json's task: metric names, units, direction, select_by


@dataclasses.dataclass(frozen=True)
class Defaults:
  """What the sweep's experiment file asks compare for (or the defaults without a sweep)."""
  metric: str | None = None      # None: the task's selection metric on the test split
  group_by: tuple = DEFAULT_GROUP_BY
  tuned: tuple = ()
  select_by: str | None = None   # None: the task's selection metric on the validation split
  claims: tuple = ()
  panel_by: str | None = None    # the experiment's PANEL_BY: the group key with one panel a value
  plot: dict = dataclasses.field(default_factory=dict)  # the experiment's PLOT (plots.py)


def read_run(path: str, root: str) -> Run:
  """Raises UserError for an unreadable config.json or a damaged metrics.jsonl line."""
  described = rundir.read_config(path)
  config = rundir.flatten(described['config'])
  by_step = {r['step']: r for r in rundir.read_metrics(path)}  # a re-run repeats steps
  return Run(os.path.relpath(path, root), config, [by_step[s] for s in sorted(by_step)],
             rundir.is_complete(path), described.get('task'))


def _sweep_file(root: str) -> dict | None:
  path = os.path.join(root, 'sweep.json')
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _runs_under(root: str) -> list[Run]:
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
    except (UserError, ValueError, KeyError, OSError) as e:  # a damaged file: skip that run
      logging.warning('skipping %s: %s', path, str(e).splitlines()[0] if str(e) else repr(e))
      continue
    if run.records:
      runs.append(run)
    else:
      logging.warning('skipping %s: no metrics yet', path)
  order = {m['name']: i for i, m in enumerate((_sweep_file(root) or {}).get('members', []))}
  return sorted(runs, key=lambda r: (order.get(r.path, len(order)), r.path))


def find_runs(roots) -> list[Run]:
  """Every run directory under each root (itself included), in the sweep's member order where
  it has one, else by path. With several roots, run paths start with their root."""
  roots = [roots] if isinstance(roots, str) else list(roots)
  runs = []
  for root in roots:
    found = _runs_under(root)
    if len(roots) > 1:
      for run in found:
        run.path = os.path.join(root, run.path)
    runs += found
  if not runs:
    raise UserError(f'no run directories with metrics under {", ".join(roots)}; run '
                    'scripts/sweep.py or scripts/train.py into it first')
  return runs


def _experiment_figure(spec: str | None) -> tuple[str | None, dict]:
  """(PANEL_BY, PLOT) of the experiment file a sweep was made from, read now, so that a figure's
  layout can change without training again; (None, {}) with a warning when the file is gone or
  fails (the comparison itself does not need it)."""
  path = (spec or '').partition(':')[0]
  found = [p for p in (path, os.path.join(REPO_ROOT, path)) if path and os.path.isfile(p)]
  if not found:
    if path:
      logging.warning('experiment file %s not found: default figure layout', path)
    return None, {}
  module_spec = importlib.util.spec_from_file_location('_ln_jax_compared_experiment', found[0])
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  # any error in that file's own code
    logging.warning('experiment file %s fails (%s): default figure layout', found[0], e)
    return None, {}
  return getattr(module, 'PANEL_BY', None), dict(getattr(module, 'PLOT', {}))


def sweep_defaults(roots) -> Defaults:
  """The metric, grouping, tuned keys, selection metric and claims of the first sweep among
  `roots` (compared folders are expected to hold the same experiment), with its experiment
  file's PANEL_BY and PLOT; else the defaults."""
  roots = [roots] if isinstance(roots, str) else list(roots)
  for root in roots:
    sweep = _sweep_file(root)
    if sweep is not None:
      panel_by, plot = _experiment_figure(sweep.get('experiment'))
      return Defaults(metric=(sweep.get('metrics') or [None])[0],
                      group_by=tuple(sweep['group_by']),
                      tuned=tuple(sweep.get('tuned', ())),
                      select_by=sweep.get('select_by'),
                      claims=tuple(sweep.get('claims', ())),
                      panel_by=panel_by, plot=plot)
  return Defaults()


def panel_key(group_by: tuple, requested: str | None, experiment: str | None) -> str | None:
  """The group key whose values get one panel each: `requested` (--panel_by), else the
  experiment's PANEL_BY when grouped on, else batch_size when grouped on; None: one panel for
  all groups."""
  if requested:
    if requested not in group_by:
      raise UserError(f'--panel_by={requested} is not a group key ({", ".join(group_by)}); '
                      'name one of them, or add it to --group_by')
    return requested
  for key in (experiment, 'batch_size'):
    if key in group_by:
      return key
  return None


def group_runs(runs: list[Run], keys: tuple[str, ...], tuned: tuple[str, ...] = (),
               allow_mixed: bool = False) -> dict[tuple, list[Run]]:
  """Runs by their values of `keys`, groups in order of first appearance.

  Raises UserError, naming the keys, when runs of one group differ in a key that is neither
  grouped, tuned nor the seed (a warning instead with `allow_mixed`).
  """
  for key in keys:
    if not any(key in r.config for r in runs):
      raise UserError(f'no run has config key {key!r}; group by keys such as '
                      f'{", ".join(sorted(runs[0].config)[:8])}')
  groups = {}
  for run in runs:
    groups.setdefault(tuple(run.config.get(k) for k in keys), []).append(run)
  allowed = {'seed', *keys, *tuned, *NOT_EXPERIMENT_KEYS}
  differ = set()
  for members in groups.values():
    names = set().union(*(r.config for r in members))
    differ |= {k for k in names if k not in allowed and
               len({repr(r.config.get(k)) for r in members}) > 1}
  if differ:
    text = ', '.join(sorted(differ))
    if not allow_mixed:
      raise UserError(f'runs in one group differ in {text}; add them to --group_by, or pass '
                      '--allow_mixed to average them together')
    logging.warning('groups mix runs that differ in %s (--allow_mixed)', text)
  return groups


def train_size(run: Run) -> int | None:
  """The number of MNIST training images a classification run drew from, from its config (None
  for other tasks, whose data compare does not know, and for runs with no data section)."""
  config = run.config
  if (run.task or {}).get('name', 'classification') != 'classification':
    return None
  if 'data.valid_size' not in config:
    return None
  total = (config.get('data.synthetic_train_size', 0) if config.get('data.source') == 'synthetic'
           else MNIST_TRAIN_IMAGES)
  available = total - (config.get('data.valid_size') or 0)
  cap = config.get('data.train_size')
  return min(cap, available) if cap else available


def values(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, values) of `metric` where the run recorded a finite value."""
  pairs = [(r['epoch'], r[metric]) for r in run.records
           if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  epochs, vals = zip(*pairs)
  return np.asarray(epochs, float), np.asarray(vals, float)


def aggregate(runs: list[Run], metric: str) -> dict[str, np.ndarray]:
  """Mean, min, max, std and the 95% t interval of the mean over runs at every epoch any of them
  evaluated (low = high = nan where fewer than two runs did)."""
  series = [values(r, metric) for r in runs]
  epochs = np.unique(np.round(np.concatenate([e for e, _ in series]), 6))
  table = np.full((len(series), len(epochs)), np.nan)
  for i, (e, v) in enumerate(series):
    table[i, np.searchsorted(epochs, np.round(e, 6))] = v
  intervals = [stats.t_interval(column[~np.isnan(column)]) for column in table.T]
  # Every epoch column holds at least the value of the run that evaluated there.
  return {'epoch': epochs, 'mean': np.nanmean(table, 0), 'min': np.nanmin(table, 0),
          'max': np.nanmax(table, 0), 'std': np.nanstd(table, 0),
          'low': np.array([i.low for i in intervals]),
          'high': np.array([i.high for i in intervals]),
          'count': np.sum(~np.isnan(table), 0)}


def label(key: str, value) -> str:
  if key == 'norm':
    return METHOD_NAMES.get(value, str(value))
  return f'{key.split(".")[-1]}={value}'
