"""How fast a training step could run if every byte it touches moved at the bandwidth it gets.

At batch size 4 a step of the paper's MLP does little arithmetic per byte (Adam reads and
writes every weight, mu and nu), so bandwidth sets its speed. The bound is XLA's own count of
the bytes one compiled `train_step` accesses, divided by the bandwidth a streaming kernel
(y = 2x + z) reaches on a working set of the size of the step's (its parameters and optimizer
state, 22 MB for the MLP: within a 32 MiB last-level cache). A 64 MiB stream measured DRAM
instead, which the cache-resident step beat (114% of that "bound"). A competitor's speed times a
target ratio far above the bound is not reachable by any implementation of the same step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ln_jax.training import step as step_lib
from benchmarks import layers

STREAM_MEGABYTES = 64  # per array; well past the last-level caches of the machines we use


def stream_gb_per_s(megabytes: float = STREAM_MEGABYTES, repeats: int = 7) -> float:
  """GB/s of y = 2x + z on float32 arrays (reads x and z, writes y over x), median of `repeats`.

  `megabytes` per array: two arrays of the size of a workload's working set measure the
  bandwidth that working set gets (from the caches where it fits), the bound's denominator.

  y is written over x (donated): a fresh output per call would measure the operating system's
  page faults on new memory instead of the bandwidth.
  """
  n = int(megabytes * 2**20) // 4
  arrays = {'x': jnp.arange(n, dtype=jnp.float32), 'z': jnp.ones(n, jnp.float32)}
  stream = jax.jit(lambda x, z: 2.0 * x + z, donate_argnums=(0,))

  def call():
    arrays['x'] = stream(arrays['x'], arrays['z'])
    return arrays['x']

  seconds = layers.time_per_call(call, jax.block_until_ready, repeats=repeats)
  return 3 * 4 * n / seconds / 1e9


def bytes_per_step(state, batch) -> float:
  """XLA's count of the bytes one compiled `step.train_step(state, batch)` accesses."""
  compiled = jax.jit(step_lib.train_step, donate_argnums=(0,)).lower(state, batch).compile()
  return float(cost_analysis(compiled)['bytes accessed'])


def cost_analysis(compiled) -> dict:
  """XLA's cost analysis of a compiled program: 'flops', 'bytes accessed', ... (a loop's body
  counts once, whatever its trip count)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0]
  return analysis
