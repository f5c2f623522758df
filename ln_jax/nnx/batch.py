"""Batch-statistics NNX normalizers with running averages: BatchNorm and BatchRenorm.

Their arithmetic is that of the Linen layers (`batch_norm.normalize_with_batch_statistics`,
`batch_renorm.renormalize`); the running averages are `nnx.BatchStat`s, updated in place
whenever a call normalizes with batch statistics. `use_running_average` comes from the call,
else from the module, which `model.train()` / `model.eval()` / `nnx.view` set.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import nnx
from jax import lax

from ln_jax.layers import batch_norm
from ln_jax.layers import batch_renorm
from ln_jax.layers import statistics
from ln_jax.nnx import common

_ones = nnx.initializers.ones
_zeros = nnx.initializers.zeros


class BatchNorm(nnx.Module):
  """BN over every axis but `axis` (the feature axis or axes, `num_features` entries in all),
  with running averages `mean` and `var` (nnx.BatchStat) for evaluation and flax.nnx's `scale`
  and `bias`. ln_jax's extras: `unbiased_variance` (normalize with n/(n-1) * var, which the
  running average then tracks), `ghost_batches` (split axis 0 into that many groups with
  statistics of their own; the running averages take their mean), and `mask` at call time
  (True for the entries the statistics count)."""

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               axis: int | Sequence[int] = -1, momentum: float = 0.99,
               epsilon: float = statistics.DEFAULT_EPSILON, dtype: Any = None,
               param_dtype: Any = jnp.float32, use_bias: bool = True, use_scale: bool = True,
               bias_init: Callable[..., Any] = _zeros, scale_init: Callable[..., Any] = _ones,
               axis_name: str | None = None, axis_index_groups: Any = None,
               use_fast_variance: bool = False, force_float32_reductions: bool = True,
               unbiased_variance: bool = False, ghost_batches: int = 1, rngs: nnx.Rngs):
    if ghost_batches < 1:
      raise ValueError(f'BatchNorm: ghost_batches={ghost_batches} must be at least 1')
    self.num_features, self.use_running_average = num_features, use_running_average
    self.axis, self.momentum, self.epsilon = axis, momentum, epsilon
    self.dtype, self.param_dtype = dtype, param_dtype
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.force_float32_reductions = force_float32_reductions
    self.unbiased_variance, self.ghost_batches = unbiased_variance, ghost_batches
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.scale = (common.feature_param(scale_init, rngs, num_features, param_dtype)
                  if use_scale else None)
    self.bias = (common.feature_param(bias_init, rngs, num_features, param_dtype)
                 if use_bias else None)

  def set_view(self, use_running_average: bool | None = None):
    """For `nnx.view`: sets `use_running_average` where given."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = common.resolve_running_average(
        'BatchNorm', use_running_average, self.use_running_average)
    feature_axes = common.axes(self.axis, x.ndim)
    common.check_features('BatchNorm', self.num_features, x, feature_axes)
    common.check_mask('BatchNorm', mask, x)
    reduction_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    dtype = statistics.reduction_dtype(x, self.dtype, self.force_float32_reductions)
    if use_running_average:
      mean, var = (jnp.asarray(common.broadcast(v, x, feature_axes), dtype)
                   for v in (self.mean, self.var))
      normalized = (jnp.asarray(x, dtype) - mean) * lax.rsqrt(var + self.epsilon)
    else:
      normalized, mean, var = batch_norm.normalize_with_batch_statistics(
          x, reduction_axes, mask=mask, dtype=dtype, epsilon=self.epsilon,
          ghost_batches=self.ghost_batches, use_fast_variance=self.use_fast_variance,
          unbiased_variance=self.unbiased_variance, axis_name=self.axis_name,
          axis_index_groups=self.axis_index_groups)
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1.0 - m) * jnp.reshape(mean, (-1,))
      self.var[...] = m * self.var[...] + (1.0 - m) * jnp.reshape(var, (-1,))
    y = statistics.scale_and_shift(normalized, common.broadcast(self.scale, x, feature_axes),
                                   common.broadcast(self.bias, x, feature_axes))
    return y.astype(statistics.output_dtype(x, self.dtype))


class BatchRenorm(nnx.Module):
  """Batch Renormalization (Ioffe, 2017) over every axis but the last, as ln_jax's Linen
  BatchRenorm: running `mean` and `std` (the standard deviation is averaged) and a `step`
  counter (nnx.BatchStat) that drives `schedule`'s clipping bounds r_max, d_max. `mask` at call
  time has the input's shape without its last axis (1 = real example)."""

  def __init__(self, num_features: int, *, use_running_average: bool | None = False,
               momentum: float = 0.99, epsilon: float = statistics.DEFAULT_EPSILON,
               schedule: batch_renorm.RenormSchedule = batch_renorm.RenormSchedule(),
               use_fast_variance: bool = False, use_scale: bool = True, use_bias: bool = True,
               scale_init: Callable[..., Any] = _ones, bias_init: Callable[..., Any] = _zeros,
               param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
    self.num_features, self.use_running_average = num_features, use_running_average
    self.momentum, self.epsilon, self.schedule = momentum, epsilon, schedule
    self.use_fast_variance = use_fast_variance
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.std = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
    self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))
    self.scale = (common.feature_param(scale_init, rngs, num_features, param_dtype)
                  if use_scale else None)
    self.bias = (common.feature_param(bias_init, rngs, num_features, param_dtype)
                 if use_bias else None)

  def set_view(self, use_running_average: bool | None = None):
    """For `nnx.view`: sets `use_running_average` where given."""
    if use_running_average is not None:
      self.use_running_average = use_running_average

  def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
    use_running_average = common.resolve_running_average(
        'BatchRenorm', use_running_average, self.use_running_average)
    common.check_features('BatchRenorm', self.num_features, x, (x.ndim - 1,))
    if mask is not None:
      common.check_mask('BatchRenorm', jnp.expand_dims(jnp.asarray(mask), -1), x)
    if use_running_average:
      y = (jnp.asarray(x, statistics.stats_dtype(x)) - self.mean[...]) / self.std[...]
    else:
      y, mean_B, sigma_B = batch_renorm.renormalize(
          x, self.mean[...], self.std[...], self.step[...], mask=mask, schedule=self.schedule,
          epsilon=self.epsilon, use_fast_variance=self.use_fast_variance)
      alpha = 1.0 - self.momentum
      mean_B, sigma_B = lax.stop_gradient(mean_B), lax.stop_gradient(sigma_B)
      self.mean[...] = self.mean[...] + alpha * (mean_B - self.mean[...])
      self.std[...] = self.std[...] + alpha * (sigma_B - self.std[...])
      self.step[...] = self.step[...] + 1
    y = statistics.scale_and_shift(jnp.reshape(y, x.shape),
                                   None if self.scale is None else self.scale[...],
                                   None if self.bias is None else self.bias[...])
    return y.astype(x.dtype)
