"""Per-example NNX normalizers (LayerNorm, RMSNorm, GroupNorm) and WeightNormLinear.

Each computes with the pure functions of its Linen twin in `ln_jax.layers`, so the two agree to
the bit; see `ln_jax.nnx` for the differences from flax.nnx.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
from flax import nnx

from ln_jax.kernels.fused_matmul import matmul
from ln_jax.layers import group_norm
from ln_jax.layers import layer_norm
from ln_jax.layers import statistics
from ln_jax.layers import weight_norm
from ln_jax.nnx import common

_ones = nnx.initializers.ones
_zeros = nnx.initializers.zeros


class LayerNorm(nnx.Module):
  """LN (paper Eq. 3) over `reduction_axes`, a gain and bias per feature along `feature_axes`
  (`num_features` entries, as flax.nnx.LayerNorm stores them). `mask` at call time: statistics
  over its True entries only."""

  def __init__(self, num_features: int, *, epsilon: float = statistics.DEFAULT_EPSILON,
               dtype: Any = None, param_dtype: Any = jnp.float32, use_bias: bool = True,
               use_scale: bool = True, bias_init: Callable[..., Any] = _zeros,
               scale_init: Callable[..., Any] = _ones,
               reduction_axes: int | Sequence[int] = -1,
               feature_axes: int | Sequence[int] = -1, axis_name: str | None = None,
               axis_index_groups: Any = None, use_fast_variance: bool = False,
               force_float32_reductions: bool = True, rngs: nnx.Rngs):
    self.num_features = num_features
    self.epsilon, self.dtype, self.param_dtype = epsilon, dtype, param_dtype
    self.reduction_axes, self.feature_axes = reduction_axes, feature_axes
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.force_float32_reductions = force_float32_reductions
    self.scale = (common.feature_param(scale_init, rngs, num_features, param_dtype)
                  if use_scale else None)
    self.bias = (common.feature_param(bias_init, rngs, num_features, param_dtype)
                 if use_bias else None)

  def __call__(self, x, *, mask=None):
    feature_axes = common.axes(self.feature_axes, x.ndim)
    common.check_features(type(self).__name__, self.num_features, x, feature_axes)
    common.check_mask(type(self).__name__, mask, x)
    y = layer_norm.layer_norm(
        x, common.broadcast(self.scale, x, feature_axes),
        common.broadcast(self.bias, x, feature_axes),
        common.axes(self.reduction_axes, x.ndim), epsilon=self.epsilon, mask=mask,
        use_fast_variance=self.use_fast_variance, axis_name=self.axis_name,
        axis_index_groups=self.axis_index_groups,
        dtype=statistics.reduction_dtype(x, self.dtype, self.force_float32_reductions))
    return y.astype(statistics.output_dtype(x, self.dtype))


class RMSNorm(nnx.Module):
  """RMSNorm: g * x / sqrt(mean(x^2) + eps) over `reduction_axes`, with an optional bias
  (`use_bias`, off by default) as ln_jax's Linen RMSNorm. `use_fast_variance` is accepted and
  changes nothing (there is no mean to subtract)."""

  def __init__(self, num_features: int, *, epsilon: float = statistics.DEFAULT_EPSILON,
               dtype: Any = None, param_dtype: Any = jnp.float32, use_scale: bool = True,
               scale_init: Callable[..., Any] = _ones,
               reduction_axes: int | Sequence[int] = -1,
               feature_axes: int | Sequence[int] = -1, axis_name: str | None = None,
               axis_index_groups: Any = None, use_fast_variance: bool = False,
               force_float32_reductions: bool = True, use_bias: bool = False,
               bias_init: Callable[..., Any] = _zeros, rngs: nnx.Rngs):
    self.num_features = num_features
    self.epsilon, self.dtype, self.param_dtype = epsilon, dtype, param_dtype
    self.reduction_axes, self.feature_axes = reduction_axes, feature_axes
    self.axis_name, self.axis_index_groups = axis_name, axis_index_groups
    self.use_fast_variance = use_fast_variance
    self.force_float32_reductions = force_float32_reductions
    self.scale = (common.feature_param(scale_init, rngs, num_features, param_dtype)
                  if use_scale else None)
    self.bias = (common.feature_param(bias_init, rngs, num_features, param_dtype)
                 if use_bias else None)

  def __call__(self, x, *, mask=None):
    feature_axes = common.axes(self.feature_axes, x.ndim)
    common.check_features(type(self).__name__, self.num_features, x, feature_axes)
    common.check_mask(type(self).__name__, mask, x)
    y = layer_norm.rms_norm(
        x, common.broadcast(self.scale, x, feature_axes),
        common.broadcast(self.bias, x, feature_axes),
        common.axes(self.reduction_axes, x.ndim), epsilon=self.epsilon, mask=mask,
        axis_name=self.axis_name, axis_index_groups=self.axis_index_groups,
        dtype=statistics.reduction_dtype(x, self.dtype, self.force_float32_reductions))
    return y.astype(statistics.output_dtype(x, self.dtype))


class GroupNorm(nnx.Module):
  """GN over the last axis in `num_groups` groups (or groups of `group_size` units), per
  example; `reduction_axes` are the further axes the statistics span, e.g. (-3, -2) for the H
  and W of [B, H, W, C] (flax.nnx's `reduction_axes` instead lists all of them, the last axis
  included, and defaults to all but the first). The output has the input's dtype."""

  def __init__(self, num_features: int, num_groups: int | None = group_norm.DEFAULT_GROUPS,
               group_size: int | None = None, *,
               epsilon: float = statistics.DEFAULT_EPSILON, use_fast_variance: bool = False,
               use_scale: bool = True, use_bias: bool = True,
               scale_init: Callable[..., Any] = _ones, bias_init: Callable[..., Any] = _zeros,
               param_dtype: Any = jnp.float32, reduction_axes: Sequence[int] = (),
               rngs: nnx.Rngs):
    if (num_groups is None) == (group_size is None):
      raise ValueError('GroupNorm: give exactly one of num_groups and group_size '
                       f'(num_groups={num_groups}, group_size={group_size})')
    if group_size is not None:
      if group_size < 1 or num_features % group_size:
        raise ValueError(f'GroupNorm: group_size={group_size} does not divide '
                         f'num_features={num_features}')
      num_groups = num_features // group_size
    if num_groups < 1 or num_features % num_groups:
      raise ValueError(f'GroupNorm: num_groups={num_groups} does not divide '
                       f'num_features={num_features}')
    self.num_features, self.num_groups = num_features, num_groups
    self.epsilon, self.use_fast_variance = epsilon, use_fast_variance
    self.reduction_axes = tuple(reduction_axes)
    self.scale = (common.feature_param(scale_init, rngs, num_features, param_dtype)
                  if use_scale else None)
    self.bias = (common.feature_param(bias_init, rngs, num_features, param_dtype)
                 if use_bias else None)

  def __call__(self, x, *, mask=None):
    common.check_features('GroupNorm', self.num_features, x, (x.ndim - 1,))
    common.check_mask('GroupNorm', mask, x)
    y = group_norm.group_normalize(x, self.num_groups, self.epsilon, self.use_fast_variance,
                                   mask, self.reduction_axes)
    y = statistics.scale_and_shift(y, None if self.scale is None else self.scale[...],
                                   None if self.bias is None else self.bias[...])
    return y.astype(x.dtype)


