"""Config helpers: the training keys every config shares (`base_config`), `get_config(arg)`
variants, and the checks that turn bad values into one line.

A variant string is a comma-separated list of `key=value` overrides and bare preset names, e.g.
`configs/pi_mnist.py:norm=batch,batch_size=4` or `configs/seq_mnist.py:pixels`. Values are parsed
to the type the field already has; an unknown key is an error.
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from ln_jax.errors import UserError

# Keys that were top-level (or under model.) before they moved into `norm_options`.
MOVED_KEYS = {
    'norm_epsilon': 'norm_options.epsilon',
    'norm_fast_variance': 'norm_options.fast_variance',
    'bn_momentum': 'norm_options.momentum',
    'bn_unbiased_variance': 'norm_options.unbiased_variance',
    'bn_eval_stats': 'norm_options.eval_stats',
    'bn_population_batches': 'norm_options.population_batches',
    'bn_ghost_batches': 'norm_options.ghost_batches',
    'bn_gamma_init': 'norm_options.gamma_init',
    'gn_groups': 'norm_options.groups',
    'renorm_r_max': 'norm_options.renorm_r_max',
    'renorm_d_max': 'norm_options.renorm_d_max',
    'renorm_start_step': 'norm_options.renorm_start_step',
    'renorm_r_max_step': 'norm_options.renorm_r_max_step',
    'renorm_d_max_step': 'norm_options.renorm_d_max_step',
    'model.bn_max_steps': 'norm_options.max_steps',
    'norm_logits': 'model.norm_logits',
}


def base_config(task: str) -> ml_collections.ConfigDict:
  """The keys the training loop reads, for a config of `task` (a built-in task's name or the path
  of a task file; see `ln_jax.tasks`). A config adds its task's `model` and `data` groups."""
  from ln_jax import norms  # imports the layers: keep `import configlib` light
  c = ml_collections.ConfigDict()
  c.task = task
  c.norm = 'layer'                     # 'layer' | 'batch' | 'rms' | 'weight' | 'none' | 'group' |
                                       # 'batch_renorm'; settings in norm_options
  c.norm_options = norms.default_options()
  c.optimizer = 'adam'                 # 'adam' | 'adamw' | 'sgd' | 'momentum' | 'rmsprop'
  c.learning_rate = 1e-3
  c.weight_decay = 0.0                 # adamw only
  c.grad_clip_norm = 0.0               # 0 disables global-norm clipping
  c.batch_size = 128
  c.num_epochs = 10.0
  c.seed = 0
  c.dtype = 'float32'                  # compute dtype; norm statistics stay float32
  c.fuse_weight_grad = True            # batch <= 8: weight gradients fused into the optimizer
                                       # (ln_jax/layers/dense.py); False: one matmul
  c.num_evals = 20                     # evaluations per run, evenly spaced in steps
  c.eval_every_epochs = ml_collections.config_dict.placeholder(float)  # set: overrides
                                       # num_evals; fractions allowed (0.1: 10x per epoch)
  c.eval_batch_size = 1000
  c.steps_per_call = 100               # optimizer steps fused into one compiled call
  c.num_devices = 0                    # data parallel over this many devices (0: all);
                                       # batch_size must be a multiple of it
  c.log_every_seconds = 10.0
  c.checkpoint_every_epochs = 1.0      # fractions allowed; also saved at the end
  c.checkpoint_keep = 2                # newest checkpoints kept
  c.on_nonfinite = 'stop'              # 'stop' the run, or 'skip' the update and count it
  return c


def unknown_key_message(key: str) -> str:
  """The one line for a config key that does not exist: where it moved, or that it is unknown."""
  new = MOVED_KEYS.get(key)
  if new is not None:
    return f"config key '{key}' moved to '{new}'; use --config.{new}=VALUE"
  return f'unknown config key {key!r}; see the config file for the valid names'


def parse_variant(arg: str | None) -> tuple[list[str], dict[str, str]]:
  """Splits 'quick,norm=batch' into (['quick'], {'norm': 'batch'})."""
  presets, overrides = [], {}
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    if '=' in item:
      key, value = item.split('=', 1)
      overrides[key.strip()] = value.strip()
    else:
      presets.append(item)
  return presets, overrides


def _parse_value(text: str, current: Any, key: str):
  if isinstance(current, bool):
    lowered = text.lower()
    if lowered in ('true', '1', 'yes'):
      return True
    if lowered in ('false', '0', 'no'):
      return False
    raise UserError(f'{key}={text!r} is not a boolean; use true or false')
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, (tuple, list)):
    # `hidden_sizes=500:500` spells a tuple without the comma the variant string splits on.
    if isinstance(value, str) and ':' in value:
      value = tuple(ast.literal_eval(v) for v in value.split(':'))
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
  elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise UserError(f'{key}={text!r} should be of type {type(current).__name__}; fix the value')
  return value


def override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Sets dotted `key` from its string form, parsed to the field's type."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise UserError(unknown_key_message(key))
    node = node[part]
  if leaf not in node:
    raise UserError(unknown_key_message(key))
  current = node[leaf]
  if current is None:  # placeholder: parse by the form of the text
    field_type = node.get_ref(leaf).get_type()
    value = _parse_value(text, field_type() if field_type in (int, float, bool) else text, key)
  else:
    value = _parse_value(text, current, key)
  node[leaf] = value


def apply_variant(config: ml_collections.ConfigDict, arg: str | None, presets: dict) -> None:
  """Applies named `presets` (name -> function(config)) and then `key=value` overrides."""
  names, overrides = parse_variant(arg)
  for name in names:
    if name not in presets:
      raise UserError(f'unknown config variant {name!r}; choose from {", ".join(presets)} or '
                      'use key=value')
    presets[name](config)
  for key, value in overrides.items():
    override(config, key, value)
