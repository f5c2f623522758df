"""Config helpers: `get_config(arg)` variants and the checks that turn bad values into one line.

A variant string is a comma-separated list of `key=value` overrides and bare preset names, e.g.
`configs/pi_mnist.py:norm=batch,batch_size=4` or `configs/seq_mnist.py:pixels`. Values are parsed
to the type the field already has; an unknown key is an error.
"""

from __future__ import annotations

import ast
from typing import Any

import ml_collections

from ln_jax.errors import UserError


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
      raise UserError(f'unknown config key {key!r}; see the config file for the valid names')
    node = node[part]
  if leaf not in node:
    raise UserError(f'unknown config key {key!r}; see the config file for the valid names')
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


def require(condition: bool, message: str) -> None:
  if not condition:
    raise UserError(message)
