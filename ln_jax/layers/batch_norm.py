"""BatchNorm with running averages, the unbiased small-batch variance, ghost batches and masks."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics


class BatchNorm(nn.Module):
  """BN over every axis but the last, with running averages for evaluation.

  - `use_running_average`: normalize with the running averages (evaluation) instead of the
    batch statistics; when False the running averages are updated, if `batch_stats` is mutable.
  - `unbiased_variance`: normalize with the unbiased batch variance n/(n-1) * var, as the LN paper
    does at batch size 4; the running average then tracks that same estimate.
  - Under `jax.jit` with the batch sharded over a device mesh the reductions are global, so the
    statistics are those of the whole batch. Inside `shard_map`/`pmap`, set `axis_name` to
    average over devices (leave it None for per-device, "ghost", statistics).
  - `ghost_batches=G` splits the batch into G consecutive groups with statistics of their own
    ("ghost" batches); with G = the number of devices each device keeps its own statistics, and
    under jit no statistics cross devices. The running averages take the mean over the groups.
  """
  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = statistics.DEFAULT_EPSILON
  unbiased_variance: bool = False
  use_fast_variance: bool = False
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros
  axis_name: str | None = None
  ghost_batches: int = 1
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None, mask=None):
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)

    if use_running_average:
      mean, var = running_mean.value, running_var.value
      centered = jnp.asarray(x, jnp.float32) - mean
    elif self.ghost_batches > 1:
      centered, mean, var = self._ghost_statistics(x, mask)
    else:
      centered, mean, var, count = statistics.centered_moments(
          x, axes, mask=None if mask is None else mask[..., None],
          use_fast_variance=self.use_fast_variance)
      if self.axis_name is not None:
        # Average first and second moments over devices, then recentre.
        mean_sq = lax.pmean(var + jnp.square(mean), self.axis_name)
        mean = lax.pmean(mean, self.axis_name)
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        count = lax.psum(count, self.axis_name)
        centered = jnp.asarray(x, jnp.float32) - mean
      mean, var, count = (jnp.reshape(v, (-1,)) for v in (mean, var, count))
      if self.unbiased_variance:
        var = var * count / jnp.maximum(count - 1.0, 1.0)
    if (not use_running_average and not self.is_initializing()
        and self.is_mutable_collection('batch_stats')):
      m = self.momentum
      # Ghost batches: the mean over the groups' statistics (an exact identity otherwise).
      mean_f, var_f = (jnp.mean(jnp.reshape(v, (-1, features)), 0) for v in (mean, var))
      running_mean.value = m * running_mean.value + (1.0 - m) * mean_f
      running_var.value = m * running_var.value + (1.0 - m) * var_f

    y = jnp.reshape(centered * lax.rsqrt(var + self.epsilon), x.shape)
    y = statistics.affine(self, y, (features,), self.use_scale, self.use_bias, self.scale_init,
                self.bias_init, self.param_dtype)
    return y.astype(x.dtype)

  def _ghost_statistics(self, x, mask):
    """(centered, mean, var) of x split into [groups, batch / groups, ..., features]."""
    groups = self.ghost_batches
    if x.shape[0] % groups:
      raise ValueError(f'a batch of {x.shape[0]} cannot be split into {groups} ghost batches')
    x_g = jnp.reshape(x, (groups, -1) + x.shape[1:])
    mask_g = None if mask is None else jnp.reshape(mask, (groups, -1) + mask.shape[1:])[..., None]
    centered, mean, var, count = statistics.centered_moments(
        x_g, tuple(range(1, x_g.ndim - 1)), mask=mask_g, use_fast_variance=self.use_fast_variance)
    if self.unbiased_variance:
      var = var * count / jnp.maximum(count - 1.0, 1.0)
    return centered, mean, var
