"""`flax.linen.Dense`'s layer, whose weight gradient at small batch sizes can fuse into the
optimizer update (`kernels.fused_matmul`, `fuse_weight_grad=True`) instead of being one matrix
product.

The parameters ('kernel' [in, out], 'bias' [out]) and their initializers are those of
`flax.linen.Dense`, so checkpoints and configs are interchangeable.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from ln_jax.kernels.fused_matmul import matmul


class Dense(nn.Module):
  """`flax.linen.Dense` for inputs [..., in] with the gradient of `matmul`, or with autodiff's
  plain matrix-product gradient where `fuse_weight_grad` is False."""
  features: int
  use_bias: bool = True
  fuse_weight_grad: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Any] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Any] = nn.initializers.zeros

  def weights(self, in_features: int):
    """The [in, out] matrix the layer multiplies by; subclasses reparameterize it."""
    return self.param('kernel', self.kernel_init, (in_features, self.features), self.param_dtype)

  @nn.compact
  def __call__(self, x):
    kernel = self.weights(jnp.shape(x)[-1])
    dtype = self.dtype or jnp.result_type(x, self.param_dtype)
    x = jnp.asarray(x, dtype)
    x_2d = x.reshape(-1, x.shape[-1])
    product = matmul if self.fuse_weight_grad else jnp.matmul
    y = product(x_2d, jnp.asarray(kernel, dtype)).reshape(*x.shape[:-1], self.features)
    if self.use_bias:
      y = y + jnp.asarray(self.param('bias', self.bias_init, (self.features,),
                                     self.param_dtype), dtype)
    return y
