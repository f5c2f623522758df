"""The checks that turn an impossible config value into one line naming the key and the fix.

The loop's own keys are checked here, the normalizer's in `ln_jax.norms`, and the task's (its
model and data) by the task's `check_config`.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from ln_jax import norms
from ln_jax.errors import UserError
from ln_jax.training import optimizers
from ln_jax.training import population as population_lib

ON_NONFINITE = ('stop', 'skip')
DTYPES = ('float32', 'bfloat16', 'float16')


def _flat_items(config, prefix: str = ''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _flat_items(value, f'{prefix}{key}.')
    else:
      yield prefix + key, value


def _check_finite(config) -> None:
  """Every float in the config is a number: inf and NaN parse as floats but mean nothing here."""
  for key, value in _flat_items(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f'{key}={value} must be a finite number; fix the value')


def _loop_checks(config) -> list[tuple[bool, str]]:
  return [
      (config.optimizer in optimizers.OPTIMIZERS,
       f'unknown optimizer {config.optimizer!r}; choose one of '
       f'{", ".join(optimizers.OPTIMIZERS)}'),
      (config.learning_rate > 0, f'learning_rate={config.learning_rate} must be positive'),
      (config.batch_size > 0, f'batch_size={config.batch_size} must be positive'),
      (config.num_epochs > 0, f'num_epochs={config.num_epochs} must be positive'),
      (config.eval_every_epochs is None or config.eval_every_epochs > 0,
       f'eval_every_epochs={config.eval_every_epochs} must be positive (or unset: num_evals)'),
      (config.num_evals >= 1, f'num_evals={config.num_evals} must be at least 1'),
      (config.eval_batch_size > 0, f'eval_batch_size={config.eval_batch_size} must be positive'),
      (config.steps_per_call > 0, f'steps_per_call={config.steps_per_call} must be positive'),
      (config.dtype in DTYPES, f'dtype={config.dtype!r} must be one of {", ".join(DTYPES)}'),
      (config.on_nonfinite in ON_NONFINITE, f'on_nonfinite={config.on_nonfinite!r} must be one of '
                                            f'{", ".join(ON_NONFINITE)}'),
      (config.checkpoint_every_epochs > 0,
       f'checkpoint_every_epochs={config.checkpoint_every_epochs} must be positive'),
      (config.checkpoint_keep >= 1, f'checkpoint_keep={config.checkpoint_keep} must be at least 1'),
      (config.log_every_seconds >= 0,
       f'log_every_seconds={config.log_every_seconds} must be >= 0'),
      (config.weight_decay >= 0, f'weight_decay={config.weight_decay} must be >= 0'),
      (config.grad_clip_norm >= 0,
       f'grad_clip_norm={config.grad_clip_norm} must be >= 0 (0: no clipping)'),
      (0 <= config.seed < 2**32, f'seed={config.seed} must be in [0, 2**32)'),
      (config.num_devices >= 0, f'num_devices={config.num_devices} must be >= 0 (0: all devices)'),
      (config.batch_size % config.norm_options.ghost_batches == 0,
       f'norm_options.ghost_batches={config.norm_options.ghost_batches} must divide '
       f'batch_size={config.batch_size}'),
  ]


def _missing_keys(config) -> list[str]:
  from ln_jax import configlib
  required = configlib.base_config(config.get('task', '')).keys()
  return [key for key in required if key not in config]


def check_config(config, task, num_train: int | None = None) -> None:
  """Rejects impossible values with one line that names the key and the fix."""
  missing = _missing_keys(config)
  if missing:
    raise UserError(f'the config lacks {", ".join(missing)}; build it on '
                    'ln_jax.configlib.base_config(task) (see configs/pi_mnist.py)')
  _check_finite(config)
  checks = (norms.checks(config, task.normalized_widths(config)) + _loop_checks(config)
            + list(task.check_config(config)))
  if num_train is not None:
    checks.append((config.batch_size <= num_train,
                   f'batch_size={config.batch_size} is larger than the {num_train} training '
                   'examples; lower it'))
    pop = config.norm_options.population_batches * population_lib.batch_size(config)
    checks.append((not population_lib.applies(config) or pop <= num_train,
                   f'norm_options.population_batches={config.norm_options.population_batches} '
                   f'batches of {population_lib.batch_size(config)} need {pop} of the '
                   f'{num_train} training examples; lower norm_options.population_batches'))
  for ok, message in checks:
    if not ok:
      raise UserError(message)


def num_examples(split, name: str, task) -> int:
  """The examples in one split (a dict of arrays with the examples on axis 0), checking that
  every array has the same number."""
  sizes = {np.shape(a)[0] if np.ndim(a) else None for a in jax.tree.leaves(split)}
  if len(sizes) != 1 or None in sizes:
    raise UserError(f'task {task.name!r}: the arrays of split {name!r} disagree on the number '
                    f'of examples (axis 0: {sorted(map(str, sizes))}); fix load_splits')
  return sizes.pop()


def check_task_outputs(task, config, train_split) -> None:
  """Traces the model and the task's loss on a training batch (no computation) and raises
  UserError unless every metric the task names comes back as one value per example."""
  model = task.create_model(config)
  size = config.batch_size
  batch = jax.tree.map(lambda a: np.asarray(a[:size]), train_split)
  rngs = {'params': jax.random.PRNGKey(0), **{n: jax.random.PRNGKey(0) for n in task.rngs}}

  def trace(batch):
    variables = model.init(rngs, task.model_inputs(batch), train=False)
    outputs, _ = model.apply(variables, task.model_inputs(batch), train=True,
                             mutable=['batch_stats'], rngs=rngs)
    return task.loss(outputs, batch)

  try:
    metrics = jax.eval_shape(trace, batch)
  except UserError:
    raise
  except Exception as e:  # the user's model or loss: one line naming it
    raise UserError(f'task {task.name!r}: the model or loss fails on a batch of the training '
                    f'data ({type(e).__name__}: {str(e).splitlines()[0][:300]}); fix the task '
                    'or config') from None
  if not isinstance(metrics, dict):
    raise UserError(f'task {task.name!r}: loss() returned {type(metrics).__name__}; return a '
                    'dict {metric name: per-example values [B]}')
  for name in task.metric_names:
    if name not in metrics:
      raise UserError(f'task {task.name!r}: loss() does not return the metric {name!r} it '
                      f'declares (it returns {", ".join(metrics) or "nothing"}); return it or '
                      'drop it from metrics')
    if tuple(metrics[name].shape) != (size,):
      raise UserError(f'task {task.name!r}: loss() returned {name!r} with shape '
                      f'{tuple(metrics[name].shape)} for a batch of {size}; return one value '
                      'per example, shape [B] (no mean over the batch)')
