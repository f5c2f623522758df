"""What a run trains and how it is scored: the `Task` every training run is built from.

A task is data, a model, a per-example loss and the metrics it reports:

  Task(name='regression',
       load_splits=lambda config: {'train': {'x': ..., 'y': ...}, 'valid': ..., 'test': ...},
       create_model=lambda config: MyModel(...),
       loss=lambda outputs, batch: {'loss': sq_err_B, 'abs_error': abs_err_B},
       metrics=(Metric('loss', 'squared error'), Metric('abs_error', 'units')),
       select_by='abs_error')

`load_splits(config)` returns NumPy arrays per split, each with the examples on axis 0 (any dict
of arrays; 'train' is required, the other splits are evaluated). `create_model(config)` returns a
Flax Linen module called as `model.apply(variables, model_inputs(batch), train=...)`.
`loss(outputs, batch)` returns per-example values [B] for every metric in `metrics`, 'loss' (the
objective training minimizes, as a mean over the batch) among them. The run writes each metric
as `<split>_<name>` into metrics.jsonl and TensorBoard, and compare reads their units, direction
and scale from the task. `select_by` is the metric runs are selected on, on the validation split.

The data stays on the device and each batch is gathered there; a task whose data does not fit
sets `stream_from_host=True`, and the loop gathers each call's batches on the host instead (the
same examples in the same order, so the numbers do not change). A model that draws random
numbers (dropout, a latent sample) names its rng streams in `rngs`: each step gets keys folded
from the run's seed and the step. A task whose outputs are worth looking at (a generative model's
samples) gives `pictures`, called at each evaluation with the evaluated variables and a key fixed
for the run, so successive pictures show the same draws as training goes on.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Metric:
  """One per-example metric a task reports.

  `unit` labels tables and plots; `scale` multiplies the stored value for display (100 shows a
  fraction as %); `log_scale` draws its curves on a log axis.
  """
  name: str
  unit: str = ''
  lower_is_better: bool = True
  scale: float = 1.0
  log_scale: bool = False

  def describe(self) -> dict:
    return dataclasses.asdict(self)


def _batch_inputs(batch):
  return batch['inputs']


@dataclasses.dataclass(frozen=True, eq=False)
class Task:
  """See the module docstring. Compared and hashed by identity (it is a static jit argument)."""
  name: str
  load_splits: Callable[[Any], dict]
  create_model: Callable[[Any], Any]
  loss: Callable[[Any, dict], dict]
  metrics: tuple = (Metric('loss'),)
  select_by: str = 'loss'
  model_inputs: Callable[[dict], Any] = _batch_inputs
  rngs: tuple = ()
  stream_from_host: bool = False
  check_config: Callable[[Any], list] = lambda config: []
  # Widths the model normalizes, for group norm's divisibility check (config -> tuple of ints).
  normalized_widths: Callable[[Any], tuple] = lambda config: ()
  # Optional: (model, variables, config, key) -> {name: uint8 image [H, W] or [H, W, C]}, drawn
  # at each evaluation into <run>/pictures/<name>.png and TensorBoard's images.
  pictures: Callable[..., dict] | None = None

  def metric(self, name: str) -> Metric:
    for m in self.metrics:
      if m.name == name:
        return m
    raise KeyError(name)

  @property
  def metric_names(self) -> tuple:
    return tuple(m.name for m in self.metrics)

  def describe(self) -> dict:
    """What config.json records of the task: its name, metrics and selection metric."""
    return {'name': self.name, 'metrics': [m.describe() for m in self.metrics],
            'select_by': self.select_by}
