"""LayerNorm forward + backward throughput in GB/s: ln_jax against flax.linen and PyTorch.

The figure counts the bytes a fused implementation cannot avoid moving: the forward pass reads x
and writes y, the backward pass reads x and dy and writes dx, so 5 * x.nbytes per pass (the
parameter gradients are one row each and ignored). Higher is better; the memory bandwidth of
the working set is the ceiling.

Every contender runs the same loop, so the figures of different libraries compare the layers:
`PASSES_PER_CALL` forward+backward passes per timed call, pass i on x and dy scaled by
(1 + 1e-7 i), so that no pass and no part of one (dy * scale, sum(dy)) is loop-invariant and
hoisted out of the loop by the compiler, and y and dx added into accumulators, so that neither
output is dead code that the compiler drops. The accumulators cost every contender the same
extra traffic (read each and the output, write each: 6 x.nbytes per pass), which GB/s does not
count: it is a lower bound on the layer's own rate.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ln_jax import layers
from ln_jax.kernels import fused_norms

PASSES_PER_CALL = 10


def time_per_call(call: Callable[[], object], sync: Callable[[object], object],
                  repeats: int = 5, min_seconds: float = 0.2) -> float:
  """Median seconds per call over `repeats` timed batches of calls (after one warm-up call)."""
  sync(call())
  start = time.perf_counter()
  sync(call())
  per_call = max(time.perf_counter() - start, 1e-6)
  calls = max(1, int(min_seconds / per_call))
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      out = call()
    sync(out)
    samples.append((time.perf_counter() - start) / calls)
  return statistics.median(samples)


PRODUCTS_PER_CALL = 50  # small products per jitted call: dispatch would dominate one alone


def matmul_callable(m: int, k: int, n: int):
  """(call, sync) running float32 [m, k] x [k, n] products with XLA: one per call for large
  shapes; `PRODUCTS_PER_CALL` dependent-free ones in a loop for small ones (an LSTM step's
  size), each on a slightly different input so none is hoisted; a call returns the count."""
  a = jax.random.normal(jax.random.PRNGKey(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (k, n), jnp.float32)
  if m * k * n >= 2**27:
    product = jax.jit(jnp.dot)
    return (lambda: (1, product(a, b))), (lambda out: jax.block_until_ready(out[1]))

  @jax.jit
  def products(a, b):
    def body(i, acc):
      return acc + jnp.dot(a * (1.0 + 1e-7 * i.astype(jnp.float32)), b)
    return jax.lax.fori_loop(0, PRODUCTS_PER_CALL, body, jnp.zeros((m, n), jnp.float32))
  return ((lambda: (PRODUCTS_PER_CALL, products(a, b))),
          (lambda out: jax.block_until_ready(out[1])))


def _jax_passes(module: nn.Module, x):
  """A jitted call of `PASSES_PER_CALL` forward+backward passes; returns the sums of y, dx and
  the parameter gradients."""
  params = module.init(jax.random.PRNGKey(0), x)
  dy = jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)

  @jax.jit
  def passes(params, x, dy):
    def one_pass(i, carry):
      y_sum, dx_sum, dparams_sum = carry
      factor = 1.0 + 1e-7 * i
      y, vjp = jax.vjp(module.apply, params, x * factor)
      dparams, dx = vjp(dy * factor)
      return y_sum + y, dx_sum + dx, jax.tree.map(jnp.add, dparams_sum, dparams)
    init = (jnp.zeros_like(x), jnp.zeros_like(x), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.fori_loop(0, PASSES_PER_CALL, one_pass, init)

  return lambda: passes(params, x, dy)


def _torch_passes(rows: int, features: int, epsilon: float):
  import torch  # optional: the `bench` extra

  layer = torch.nn.LayerNorm(features, eps=epsilon)
  generator = torch.Generator().manual_seed(0)
  x0 = torch.randn(rows, features, generator=generator)
  dy = torch.randn(rows, features, generator=generator)
  y_sum, dx_sum = torch.zeros(rows, features), torch.zeros(rows, features)

  def call():
    y_sum.zero_()
    dx_sum.zero_()
    for i in range(PASSES_PER_CALL):
      factor = 1.0 + 1e-7 * i
      x = (x0 * factor).requires_grad_()
      y = layer(x)
      y.backward(dy * factor)
      y_sum.add_(y.detach())
      dx_sum.add_(x.grad)
    return dx_sum

  return call


class ClosedFormLayerNorm(nn.Module):
  """LN with `fused_norms.layer_norm`'s closed-form backward pass, LayerNorm's parameters."""
  epsilon: float = layers.DEFAULT_EPSILON

  @nn.compact
  def __call__(self, x):
    scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
    bias = self.param('bias', nn.initializers.zeros, (x.shape[-1],))
    return fused_norms.layer_norm(x, scale, bias, epsilon=self.epsilon)


JAX_MODULES = {'ln_jax': layers.LayerNorm, 'flax': nn.LayerNorm, 'closed_form': ClosedFormLayerNorm}


def pass_callable(name: str, rows: int, features: int,
                  epsilon: float = layers.DEFAULT_EPSILON):
  """(call, sync): `PASSES_PER_CALL` passes of contender `name` on float32 [rows, features]."""
  if name == 'torch':
    return _torch_passes(rows, features, epsilon), lambda out: out
  x = jax.random.normal(jax.random.PRNGKey(2), (rows, features), jnp.float32)
  return _jax_passes(JAX_MODULES[name](epsilon=epsilon), x), jax.block_until_ready


def layer_norm_bytes(rows: int, features: int) -> int:
  """The bytes a fused forward+backward pass must move on float32 [rows, features]."""
  return 5 * rows * features * 4
