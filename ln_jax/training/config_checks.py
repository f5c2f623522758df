"""The checks that turn an impossible config value into one line naming the key and the fix."""

from __future__ import annotations

from ln_jax import data as data_lib
from ln_jax import models
from ln_jax import layers
from ln_jax.training import optimizers
from ln_jax.models import recurrent
from ln_jax.errors import UserError

ON_NONFINITE = ('stop', 'skip')
# Keys train_and_evaluate reads beyond the model's and the data's: every config file needs them.
REQUIRED_KEYS = ('norm', 'optimizer', 'learning_rate', 'batch_size', 'num_epochs', 'seed',
                 'eval_every_epochs', 'eval_batch_size', 'steps_per_call', 'log_every_seconds',
                 'checkpoint_every_epochs', 'checkpoint_keep', 'on_nonfinite')


def check_config(config, num_train: int | None = None) -> None:
  """Rejects impossible values with one line that names the key and the fix."""
  missing = [key for key in REQUIRED_KEYS if key not in config]
  if missing:
    raise UserError(f'the config lacks {", ".join(missing)}; add them to the config file (see '
                    'configs/pi_mnist.py)')
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
      (config.bn_eval_stats in ('running', 'batch'),
       f"bn_eval_stats={config.bn_eval_stats!r} must be 'running' or 'batch'"),
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
  ]
  sizes = config.model.get('hidden_sizes', ())
  checks.append((all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in sizes),
                 f'model.hidden_sizes={tuple(sizes)} must be positive integers, e.g. '
                 '--config.model.hidden_sizes=500,500'))
  if config.model.name == 'mlp':
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
  if num_train is not None:
    checks.append((config.batch_size <= num_train,
                   f'batch_size={config.batch_size} is larger than the {num_train} training '
                   'examples; lower it'))
  for ok, message in checks:
    if not ok:
      raise UserError(message)
