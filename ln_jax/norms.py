"""Normalization layers as the Layer Normalization paper (Ba et al., 2016) defines them.

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
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from ln_jax import dense

DEFAULT_EPSILON = 1e-5


def _axes_tuple(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
  if isinstance(axes, int):
    axes = (axes,)
  return tuple(sorted(a % ndim for a in axes))


def stats_dtype(x):
  """float32, or the input's own dtype when it is wider (float64 under `jax.enable_x64`)."""
  return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _weighted_mean(x, axes, mask):
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
  mean_fn, count = _weighted_mean(x, axes, mask)
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


def _affine(module: nn.Module, y, param_shape, use_scale, use_bias, scale_init, bias_init,
            param_dtype):
  if use_scale:
    y = y * jnp.asarray(module.param('scale', scale_init, param_shape, param_dtype), y.dtype)
  if use_bias:
    y = y + jnp.asarray(module.param('bias', bias_init, param_shape, param_dtype), y.dtype)
  return y


def _param_shape(shape, axes):
  """One gain/bias entry per normalized unit, broadcastable against the input."""
  return tuple(shape[a] if a in axes else 1 for a in range(len(shape)))[min(axes):]


class LayerNorm(nn.Module):
  """LN (paper Eq. 3): per-example statistics over the hidden units, gain 1 and bias 0 at init.

  The gain and bias have one entry per normalized unit (the shape of `x` along
  `reduction_axes`). Training and evaluation compute the same thing, at any batch size.
  """
  epsilon: float = DEFAULT_EPSILON
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
    axes = _axes_tuple(self.reduction_axes, x.ndim)
    centered, _, var, _ = centered_moments(x, axes, use_fast_variance=self.use_fast_variance)
    y = centered * lax.rsqrt(var + self.epsilon)
    y = _affine(self, y, _param_shape(x.shape, axes), self.use_scale, self.use_bias,
                self.scale_init, self.bias_init, self.param_dtype)
    return y.astype(x.dtype)


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
  epsilon: float = DEFAULT_EPSILON
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
      centered, mean, var, count = centered_moments(
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
    y = _affine(self, y, (features,), self.use_scale, self.use_bias, self.scale_init,
                self.bias_init, self.param_dtype)
    return y.astype(x.dtype)

  def _ghost_statistics(self, x, mask):
    """(centered, mean, var) of x split into [groups, batch / groups, ..., features]."""
    groups = self.ghost_batches
    if x.shape[0] % groups:
      raise ValueError(f'a batch of {x.shape[0]} cannot be split into {groups} ghost batches')
    x_g = jnp.reshape(x, (groups, -1) + x.shape[1:])
    mask_g = None if mask is None else jnp.reshape(mask, (groups, -1) + mask.shape[1:])[..., None]
    centered, mean, var, count = centered_moments(
        x_g, tuple(range(1, x_g.ndim - 1)), mask=mask_g, use_fast_variance=self.use_fast_variance)
    if self.unbiased_variance:
      var = var * count / jnp.maximum(count - 1.0, 1.0)
    return centered, mean, var


class RMSNorm(nn.Module):
  """RMSNorm (Zhang & Sennrich, 2019): g * x / sqrt(mean(x^2) + eps), with no re-centering.

  Statistics over `reduction_axes` per example, like LayerNorm, in float32 (or wider). The gain
  starts at 1; the optional bias (off by default, as in the paper's own layer) starts at 0.
  """
  epsilon: float = DEFAULT_EPSILON
  reduction_axes: int | Sequence[int] = -1
  use_scale: bool = True
  use_bias: bool = False
  scale_init: Callable[..., Any] = nn.initializers.ones
  bias_init: Callable[..., Any] = nn.initializers.zeros
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None):
    del mask  # per-example statistics, as in LayerNorm
    axes = _axes_tuple(self.reduction_axes, x.ndim)
    x_wide = jnp.asarray(x, stats_dtype(x))
    mean_square = jnp.mean(jnp.square(x_wide), axes, keepdims=True)
    y = x_wide * lax.rsqrt(mean_square + self.epsilon)
    y = _affine(self, y, _param_shape(x.shape, axes), self.use_scale, self.use_bias,
                self.scale_init, self.bias_init, self.param_dtype)
    return y.astype(x.dtype)


class WeightNormDense(dense.Dense):
  """A dense layer with weight normalization (Salimans & Kingma, 2016): w_j = g_j v_j / ||v_j||.

  `kernel` holds the directions v, [in, out] like `nn.Dense` (v_j is column j, the weights of
  output unit j); `scale` holds the lengths g, one per output unit. g starts at the column norms
  of the initial v, so the layer starts with exactly the weights `kernel_init` drew, as the plain
  `nn.Dense` would. The norms are computed in float32 (or wider) whatever `dtype` is.
  """

  def weights(self, in_features: int):
    kernel = super().weights(in_features)
    scale = self.param('scale', lambda _: jnp.linalg.norm(kernel, axis=0))
    v = jnp.asarray(kernel, stats_dtype(kernel))
    return v * (scale * lax.rsqrt(jnp.sum(jnp.square(v), axis=0)))


NormFactory = Callable[..., nn.Module]
NORMS = ('layer', 'batch', 'rms', 'weight', 'none')


def make_norm(config) -> NormFactory | None:
  """Maps `config.norm` to a factory `make(train: bool, **overrides) -> nn.Module`, or None.

  The factory hides which normalizer it builds, so one model definition serves all of them.
  Reads config.norm, norm_epsilon, norm_fast_variance, bn_momentum, bn_unbiased_variance,
  bn_eval_stats ('running' | 'batch') and bn_ghost_batches (1 when absent). 'weight' normalizes
  the dense layers themselves (see `make_dense`), so like 'none' it has no norm module. 'rms' gets
  a bias: the dense layer before a norm has none, and both papers add b after the normalization,
  f(norm(a) + b).
  """
  name = config.norm
  common = dict(epsilon=config.norm_epsilon, use_fast_variance=config.norm_fast_variance)
  if name in ('none', 'weight'):
    return None
  if name == 'layer':
    def make_layer_norm(train: bool, **overrides):
      del train  # LN is the same in training and evaluation
      return LayerNorm(**{**common, **overrides})
    return make_layer_norm
  if name == 'rms':
    def make_rms_norm(train: bool, **overrides):
      del train  # per-example statistics: the same in training and evaluation
      return RMSNorm(**{'epsilon': config.norm_epsilon, 'use_bias': True, **overrides})
    return make_rms_norm
  if name == 'batch':
    eval_with_batch_stats = config.bn_eval_stats == 'batch'
    def make_batch_norm(train: bool, **overrides):
      return BatchNorm(use_running_average=not (train or eval_with_batch_stats),
                       momentum=config.bn_momentum,
                       unbiased_variance=config.bn_unbiased_variance,
                       **{**common, 'ghost_batches': config.get('bn_ghost_batches', 1),
                          **overrides})
    return make_batch_norm
  raise ValueError(f'unknown norm {name!r}; choose one of {", ".join(NORMS)}')


def make_dense(config) -> Callable[..., nn.Module]:
  """The dense layer for `config.norm`: weight-normalized for 'weight', else `dense.Dense`
  (`nn.Dense`'s parameters and values); `config.fuse_weight_grad` (default True) says whether
  small-batch weight gradients fuse into the optimizer or are one matrix product."""
  cls = WeightNormDense if config.norm == 'weight' else dense.Dense
  return functools.partial(cls, fuse_weight_grad=config.get('fuse_weight_grad', True))
