"""Per-example normalizers: LayerNorm (Ba et al., 2016, Eq. 3) and RMSNorm (Zhang & Sennrich).

Both take flax.linen's arguments with flax's meaning, and store flax's parameters (names, shapes,
dtypes), so a flax model or checkpoint works with them unchanged. The arithmetic lives in
`layer_norm` and `rms_norm`, pure functions of the input and the parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax.layers import statistics


def layer_norm(x, scale, bias, axes, *, epsilon, mask=None, use_fast_variance=False,
               axis_name=None, axis_index_groups=None, dtype=None):
  """g * (x - mu) * rsqrt(var + eps) + b over `axes`, in the statistics' dtype."""
  centered, _, var, _ = statistics.centered_moments(
      x, axes, mask=mask, use_fast_variance=use_fast_variance, axis_name=axis_name,
      axis_index_groups=axis_index_groups, dtype=dtype)
  return statistics.scale_and_shift(centered * lax.rsqrt(var + epsilon), scale, bias)


def rms_norm(x, scale, bias, axes, *, epsilon, mask=None, axis_name=None,
             axis_index_groups=None, dtype=None):
  """g * x * rsqrt(mean(x^2) + eps) + b over `axes`, in the statistics' dtype."""
  x_wide, mean_square = statistics.mean_square(
      x, axes, mask=mask, axis_name=axis_name, axis_index_groups=axis_index_groups, dtype=dtype)
  return statistics.scale_and_shift(x_wide * lax.rsqrt(mean_square + epsilon), scale, bias)


class LayerNorm(nn.Module):
  """LN (paper Eq. 3): per-example statistics over the hidden units, gain 1 and bias 0 at init.

  Training and evaluation compute the same thing, at any batch size. The arguments are
  flax.linen.LayerNorm's, with the same meaning: statistics over `reduction_axes`, one gain and
  bias entry per feature along `feature_axes` (shape `[x.shape[a] for a in feature_axes]`, as
  flax stores them), `dtype` the result dtype, `axis_name`/`axis_index_groups` for statistics
  across devices inside `shard_map`/`pmap`, `mask` (broadcastable to `x`) for statistics over
  its True entries only. Where ours differ from flax's:
  - masked-out entries that are NaN or inf output the bias (flax: NaN), so a loss that ignores
    them has finite gradients;
  - `epsilon` defaults to 1e-5 (the paper's code; flax 1e-6);
  - `use_fast_variance` defaults to False: the two-pass variance, exact at large means in
    float32 (flax defaults to the one-pass form);
  - `dtype=None` gives the input's dtype (flax promotes it with the parameters' dtype, so a
    bfloat16 input gives float32 there); statistics are float32 or wider either way;
  - across devices, each device's entries count by their number (flax averages the devices'
    means, which differs when masks leave them different counts).
  """
  epsilon: float = statistics.DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Callable[..., Any] = nn.initializers.zeros
  scale_init: Callable[..., Any] = nn.initializers.ones
  reduction_axes: int | Sequence[int] = -1
  feature_axes: int | Sequence[int] = -1
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True

  @nn.compact
  def __call__(self, x, *, mask=None):
    scale, bias = statistics.feature_params(
        self, x.shape, statistics.axes_tuple(self.feature_axes, x.ndim),
        use_scale=self.use_scale, use_bias=self.use_bias, scale_init=self.scale_init,
        bias_init=self.bias_init, param_dtype=self.param_dtype)
    y = layer_norm(
        x, scale, bias, statistics.axes_tuple(self.reduction_axes, x.ndim),
        epsilon=self.epsilon, mask=mask, use_fast_variance=self.use_fast_variance,
        axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
        dtype=statistics.reduction_dtype(x, self.dtype, self.force_float32_reductions))
    return y.astype(statistics.output_dtype(x, self.dtype))


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich, 2019): g * x / sqrt(mean(x^2) + eps), with no re-centering.

  Statistics over `reduction_axes` per example, like LayerNorm. The arguments are
  flax.linen.RMSNorm's with flax's meaning (see LayerNorm; `use_fast_variance` is accepted and
  changes nothing, as in flax: there is no mean to subtract). Where ours differ from flax's:
  `epsilon` defaults to 1e-5 (flax 1e-6); `dtype=None` gives the input's dtype; and an optional
  bias (`use_bias`, off by default as in the paper's layer and in flax; `bias_init`), stored
  like the gain.
  """
  epsilon: float = statistics.DEFAULT_EPSILON
  dtype: Any = None
  param_dtype: Any = jnp.float32
  use_scale: bool = True
  scale_init: Callable[..., Any] = nn.initializers.ones
  reduction_axes: int | Sequence[int] = -1
  feature_axes: int | Sequence[int] = -1
  axis_name: str | None = None
  axis_index_groups: Any = None
  use_fast_variance: bool = False
  force_float32_reductions: bool = True
  use_bias: bool = False
  bias_init: Callable[..., Any] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x, *, mask=None):
    scale, bias = statistics.feature_params(
        self, x.shape, statistics.axes_tuple(self.feature_axes, x.ndim),
        use_scale=self.use_scale, use_bias=self.use_bias, scale_init=self.scale_init,
        bias_init=self.bias_init, param_dtype=self.param_dtype)
    y = rms_norm(
        x, scale, bias, statistics.axes_tuple(self.reduction_axes, x.ndim),
        epsilon=self.epsilon, mask=mask, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups,
        dtype=statistics.reduction_dtype(x, self.dtype, self.force_float32_reductions))
    return y.astype(statistics.output_dtype(x, self.dtype))
