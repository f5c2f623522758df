"""A dense layer whose weight gradient at small batch sizes fuses into the optimizer update.

At batch size B the weight gradient x^T dy is a sum of B outer products. Computed by a matrix
product, it is written to memory and read back by the optimizer's passes over the weights (Adam's
mu and nu updates each read it). Written as B broadcast multiply-adds, XLA fuses it into those
passes instead: the gradient is never stored, and each step moves three weight-sized arrays
fewer. At batch size 4 a step of the paper's MLP is bound by memory traffic, not arithmetic (see
docs/speed.md). Larger batches use the matrix product, where the arithmetic is worth a library
kernel. Values agree with `flax.linen.Dense` to float rounding (the sum runs in another order).

The parameters ('kernel' [in, out], 'bias' [out]) and their initializers are those of
`flax.linen.Dense`, so checkpoints and configs are interchangeable.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# Up to this many rows, the weight gradient is a sum of outer products (2 * rows flops per
# weight, repeated in every fused consumer); above it, a matrix product.
OUTER_PRODUCT_MAX_ROWS = 8


def _outer_product_sum(x_BxI, dy_BxO):
  total = x_BxI[0][:, None] * dy_BxO[0][None, :]
  for b in range(1, x_BxI.shape[0]):
    total = total + x_BxI[b][:, None] * dy_BxO[b][None, :]
  return total


@jax.custom_vjp
def matmul(x_BxI, w_IxO):
  """x @ w for 2-D operands; its weight gradient is fusable at small batch sizes."""
  return x_BxI @ w_IxO


def _matmul_fwd(x_BxI, w_IxO):
  return x_BxI @ w_IxO, (x_BxI, w_IxO)


def _matmul_bwd(residuals, dy_BxO):
  x_BxI, w_IxO = residuals
  dx_BxI = dy_BxO @ w_IxO.T
  if x_BxI.shape[0] > OUTER_PRODUCT_MAX_ROWS:
    return dx_BxI, x_BxI.T @ dy_BxO
  # Materialize the [B, in] and [B, out] factors first: otherwise XLA inlines whatever computed
  # them (a normalizer's backward pass, say) into the loop over the weights, once per weight.
  # A dot is a fusion boundary (an optimization barrier is not, on XLA:CPU); multiplying by the
  # identity at full precision changes no finite value.
  eye_BxB = jnp.eye(x_BxI.shape[0], dtype=x_BxI.dtype)
  x_BxI = jnp.matmul(eye_BxB, x_BxI, precision=jax.lax.Precision.HIGHEST)
  dy_BxO = jnp.matmul(eye_BxB, dy_BxO, precision=jax.lax.Precision.HIGHEST)
  return dx_BxI, _outer_product_sum(x_BxI, dy_BxO)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


class Dense(nn.Module):
  """`flax.linen.Dense` for inputs [..., in] with the gradient of `matmul`."""
  features: int
  use_bias: bool = True
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
    y = matmul(x_2d, jnp.asarray(kernel, dtype)).reshape(*x.shape[:-1], self.features)
    if self.use_bias:
      y = y + jnp.asarray(self.param('bias', self.bias_init, (self.features,),
                                     self.param_dtype), dtype)
    return y
