"""BatchNorm with running averages, the unbiased small-batch variance, ghost batches and masks."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics


class BatchNorm(nn.Module):
  """BN over every axis but the feature axis (or axes), with running averages for evaluation.

  The arguments are flax.linen.BatchNorm's, with the same meaning and the same variables
  (`params` scale/bias and `batch_stats` mean/var, one entry per feature along `axis`), so a
  flax checkpoint loads unchanged:
  - `use_running_average`: normalize with the running averages (evaluation) instead of the
    batch statistics; when False the running averages are updated, if `batch_stats` is mutable
    (flax requires it to be; here an immutable `batch_stats` evaluates with batch statistics).
  - `axis`: the feature axis or axes; the statistics reduce over all the others.
  - `dtype`: the result dtype (None: the input's; flax promotes it with the parameters' dtype);
    statistics and running averages are float32 or wider either way.
  - `mask`: True (or 1) for the entries the statistics count, any shape that broadcasts against
    `x`: `x.shape` itself, or e.g. `[batch, 1]` for x `[batch, features]` and
    `[batch, time, 1]` for x `[batch, time, features]` to leave out whole padded examples or
    steps. Masked-out entries, NaN or inf included, never reach the statistics; their own
    outputs are normalized with the statistics of the real entries (non-finite ones give the
    bias, where flax gives NaN, so gradients stay finite).
  - Under `jax.jit` with the batch sharded over a device mesh the reductions are global, so the
    statistics are those of the whole batch. Inside `shard_map`/`pmap`, set `axis_name` to
    combine the devices (optionally in `axis_index_groups`; leave it None for per-device,
    "ghost", statistics). As in flax, `init` skips that reduction, so it runs outside the
    mapped axis too.
  Where ours differ from flax's:
  - `use_fast_variance` defaults to False: the two-pass variance, across devices too (the
    global mean first, then the mean of squared deviations from it, both on data shifted by a
    real entry), so a float32 mean of 1e4 with a spread of 1e-2 keeps its precision;
  - `unbiased_variance`: normalize with the unbiased batch variance n/(n-1) * var, as the LN
    paper does at batch size 4; the running average then tracks that same estimate;
  - `ghost_batches=G` splits the batch (axis 0) into G consecutive groups with statistics of
    their own ("ghost" batches, never combined across devices); with G = the number of devices
    each device keeps its own statistics, and under jit no statistics cross devices. The running
    averages take the mean over the groups.
  """
  use_running_average: bool | None = None
  axis: int | Sequence[int] = -1
  momentum: float = 0.99
  epsilon: float = statistics.DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable[..., Any] = nn.initializers.zeros
  scale_init: Callable[..., Any] = nn.initializers.ones
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  unbiased_variance: bool = False
  ghost_batches: int = 1

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, mask=None):
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    feature_axes = statistics.axes_tuple(self.axis, x.ndim)
    reduction_axes = tuple(a for a in range(x.ndim) if a not in feature_axes)
    feature_shape = tuple(x.shape[a] for a in feature_axes)
    broadcast_shape = [x.shape[a] if a in feature_axes else 1 for a in range(x.ndim)]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, feature_shape, jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, feature_shape, jnp.float32)
    dtype = statistics.reduction_dtype(x, self.dtype, self.force_float32_reductions)

    if use_running_average:
      mean, var = (jnp.reshape(jnp.asarray(v.value, dtype), broadcast_shape)
                   for v in (running_mean, running_var))
      normalized = (jnp.asarray(x, dtype) - mean) * lax.rsqrt(var + self.epsilon)
    else:
      normalized, mean, var = self._normalize_with_batch_statistics(
          x, reduction_axes, mask, dtype)
      if not self.is_initializing() and self.is_mutable_collection('batch_stats'):
        m = self.momentum
        running_mean.value = m * running_mean.value + (1.0 - m) * jnp.reshape(mean, feature_shape)
        running_var.value = m * running_var.value + (1.0 - m) * jnp.reshape(var, feature_shape)

    scale, bias = statistics.feature_params(
        self, x.shape, feature_axes, use_scale=self.use_scale, use_bias=self.use_bias,
        scale_init=self.scale_init, bias_init=self.bias_init, param_dtype=self.param_dtype)
    y = statistics.scale_and_shift(normalized, scale, bias)
    return y.astype(statistics.output_dtype(x, self.dtype))

  def _normalize_with_batch_statistics(self, x, reduction_axes, mask, dtype):
    return normalize_with_batch_statistics(
        x, reduction_axes, mask=mask, dtype=dtype, epsilon=self.epsilon,
        ghost_batches=self.ghost_batches, use_fast_variance=self.use_fast_variance,
        unbiased_variance=self.unbiased_variance,
        # As in flax: initialization may run outside the mapped axis.
        axis_name=None if self.is_initializing() else self.axis_name,
        axis_index_groups=self.axis_index_groups)


def normalize_with_batch_statistics(x, reduction_axes, *, mask, dtype, epsilon, ghost_batches=1,
                                    use_fast_variance=False, unbiased_variance=False,
                                    axis_name=None, axis_index_groups=None):
  """(x normalized with its batch statistics, their mean and var over the ghost batches).

  Ghost batches view x as [groups, batch / groups, ...] and reduce each group on its own (never
  across devices). Shared by the Linen and NNX BatchNorm.
  """
  groups = ghost_batches
  axes = reduction_axes
  if groups > 1:
    if 0 not in reduction_axes:
      raise ValueError('ghost batches split axis 0, which must not be a feature axis')
    if x.shape[0] % groups:
      raise ValueError(f'a batch of {x.shape[0]} cannot be split into {groups} ghost batches')
    grouped_shape = (groups, x.shape[0] // groups) + x.shape[1:]
    if mask is not None:
      mask = jnp.reshape(jnp.broadcast_to(mask, x.shape), grouped_shape)
    x = jnp.reshape(x, grouped_shape)
    axes = (1,) + tuple(a + 1 for a in reduction_axes if a)
  centered, mean, var, count = statistics.centered_moments(
      x, axes, mask=mask, use_fast_variance=use_fast_variance,
      axis_name=None if groups > 1 else axis_name,
      axis_index_groups=axis_index_groups, dtype=dtype)
  if unbiased_variance:
    var = var * count / jnp.maximum(count - 1.0, 1.0)
  normalized = centered * lax.rsqrt(var + epsilon)
  if groups > 1:
    normalized = jnp.reshape(normalized, (-1,) + x.shape[2:])
    mean, var = jnp.mean(mean, 0), jnp.mean(var, 0)
  return normalized, mean, var
