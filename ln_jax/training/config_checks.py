"""The checks that turn an impossible config value into one line naming the key and the fix."""

from __future__ import annotations

import math

from ln_jax import data as data_lib
from ln_jax import models
from ln_jax import layers
from ln_jax.training import optimizers
from ln_jax.training import population as population_lib
from ln_jax.models import recurrent
from ln_jax.errors import UserError

ON_NONFINITE = ('stop', 'skip')
BN_EVAL_STATS = ('running', 'batch', 'population')
# Keys train_and_evaluate reads beyond the model's and the data's: every config file needs them.
REQUIRED_KEYS = ('norm', 'optimizer', 'learning_rate', 'batch_size', 'num_epochs', 'seed',
                 'eval_every_epochs', 'eval_batch_size', 'steps_per_call', 'log_every_seconds',
                 'checkpoint_every_epochs', 'checkpoint_keep', 'on_nonfinite')


def _check_finite(config) -> None:
  """Every float in the config is a number: inf and NaN parse as floats but mean nothing here."""
  for key, value in _flat_items(config):
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f'{key}={value} must be a finite number; fix the value')


def _flat_items(config, prefix: str = ''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _flat_items(value, f'{prefix}{key}.')
    else:
      yield prefix + key, value


def check_config(config, num_train: int | None = None) -> None:
  """Rejects impossible values with one line that names the key and the fix."""
  missing = [key for key in REQUIRED_KEYS if key not in config]
  if missing:
    raise UserError(f'the config lacks {", ".join(missing)}; add them to the config file (see '
                    'configs/pi_mnist.py)')
  _check_finite(config)
  checks = [
      (config.norm in layers.NORMS, f'unknown norm {config.norm!r}; choose one of '
                                   f'{", ".join(layers.NORMS)}'),
      (config.optimizer in optimizers.OPTIMIZERS,
       f'unknown optimizer {config.optimizer!r}; choose one of '
       f'{", ".join(optimizers.OPTIMIZERS)}'),
      (config.model.name in models.MODELS, f'unknown model.name {config.model.name!r}; choose '
                                           f'one of {", ".join(models.MODELS)}'),
      (config.learning_rate > 0, f'learning_rate={config.learning_rate} must be positive'),
      (config.batch_size > 0, f'batch_size={config.batch_size} must be positive'),
      (config.num_epochs > 0, f'num_epochs={config.num_epochs} must be positive'),
      (config.get('eval_every_epochs') is None or config.eval_every_epochs > 0,
       f'eval_every_epochs={config.eval_every_epochs} must be positive (or unset: num_evals)'),
      (config.get('num_evals', 1) >= 1, f'num_evals={config.get("num_evals")} must be at least 1'),
      (config.eval_batch_size > 0, f'eval_batch_size={config.eval_batch_size} must be positive'),
      (config.steps_per_call > 0, f'steps_per_call={config.steps_per_call} must be positive'),
      (config.norm_epsilon >= 0, f'norm_epsilon={config.norm_epsilon} must be >= 0'),
      (0 <= config.bn_momentum < 1, f'bn_momentum={config.bn_momentum} must be in [0, 1)'),
      (config.bn_eval_stats in BN_EVAL_STATS,
       f"bn_eval_stats={config.bn_eval_stats!r} must be one of {', '.join(BN_EVAL_STATS)}"),
      (config.data.source in data_lib.SOURCES, f'unknown data.source {config.data.source!r}; '
                                               f'choose one of {", ".join(data_lib.SOURCES)}'),
      (config.dtype in ('float32', 'bfloat16', 'float16'),
       f"dtype={config.dtype!r} must be 'float32', 'bfloat16' or 'float16'"),
      (config.data.name in data_lib.DATASETS, f'unknown data.name {config.data.name!r}; choose '
                                              f'one of {", ".join(data_lib.DATASETS)}'),
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
      (0 <= config.data.permutation_seed < 2**32,
       f'data.permutation_seed={config.data.permutation_seed} must be in [0, 2**32)'),
      (config.model.num_classes == data_lib.NUM_CLASSES,
       f'model.num_classes={config.model.num_classes} must be {data_lib.NUM_CLASSES}, the '
       f'classes of {config.data.name}'),
      (config.data.source != 'synthetic' or (config.data.synthetic_train_size > 0
                                             and config.data.synthetic_test_size > 0),
       f'data.synthetic_train_size={config.data.synthetic_train_size} and '
       f'data.synthetic_test_size={config.data.synthetic_test_size} must be positive'),
      (config.data.valid_size >= 0, f'data.valid_size={config.data.valid_size} must be >= 0'),
      (config.get('bn_gamma_init', 1.0) > 0,
       f'bn_gamma_init={config.get("bn_gamma_init")} must be positive'),
  ]
  sizes = config.model.get('hidden_sizes', ())
  checks.append((all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in sizes),
                 f'model.hidden_sizes={tuple(sizes)} must be positive integers, e.g. '
                 '--config.model.hidden_sizes=500,500'))
  if config.model.name == 'mlp':
    checks.append((len(sizes) > 0, 'model.hidden_sizes=() is empty: the MLP would be one linear '
                   'layer with nothing to normalize; give at least one layer, e.g. '
                   '--config.model.hidden_sizes=1000,1000'))
    checks.append((config.model.activation in models.ACTIVATIONS,
                   f'unknown model.activation {config.model.activation!r}; choose one of '
                   f'{", ".join(models.ACTIVATIONS)}'))
  if config.model.name == 'recurrent':
    checks.extend(recurrent.config_checks(config))
  ghost_batches = config.get('bn_ghost_batches', 1)
  checks += [
      (config.get('num_devices', 0) >= 0,
       f'num_devices={config.get("num_devices")} must be >= 0 (0: all devices)'),
      (ghost_batches >= 1 and config.batch_size % ghost_batches == 0,
       f'bn_ghost_batches={ghost_batches} must be >= 1 and divide batch_size='
       f'{config.batch_size}'),
      (ghost_batches == 1 or config.model.name == 'mlp',
       f'bn_ghost_batches={ghost_batches} applies to the MLP\'s BatchNorm only; leave it at 1 '
       f'for model.name={config.model.name}'),
  ]
  checks += small_batch_checks(config)
  if num_train is not None:
    checks.append((config.batch_size <= num_train,
                   f'batch_size={config.batch_size} is larger than the {num_train} training '
                   'examples; lower it'))
    population = config.get('bn_population_batches', 1) * population_lib.batch_size(config)
    checks.append((not population_lib.applies(config) or population <= num_train,
                   f'bn_population_batches={config.get("bn_population_batches")} batches of '
                   f'{population_lib.batch_size(config)} need {population} of the {num_train} '
                   'training examples; lower bn_population_batches'))
  for ok, message in checks:
    if not ok:
      raise UserError(message)


