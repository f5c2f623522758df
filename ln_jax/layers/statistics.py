"""Statistics shared by the normalization layers, and the conventions they follow.

Conventions (see also the README):
- Statistics are computed in float32 whatever the input dtype (float64 inputs keep float64); the
  output has the input's dtype. The variance is two-pass (mean of squared deviations) unless
  `use_fast_variance=True`, whose one-pass E[x^2] - E[x]^2 loses all precision for inputs with a
  large mean in float32.
- `epsilon` sits inside the square root: (x - mu) * rsqrt(var + eps). The paper has none; the
  default 1e-5 is the value of the paper's original code.
- BatchNorm's `momentum` follows Flax/Keras: running <- momentum * running + (1 - momentum) * batch
  (PyTorch's momentum=0.1 equals momentum=0.9 here). Running statistics start at mean 0, var 1.

"""

from __future__ import annotations

import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

DEFAULT_EPSILON = 1e-5


def axes_tuple(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  if isinstance(axes, int):
    axes = (axes,)
  return tuple(sorted(a % ndim for a in axes))


def stats_dtype(x):
  """float32, or the input's own dtype when it is wider (float64 under `jax.enable_x64`)."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def weighted_mean(x, axes, mask):
  """(mean function over `axes`, count); `mask` (1 = real entry) leaves padding out."""
  if mask is None:
    count = jnp.asarray(functools.reduce(lambda n, a: n * x.shape[a], axes, 1), jnp.float32)
    return (lambda v: jnp.mean(v, axes, keepdims=True)), count
  weights = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), x.shape)
  count = jnp.sum(weights, axes, keepdims=True)
  safe_count = jnp.maximum(count, 1.0)
  return (lambda v: jnp.sum(v * weights, axes, keepdims=True) / safe_count), count


def centered_moments(x, axes: tuple[int, ...], *, mask=None, use_fast_variance: bool = False):
  """Float32 (or wider) statistics of `x` over `axes` as (centered, mean, var, count), keeping dims.

  `centered` is x - mean computed without rounding the mean to x's magnitude first: the
  default two-pass variance works on x shifted by its first entry along `axes`, which is exact
  for nearby float32 values, so a mean of 1e4 with a spread of 1e-2 keeps its precision.
  `use_fast_variance` is the one-pass E[x^2] - E[x]^2 on raw data, which loses it.
  `mask` (broadcastable to `x`, 1 for real entries) leaves padded entries out of the statistics.
  """
  x = jnp.asarray(x, stats_dtype(x))
  mean_fn, count = weighted_mean(x, axes, mask)
  if use_fast_variance:
    mean = mean_fn(x)
    var = jnp.maximum(mean_fn(jnp.square(x)) - jnp.square(mean), 0.0)
    return x - mean, mean, var, count
  shift = x
  for axis in axes:
    shift = lax.slice_in_dim(shift, 0, 1, axis=axis)
  shifted = x - lax.stop_gradient(shift)
  shifted_mean = mean_fn(shifted)
  centered = shifted - shifted_mean
  return centered, shift + shifted_mean, mean_fn(jnp.square(centered)), count


def moments(x, axes: tuple[int, ...], *, mask=None, use_fast_variance: bool = False):
  """Float32 (mean, biased variance, count) of `x` over `axes`, keeping dims."""
  _, mean, var, count = centered_moments(x, axes, mask=mask,
                                         use_fast_variance=use_fast_variance)
  return mean, var, count


def affine(module: nn.Module, y, param_shape, use_scale, use_bias, scale_init, bias_init,
            param_dtype):
  if use_scale:
    y = y * jnp.asarray(module.param('scale', scale_init, param_shape, param_dtype), y.dtype)
  if use_bias:
    y = y + jnp.asarray(module.param('bias', bias_init, param_shape, param_dtype), y.dtype)
  return y


def param_shape(shape, axes):
  """One gain/bias entry per normalized unit, broadcastable against the input."""
  return tuple(shape[a] if a in axes else 1 for a in range(len(shape)))[min(axes):]
