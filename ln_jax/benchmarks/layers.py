"""LayerNorm forward + backward throughput in GB/s: ln_jax against flax.linen and PyTorch.

The figure counts the bytes a fused implementation cannot avoid moving: the forward pass reads x
and writes y, the backward pass reads x and dy and writes dx, so 5 * x.nbytes per call (the
parameter gradients are one row each and ignored). Higher is better; the machine's memory
bandwidth is the ceiling.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ln_jax import layers


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


ITERATIONS_PER_CALL = 10


def _jax_forward_backward(module: nn.Module, x):
  """A jitted call of `ITERATIONS_PER_CALL` forward+backward passes: (y, dparams, dx) each.

  The passes run in one compiled loop whose next input is this pass's dx and whose next output
  gradient is this y, so every output is used and every buffer is reused. Timed one pass per
  call instead, XLA:CPU would allocate fresh [rows, features] outputs and temporaries on every
  call; the operating system's page faults on that memory, not the layer, then dominate
  (tens of thousands per call at 8192 x 1000).
  """
  params = module.init(jax.random.PRNGKey(0), x)
  dy = jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype)

  @jax.jit
  def passes(params, x, dy):
    def one_pass(_, carry):
      x, dy, _ = carry
      y, vjp = jax.vjp(module.apply, params, x)
      dparams, dx = vjp(dy)
      return dx, y, dparams
    init = (x, dy, jax.tree.map(jnp.zeros_like, params))
    return jax.lax.fori_loop(0, ITERATIONS_PER_CALL, one_pass, init)

  return lambda: passes(params, x, dy)


def _torch_forward_backward(rows: int, features: int, epsilon: float):
  import torch  # optional: the `bench` extra

  layer = torch.nn.LayerNorm(features, eps=epsilon)
  generator = torch.Generator().manual_seed(0)
  x = torch.randn(rows, features, generator=generator, requires_grad=True)
  dy = torch.randn(rows, features, generator=generator)

  def call():
    x.grad = None
    layer.zero_grad(set_to_none=True)
    layer(x).backward(dy)
    return x.grad

  return call


def layer_norm_contenders(include_torch: bool) -> list[str]:
  return ['ln_jax', 'flax'] + (['torch'] if include_torch else [])


def measure_layer_norm(rows: int, features: int, contenders: list[str],
                       epsilon: float = layers.DEFAULT_EPSILON, repeats: int = 5) -> list[dict]:
  """One row per contender: seconds per forward+backward call, GB/s on float32 [rows, features]."""
  x = jax.random.normal(jax.random.PRNGKey(2), (rows, features), jnp.float32)
  nbytes = 5 * x.size * 4
  # (call, sync, forward+backward passes per call) of each contender
  calls = {
      'ln_jax': lambda: (_jax_forward_backward(layers.LayerNorm(epsilon=epsilon), x),
                         jax.block_until_ready, ITERATIONS_PER_CALL),
      'flax': lambda: (_jax_forward_backward(nn.LayerNorm(epsilon=epsilon), x),
                       jax.block_until_ready, ITERATIONS_PER_CALL),
      'torch': lambda: (_torch_forward_backward(rows, features, epsilon), lambda out: out, 1),
  }
  results = []
  for name in contenders:
    call, sync, passes = calls[name]()
    seconds = time_per_call(call, sync, repeats=repeats) / passes
    results.append({'contender': name, 'shape': [rows, features], 'seconds_per_call': seconds,
                    'gb_per_s': nbytes / seconds / 1e9})
  return results
