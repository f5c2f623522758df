"""Group Normalization (Wu & He, 2018, arXiv 1803.08494) over groups of hidden units.

The H units of a layer are split into `num_groups` consecutive groups of H / num_groups; each
example is normalized by the mean and (biased, two-pass) variance of its own units within each
group, then a gain and bias per unit. One group is LayerNorm exactly. Like LN it computes the
same thing in training and evaluation and works at batch size 1. The default of 8 groups: Wu &
He's 32 does not divide the MLP's 1000 units; 8 groups of 125 do (and 4H, 2H, H of the cells).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics

DEFAULT_GROUPS = 8


def group_normalize(x, num_groups: int, epsilon: float, use_fast_variance: bool = False,
                    mask=None, reduction_axes=()):
  """(x - mu_g) / sqrt(var_g + eps) over `num_groups` groups of the last axis, per example.

  `reduction_axes`: further axes the statistics span (an image's H and W: (-3, -2) for
  [B, H, W, C]). `mask` (broadcastable to x, True for real entries) leaves the other entries out
  of each group's statistics, as LayerNorm's does; a group with no real entry outputs 0.
  """
  features = x.shape[-1]
  if features % num_groups:
    raise ValueError(f'{features} units cannot be split into {num_groups} groups')
  grouped = lambda v: jnp.reshape(v, x.shape[:-1] + (num_groups, features // num_groups))
  x_g = grouped(x)
  if mask is not None:
    mask = grouped(jnp.broadcast_to(jnp.asarray(mask, bool), x.shape))
  extra = tuple(sorted(a % x.ndim for a in reduction_axes))
  if x.ndim - 1 in extra:
    raise ValueError('reduction_axes must not include the last axis, which holds the groups')
  centered, _, var, _ = statistics.centered_moments(
      x_g, extra + (x_g.ndim - 1,), mask=mask, use_fast_variance=use_fast_variance)
  return jnp.reshape(centered * lax.rsqrt(var + epsilon), x.shape)


class GroupNorm(nn.Module):
  """GN over the last axis in `num_groups` groups; gain 1 and bias 0 per unit at init.

  `reduction_axes`: further axes each group's statistics span, e.g. (-3, -2) for the H and W of
  an image [B, H, W, C] (Wu & He's convolutional GN)."""
  num_groups: int = DEFAULT_GROUPS
  reduction_axes: tuple = ()
  epsilon: float = statistics.DEFAULT_EPSILON
  use_fast_variance: bool = False
  use_scale: bool = True
  use_bias: bool = True
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    """`mask` (broadcastable to x, True for real entries): statistics over those only; a
    padding mask of examples ([B, 1]) leaves the real examples unchanged."""
    y = group_normalize(x, self.num_groups, self.epsilon, self.use_fast_variance, mask,
                        self.reduction_axes)
    y = statistics.affine(self, y, (x.shape[-1],), self.use_scale, self.use_bias,
                          self.scale_init, self.bias_init, self.param_dtype)
    return y.astype(x.dtype)