def _normalized_widths(config) -> tuple[int, ...]:
  """The widths a group norm splits: the MLP's hidden layers (and logits), or the cells' H."""
  m = config.model
  if m.name == 'recurrent':
    return (m.hidden_size,)  # the cells normalize H, 2H or 4H units: H divisible suffices
  norm_logits = config.get('norm_logits')
  return tuple(m.get('hidden_sizes', ())) + ((m.num_classes,) if norm_logits else ())


def small_batch_checks(config) -> list[tuple[bool, str]]:
  """(condition, message) pairs for the group norm, batch renorm and population keys."""
  checks = []
  if config.norm == 'group':
    groups = config.gn_groups
    widths = _normalized_widths(config)
    checks.append((isinstance(groups, int) and groups >= 1
                   and all(w % groups == 0 for w in widths),
                   f'gn_groups={groups} must be a positive divisor of every normalized width '
                   f'{widths}; e.g. --config.gn_groups=1 (LayerNorm)'))
  if config.norm == 'batch_renorm':
    start = config.renorm_start_step
    checks += [
        (config.renorm_r_max >= 1, f'renorm_r_max={config.renorm_r_max} must be >= 1 '
                                   '(1: no scale correction)'),
        (config.renorm_d_max >= 0, f'renorm_d_max={config.renorm_d_max} must be >= 0 '
                                   '(0: no shift correction)'),
        (start >= 0, f'renorm_start_step={start} must be >= 0'),
        (config.renorm_r_max_step >= start and config.renorm_d_max_step >= start,
         f'renorm_r_max_step={config.renorm_r_max_step} and renorm_d_max_step='
         f'{config.renorm_d_max_step} must be >= renorm_start_step={start}'),
    ]
  if config.bn_eval_stats == 'population':
    batches = config.get('bn_population_batches', 0)
    checks.append((isinstance(batches, int) and batches >= 1,
                   f'bn_population_batches={batches} must be a positive number of batches'))
  return checks
