"""The feed-forward classifier of `mlp.py` written in Flax NNX, trained by the same loop.

Its variables have the Linen MLP's names and shapes ('dense_0'/'kernel', 'norm_0'/'scale',
'logits'/'kernel' and 'bias', BatchNorm's 'mean' and 'var' in 'batch_stats'), and for the same
parameters it computes what the Linen MLP computes. The loop (a Linen program) runs it through
`flax.nnx.bridge.to_linen` (`create`): NNX Params become the 'params' collection and BatchStats
'batch_stats', so the train step, checkpoints, resume, vmapped seeds and compare are those of
every other model.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from flax import nnx
import jax.numpy as jnp

from ln_jax import nnx as nnx_layers
from ln_jax.kernels.fused_matmul import matmul


class Dense(nnx.Module):
  """`layers.Dense` in NNX: flax's 'kernel' [in, out] (lecun normal) and 'bias' [out]; the
  small-batch weight gradient fuses into the optimizer with `fuse_weight_grad`."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool = True,
               fuse_weight_grad: bool = True, dtype: Any = None, rngs: nnx.Rngs):
    self.out_features, self.fuse_weight_grad, self.dtype = out_features, fuse_weight_grad, dtype
    self.kernel = nnx.Param(nnx.initializers.lecun_normal()(
        rngs.params(), (in_features, out_features), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

  def __call__(self, x):
    dtype = self.dtype or jnp.result_type(x, jnp.float32)
    x = jnp.asarray(x, dtype)
    product = matmul if self.fuse_weight_grad else jnp.matmul
    y = product(x.reshape(-1, x.shape[-1]), jnp.asarray(self.kernel[...], dtype))
    y = y.reshape(*x.shape[:-1], self.out_features)
    if self.bias is not None:
      y = y + jnp.asarray(self.bias[...], dtype)
    return y


class MLP(nnx.Module):
  """Dense -> norm -> activation per hidden layer, then Dense (-> norm) to the logits.

  `norm`: (make(num_features, *, rngs), call(module, x, train)) from `norms.make_nnx_norm`, or
  None; `weight_norm` makes every dense layer `ln_jax.nnx.WeightNormLinear`.
  """

  def __init__(self, in_features: int, hidden_sizes: Sequence[int], num_classes: int, *,
               activation: Callable[[Any], Any], norm=None, norm_logits: bool = False,
               weight_norm: bool = False, fuse_weight_grad: bool = True, dtype: Any = None,
               rngs: nnx.Rngs):
    self.activation, self.dtype = activation, dtype
    self.norm_call = norm[1] if norm is not None else None
    widths = [in_features, *hidden_sizes, num_classes]
    self.names, self.normalized = [], []
    for i in range(len(widths) - 1):
      is_logits = i == len(widths) - 2
      normalized = norm is not None and (not is_logits or norm_logits)
      name = 'logits' if is_logits else f'dense_{i}'
      dense = nnx_layers.WeightNormLinear if weight_norm else Dense
      setattr(self, name, dense(widths[i], widths[i + 1], use_bias=not normalized,
                                fuse_weight_grad=fuse_weight_grad, dtype=dtype, rngs=rngs))
      if normalized:
        setattr(self, f'norm_{i}', norm[0](widths[i + 1], rngs=rngs))
      self.names.append(name)
      self.normalized.append(normalized)

  def __call__(self, x_BxD, train: bool = False):
    h = jnp.asarray(x_BxD, self.dtype or jnp.float32).reshape(x_BxD.shape[0], -1)
    for i, (name, normalized) in enumerate(zip(self.names, self.normalized)):
      h = getattr(self, name)(h)
      if normalized:
        h = self.norm_call(getattr(self, f'norm_{i}'), h, train)
      if name != 'logits':
        h = self.activation(h)
    return jnp.asarray(h, jnp.float32)


def create(**kwargs):
  """The NNX MLP as a Linen module for the training loop (see the module docstring)."""
  return nnx.bridge.to_linen(MLP, **kwargs)
