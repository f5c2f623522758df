"""Statistics shared by the normalization layers, and the conventions they follow.

Conventions (see also the README):
- Statistics are computed in float32 whatever the input dtype (float64 inputs keep float64); the
  output has the input's dtype unless the layer's `dtype` names another. The variance is two-pass
  (mean of squared deviations) unless `use_fast_variance=True`, whose one-pass E[x^2] - E[x]^2
  loses all precision for inputs with a large mean in float32.
- `epsilon` sits inside the square root: (x - mu) * rsqrt(var + eps). The paper has none; the
  default 1e-5 is the value of the paper's original code.
- BatchNorm's `momentum` follows Flax/Keras: running <- momentum * running + (1 - momentum) * batch
  (PyTorch's momentum=0.1 equals momentum=0.9 here). Running statistics start at mean 0, var 1.
- A `mask` (broadcastable to the input, True/1 for real entries) leaves the other entries out of
  the statistics entirely: whatever they hold, NaN and inf included, cannot reach the statistics.
  Masked-out entries are normalized with the real entries' statistics (as in flax), except
  non-finite ones, whose output is the bias, so that gradients stay finite.
- With `axis_name` (inside `shard_map`/`pmap`) the statistics are those of the entries of all the
  devices of that axis (or of each of `axis_index_groups`), weighted by their counts.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

DEFAULT_EPSILON = 1e-5


def axes_tuple(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  if isinstance(axes, int):
    axes = (axes,)
  return tuple(sorted({a % ndim for a in axes}))


def stats_dtype(x, dtype=None):
  """float32, or wider when the input (or the requested `dtype`) is (float64 under x64)."""
  wide = jnp.promote_types(jnp.result_type(x), jnp.float32)
  return wide if dtype is None else jnp.promote_types(wide, dtype)


def reduction_dtype(x, dtype=None, force_float32_reductions: bool = True):
  """The dtype a layer computes its statistics in: `stats_dtype`, or with
  `force_float32_reductions=False` (flax's switch) the computation dtype itself."""
  if force_float32_reductions:
    return stats_dtype(x, dtype)
  return jnp.result_type(x) if dtype is None else jnp.dtype(dtype)


def _cross_device_sum(v, axis_name, axis_index_groups):
  if axis_name is None:
    return v
  return lax.psum(v, axis_name, axis_index_groups=axis_index_groups)


def _first_real_entry(x, axes, real):
  """(x at the first True of `real` along `axes`, whether there is one), keeping dims; 0 where
  none is real, so padding (NaN included) never becomes the shift."""
  kept = [a for a in range(x.ndim) if a not in axes]
  flat_shape = [x.shape[a] for a in kept] + [-1]
  order = kept + list(axes)
  x_flat = jnp.reshape(jnp.transpose(x, order), flat_shape)
  real_flat = jnp.reshape(jnp.transpose(real, order), flat_shape)
  first = jnp.argmax(real_flat, -1)[..., None]
  has_real = jnp.take_along_axis(real_flat, first, -1)
  shift = jnp.where(has_real, jnp.take_along_axis(x_flat, first, -1), 0.0)
  keep_dims = [1 if a in axes else x.shape[a] for a in range(x.ndim)]
  return jnp.reshape(shift, keep_dims), jnp.reshape(has_real, keep_dims)


def centered_moments(x, axes: tuple[int, ...], *, mask=None, use_fast_variance: bool = False,
                     axis_name: str | None = None, axis_index_groups: Any = None,
                     dtype=None):
  """Float32 (or wider) statistics of `x` over `axes` as (centered, mean, var, count), keeping dims.

  `centered` is x - mean computed without rounding the mean to x's magnitude first: the
  default two-pass variance works on x shifted by a real entry along `axes` (the first one
  `mask` leaves in), which is exact for nearby float32 values, so a mean of 1e4 with a spread of
  1e-2 keeps its precision. Across devices (`axis_name`) the devices agree on one shift (the
  mean of their own), sum their shifted entries for the global mean, then sum the squared
  deviations from that mean: two passes, as on one device. `use_fast_variance` is the one-pass
  E[x^2] - E[x]^2 on raw data (one cross-device sum), which loses that precision.
  `mask` (broadcastable to `x`, True for real entries) leaves the other entries out.
  `dtype` is the dtype of the statistics (default: `stats_dtype(x)`).
  """
  x = jnp.asarray(x, stats_dtype(x) if dtype is None else dtype)
  total = functools.partial(_cross_device_sum, axis_name=axis_name,
                            axis_index_groups=axis_index_groups)
  if mask is None:
    real = None
    local_count = float(functools.reduce(lambda n, a: n * x.shape[a], axes, 1))
    count = total(jnp.full([1] * x.ndim, local_count, x.dtype))
    keep = lambda v: v
  else:
    real = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
    count = total(jnp.sum(real, axes, keepdims=True, dtype=x.dtype))
    keep = lambda v: jnp.where(real, v, 0.0)  # before any arithmetic that could spread NaN
  safe_count = jnp.maximum(count, 1.0)
  mean_of = lambda v: total(jnp.sum(keep(v), axes, keepdims=True)) / safe_count

  if use_fast_variance:
    if axis_name is None:
      mean, mean_square = mean_of(x), mean_of(jnp.square(keep(x)))
    else:  # one collective for both moments
      sums = jnp.stack([jnp.sum(keep(x), axes, keepdims=True),
                        jnp.sum(jnp.square(keep(x)), axes, keepdims=True)])
      mean, mean_square = total(sums) / safe_count
    var = jnp.maximum(mean_square - jnp.square(mean), 0.0)
    return _finite_padding(x - mean, real), mean, var, count

  if real is None:
    shift = x
    for axis in axes:
      shift = lax.slice_in_dim(shift, 0, 1, axis=axis)
    has_real = jnp.ones_like(shift, bool)
  else:
    shift, has_real = _first_real_entry(x, axes, real)
  if axis_name is not None:
    # Any float32 value near the data is an exact shift; devices without a real entry abstain.
    shift = total(jnp.where(has_real, shift, 0.0)) / jnp.maximum(total(has_real * 1.0), 1.0)
  shift = lax.stop_gradient(shift)
  shifted = x - shift
  shifted_mean = mean_of(shifted)
  centered = _finite_padding(shifted - shifted_mean, real)
  return centered, shift + shifted_mean, mean_of(jnp.square(keep(centered))), count


def _finite_padding(v, real):
  """v with non-finite masked-out entries set to 0: their outputs become the bias, and a loss
  that ignores them gets finite gradients (0 * NaN would reach every real entry)."""
  return v if real is None else jnp.where(real | jnp.isfinite(v), v, 0.0)


def moments(x, axes: tuple[int, ...], *, mask=None, use_fast_variance: bool = False, **kwargs):
  """Float32 (mean, biased variance, count) of `x` over `axes`, keeping dims."""
  _, mean, var, count = centered_moments(x, axes, mask=mask,
                                         use_fast_variance=use_fast_variance, **kwargs)
  return mean, var, count


def mean_square(x, axes: tuple[int, ...], *, mask=None, axis_name: str | None = None,
                axis_index_groups: Any = None, dtype=None):
  """(x in the statistics' dtype, its mean of x^2 over `axes`), keeping dims: RMSNorm's
  statistic, float32 or wider unless `dtype` says otherwise."""
  x = jnp.asarray(x, stats_dtype(x) if dtype is None else dtype)
  total = functools.partial(_cross_device_sum, axis_name=axis_name,
                            axis_index_groups=axis_index_groups)
  if mask is None:
    squares = jnp.square(x)
    count = float(functools.reduce(lambda n, a: n * x.shape[a], axes, 1))
    count = total(jnp.full([1] * x.ndim, count, x.dtype))
  else:
    real = jnp.broadcast_to(jnp.asarray(mask, bool), x.shape)
    squares = jnp.square(jnp.where(real, x, 0.0))
    count = total(jnp.sum(real, axes, keepdims=True, dtype=x.dtype))
    x = _finite_padding(x, real)
  return x, total(jnp.sum(squares, axes, keepdims=True)) / jnp.maximum(count, 1.0)


def feature_params(module: nn.Module, shape, feature_axes: tuple[int, ...], *, use_scale: bool,
                   use_bias: bool, scale_init, bias_init, param_dtype):
  """(scale, bias), each None when unused: flax.linen's parameters, one entry per feature along
  `feature_axes` (stored with that shape, so checkpoints are interchangeable), returned reshaped
  to broadcast against an input of `shape`."""
  stored = tuple(shape[a] for a in feature_axes)
  broadcast = [shape[a] if a in feature_axes else 1 for a in range(len(shape))]
  scale = bias = None
  if use_scale:
    scale = jnp.reshape(module.param('scale', scale_init, stored, param_dtype), broadcast)
  if use_bias:
    bias = jnp.reshape(module.param('bias', bias_init, stored, param_dtype), broadcast)
  return scale, bias


def scale_and_shift(normalized, scale, bias):
  """g * normalized + b in the statistics' dtype (either may be None)."""
  if scale is not None:
    normalized = normalized * jnp.asarray(scale, normalized.dtype)
  if bias is not None:
    normalized = normalized + jnp.asarray(bias, normalized.dtype)
  return normalized


def output_dtype(x, dtype):
  """The layers' result dtype: `dtype` when given, else the input's (flax infers it from the
  input and the parameters, which makes a bfloat16 input give a float32 output)."""
  return jnp.result_type(x) if dtype is None else dtype


def param_shape(shape, axes):
  """One gain/bias entry per normalized unit, broadcastable against the input (the layers
  themselves store flax's shapes, see `feature_params`)."""
  return tuple(shape[a] if a in axes else 1 for a in range(len(shape)))[min(axes):]


def affine(module: nn.Module, y, param_shape, use_scale, use_bias, scale_init, bias_init,
           param_dtype):
  """y * scale + bias with parameters of `param_shape` created in `module`."""
  scale = module.param('scale', scale_init, param_shape, param_dtype) if use_scale else None
  bias = module.param('bias', bias_init, param_shape, param_dtype) if use_bias else None
  return scale_and_shift(y, scale, bias)
