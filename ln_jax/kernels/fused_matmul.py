"""x @ w whose weight gradient at small batch sizes fuses into the optimizer update.

At batch size B the weight gradient x^T dy is a sum of B outer products. Computed by a matrix
product, it is written to memory and read back by the optimizer's passes over the weights (Adam's
mu and nu updates each read it). Written as B broadcast multiply-adds, XLA fuses it into those
passes instead: the gradient is never stored, and each step moves three weight-sized arrays
fewer. At batch size 4 a step of the paper's MLP is bound by memory traffic, not arithmetic (see
docs/speed.md). Larger batches use the matrix product, where the arithmetic is worth a library
kernel. Values agree with the plain product to float rounding (the sum runs in another order);
tests/test_dense.py checks `layers.Dense` with and without it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Up to this many rows, the weight gradient is a sum of outer products (2 * rows flops per
# weight, repeated in every fused consumer); above it, a matrix product.
OUTER_PRODUCT_MAX_ROWS = 8


def _identity_dot(a_BxN):
  """a itself, through a dot with the identity at full precision (no finite value changes).

  A dot is a fusion boundary (an optimization barrier is not, on XLA:CPU), so `a` is stored
  before use. Without it XLA inlines whatever computed a [B, n] factor of the weight gradient
  (a normalizer's backward pass, say) into the loop over the weights, once per weight.
  """
  eye_BxB = jnp.eye(a_BxN.shape[0], dtype=a_BxN.dtype)
  return jnp.matmul(eye_BxB, a_BxN, precision=jax.lax.Precision.HIGHEST)


def _rows_times(x_BxI, w_dot_IxO):
  """x @ w_dot as one sum over `in` per row of x: linear in w_dot, and its transpose (what
  reverse mode runs) is the sum over rows of outer products x[b] (x) dy[b], elementwise work
  that XLA fuses into the optimizer's passes instead of storing the gradient."""
  rows = [jnp.sum(x_BxI[b][:, None] * w_dot_IxO, axis=0) for b in range(x_BxI.shape[0])]
  return _identity_dot(jnp.stack(rows))


@jax.custom_jvp
def matmul(x_BxI, w_IxO):
  """x @ w for 2-D operands, whose weight gradient fuses into its consumers at small batches.

  Written as a forward-mode rule, so jvp, grad and their compositions (Hessian-vector
  products) all work; reverse mode transposes the rule's tangent in w into outer products.
  """
  return x_BxI @ w_IxO


@matmul.defjvp
def _matmul_jvp(primals, tangents):
  x_BxI, w_IxO = primals
  x_dot, w_dot = tangents
  y_BxO = x_BxI @ w_IxO
  if x_BxI.shape[0] > OUTER_PRODUCT_MAX_ROWS:
    return y_BxO, x_dot @ w_IxO + x_BxI @ w_dot
  return y_BxO, x_dot @ w_IxO + _rows_times(_identity_dot(x_BxI), w_dot)
