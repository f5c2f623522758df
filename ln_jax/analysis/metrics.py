"""What compare knows of a metric key such as 'test_error': its task's unit, display scale,
direction and axis, read from the runs' config.json (`tasks.Task.describe`)."""

from __future__ import annotations

import dataclasses
import math

from ln_jax.errors import UserError

SPLITS = ('train', 'valid', 'test')
# Runs written before config.json recorded the task were MNIST classification runs.
CLASSIFICATION = {
    'name': 'classification', 'select_by': 'error',
    'metrics': [{'name': 'loss', 'unit': 'nats', 'lower_is_better': True, 'scale': 1.0,
                 'log_scale': True},
                {'name': 'error', 'unit': '%', 'lower_is_better': True, 'scale': 100.0,
                 'log_scale': False}],
}
TITLES = {'train_loss': 'training NLL', 'test_loss': 'test NLL', 'valid_loss': 'validation NLL'}


@dataclasses.dataclass(frozen=True)
class MetricInfo:
  key: str                  # 'test_error'
  split: str                # 'test'
  name: str                 # 'error'
  unit: str = ''
  scale: float = 1.0
  lower_is_better: bool = True
  log_scale: bool = False
  task: str = ''

  @property
  def title(self) -> str:
    """An axis or column title: 'test error (%)'."""
    if self.task == 'classification' and self.key in TITLES:
      return TITLES[self.key]
    split = {'valid': 'validation', 'train': 'training'}.get(self.split, self.split)
    return f'{split} {self.name.replace("_", " ")}' + (f' ({self.unit})' if self.unit else '')

  @property
  def unit_suffix(self) -> str:
    return f' ({self.unit})' if self.unit else ''

  def show(self, x) -> str:
    """A value in display units ('2.31' for an error of 0.0231 in %), '-' when missing."""
    if not isinstance(x, (int, float)) or not math.isfinite(x):
      return '-'
    return f'{self.scale * x:.2f}' if self.scale != 1.0 else f'{x:.4g}'

  def better(self, a: float, b: float) -> bool:
    return a < b if self.lower_is_better else a > b


def task_description(run) -> dict:
  return getattr(run, 'task', None) or CLASSIFICATION


def info(runs, key: str, what: str = 'metric') -> MetricInfo:
  """The MetricInfo of `key` ('<split>_<metric>') for the task of `runs`; raises UserError,
  naming what the task reports, for a metric it does not."""
  task = task_description(runs[0])
  split, _, name = key.partition('_')
  described = {m['name']: m for m in task['metrics']}
  if split not in SPLITS or name not in described:
    choices = ', '.join(f'{s}_{m}' for s in SPLITS for m in described)
    raise UserError(f'{what} {key!r} is not a metric of task {task["name"]!r}; choose one of '
                    f'{choices}')
  m = described[name]
  return MetricInfo(key, split, name, m.get('unit', ''), float(m.get('scale', 1.0)),
                    bool(m.get('lower_is_better', True)), bool(m.get('log_scale', False)),
                    task['name'])


def lower_is_better(run, key: str) -> bool:
  """The direction of `key` for `run`'s task (lower for keys its task does not describe)."""
  _, _, name = key.partition('_')
  for m in task_description(run)['metrics']:
    if m['name'] == name:
      return bool(m.get('lower_is_better', True))
  return True


def default_keys(runs) -> tuple[str, str]:
  """(the metric, the selection metric) compare uses when nothing names them: the task's
  selection metric on the test and the validation split."""
  select = task_description(runs[0])['select_by']
  return f'test_{select}', f'valid_{select}'