class WeightNormLinear(nnx.Module):
  """ln_jax's WeightNormDense for NNX: w_j = g_j v_j / ||v_j||, `kernel` v [in, out], `scale` g
  (starting at the column norms of the initial v, so the layer starts with the weights
  `kernel_init` drew) and `bias` [out]. `fuse_weight_grad` as in `ln_jax.layers.Dense`."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               fuse_weight_grad: bool = True, dtype: Any = None,
               param_dtype: Any = jnp.float32,
               kernel_init: Callable[..., Any] = nnx.initializers.lecun_normal(),
               bias_init: Callable[..., Any] = _zeros, rngs: nnx.Rngs):
    self.in_features, self.out_features = in_features, out_features
    self.fuse_weight_grad, self.dtype, self.param_dtype = fuse_weight_grad, dtype, param_dtype
    kernel = kernel_init(rngs.params(), (in_features, out_features), param_dtype)
    self.kernel = nnx.Param(kernel)
    self.scale = nnx.Param(jnp.linalg.norm(kernel, axis=0))
    self.bias = (common.feature_param(bias_init, rngs, out_features, param_dtype)
                 if use_bias else None)

  def __call__(self, x):
    common.check_features('WeightNormLinear (in_features)', self.in_features, x, (x.ndim - 1,))
    kernel = weight_norm.weight_normalize(self.kernel[...], self.scale[...])
    dtype = self.dtype or jnp.result_type(x, self.param_dtype)
    x = jnp.asarray(x, dtype)
    product = matmul if self.fuse_weight_grad else jnp.matmul
    y = product(x.reshape(-1, x.shape[-1]), jnp.asarray(kernel, dtype))
    y = y.reshape(*x.shape[:-1], self.out_features)
    if self.bias is not None:
      y = y + jnp.asarray(self.bias[...], dtype)
    return y
