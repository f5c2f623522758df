"""What the NNX normalizers share: argument checks and their per-feature parameters."""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from ln_jax.layers import statistics


def check_features(name: str, num_features: int, x, feature_axes: tuple[int, ...]):
  """Raises a ValueError naming the layer unless x has `num_features` along `feature_axes`."""
  found = math.prod(x.shape[a] for a in feature_axes)
  if found != num_features:
    raise ValueError(f'{name}: num_features={num_features}, but the input of shape {x.shape} '
                     f'has {found} features along axes {feature_axes}')


def check_mask(name: str, mask, x):
  """Raises a ValueError unless `mask` broadcasts against x without changing its shape."""
  if mask is None:
    return
  try:
    shape = jnp.broadcast_shapes(jnp.shape(mask), x.shape)
  except ValueError:
    shape = None
  if shape != x.shape:
    raise ValueError(f'{name}: mask of shape {jnp.shape(mask)} does not broadcast to the input '
                     f'shape {x.shape}')


def resolve_running_average(name: str, from_call, from_module) -> bool:
  """The call's `use_running_average`, else the module's (as flax.nnx: the call wins)."""
  value = from_module if from_call is None else from_call
  if value is None:
    raise ValueError(
        f'{name}: no `use_running_average` given. Pass it to the constructor, to the call, or '
        'set it with model.train() / model.eval() (or nnx.view).')
  return bool(value)


def feature_param(init, rngs: nnx.Rngs, num_features: int, param_dtype):
  """An nnx.Param of `num_features` entries drawn from `init` with a fresh params key."""
  return nnx.Param(init(rngs.params(), (num_features,), param_dtype))


def broadcast(param, x, feature_axes: tuple[int, ...]):
  """The stored parameter's value reshaped to broadcast against x (None stays None)."""
  if param is None:
    return None
  return jnp.reshape(param[...], [x.shape[a] if a in feature_axes else 1 for a in range(x.ndim)])


def axes(value, ndim):
  return statistics.axes_tuple(value, ndim)
