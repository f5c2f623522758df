"""Per-example normalizers: LayerNorm (Ba et al., 2016, Eq. 3) and RMSNorm (Zhang & Sennrich)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics


class LayerNorm(nn.Module):
  """LN (paper Eq. 3): per-example statistics over the hidden units, gain 1 and bias 0 at init.

  The gain and bias have one entry per normalized unit (the shape of `x` along
  `reduction_axes`). Training and evaluation compute the same thing, at any batch size.
  """
  epsilon: float = statistics.DEFAULT_EPSILON
  reduction_axes: int | Sequence[int] = -1
  use_scale: bool = True
  use_bias: bool = True
  use_fast_variance: bool = False
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    del mask  # statistics are per example: padding elsewhere cannot reach them
    axes = statistics.axes_tuple(self.reduction_axes, x.ndim)
    centered, _, var, _ = statistics.centered_moments(
        x, axes, use_fast_variance=self.use_fast_variance)
    y = centered * lax.rsqrt(var + self.epsilon)
    y = statistics.affine(self, y, statistics.param_shape(x.shape, axes), self.use_scale,
                          self.use_bias, self.scale_init, self.bias_init, self.param_dtype)
    return y.astype(x.dtype)


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich, 2019): g * x / sqrt(mean(x^2) + eps), with no re-centering.

  Statistics over `reduction_axes` per example, like LayerNorm, in float32 (or wider). The gain
  starts at 1; the optional bias (off by default, as in the paper's own layer) starts at 0.
  """
  epsilon: float = statistics.DEFAULT_EPSILON
  reduction_axes: int | Sequence[int] = -1
  use_scale: bool = True
  use_bias: bool = False
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    del mask  # per-example statistics, as in LayerNorm
    axes = statistics.axes_tuple(self.reduction_axes, x.ndim)
    x_wide = jnp.asarray(x, statistics.stats_dtype(x))
    mean_square = jnp.mean(jnp.square(x_wide), axes, keepdims=True)
    y = x_wide * lax.rsqrt(mean_square + self.epsilon)
    y = statistics.affine(self, y, statistics.param_shape(x.shape, axes), self.use_scale,
                          self.use_bias, self.scale_init, self.bias_init, self.param_dtype)
    return y.astype(x.dtype)
