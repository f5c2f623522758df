"""Where a training step's time goes: XLA's operations ranked by time per step.

Traces `FusedRunner` (what `train_and_evaluate` runs) with `jax.profiler`, reads the Perfetto
trace it writes and adds up each compiled operation's duration. On the CPU the per-operation
events exist only with XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true, which must be set before
JAX starts (scripts/profile_step.py does that). Operations run on two threads can overlap, so
the column can add up to more than the step time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import tempfile
import time

import jax

from benchmarks import training

# Trace events of the runtime and of Python, not of one compiled operation.
_NOT_OPERATIONS = ('ThunkExecutor', 'PjitFunction', 'SlinkyThreadPool', 'ExecuteHelper',
                   'ExecuteReplicated', 'while', '$')


def _events(trace_dir: str) -> list[dict]:
  paths = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'), recursive=True)
  if not paths:
    raise RuntimeError(f'jax.profiler wrote no Perfetto trace under {trace_dir}')
  with gzip.open(max(paths, key=os.path.getmtime)) as f:
    trace = json.load(f)
  return trace['traceEvents'] if isinstance(trace, dict) else trace


def profile_steps(config, num_steps: int, warmup_steps: int = 20) -> dict:
  """{'ms_per_step': wall time, 'operations': [(name, ms per step, calls per step), ...]}."""
  images, labels = training.make_dataset()
  runner = training.FusedRunner(config, images, labels)
  runner.warmup(warmup_steps)
  with tempfile.TemporaryDirectory() as trace_dir:
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    steps = runner.run(num_steps)
    elapsed = time.perf_counter() - start
    jax.profiler.stop_trace()
    events = _events(trace_dir)
  total, calls = collections.Counter(), collections.Counter()
  for event in events:
    name = event.get('name', '')
    if event.get('ph') == 'X' and not name.startswith(_NOT_OPERATIONS):
      total[name] += event['dur'] / 1e3  # microseconds -> ms
      calls[name] += 1
  return {'ms_per_step': 1e3 * elapsed / steps, 'steps': steps,
          'operations': [(name, ms / steps, calls[name] / steps)
                         for name, ms in total.most_common()]}


# Operation classes by XLA's instruction names (loop fusions carry the kinds they fuse, e.g.
# 'loop_add_fusion', 'input_reduce_fusion'; XLA:CPU hands products to XNNPACK/YNNPACK as
# 'xnn_fusion' / 'ynn_fusion'): first match wins.
OP_CLASSES = (('library fusions (products and the work fused into them)',
               ('xnn', 'ynn', 'onednn')),
              ('matrix products', ('dot', 'gemm', 'convolution', 'matmul')),
              ('reductions', ('reduce',)),
              ('copies and slices', ('copy', 'slice', 'transpose', 'concatenate', 'pad',
                                     'broadcast', 'gather', 'scatter', 'bitcast')),
              ('element-wise fusions', ('fusion',)))


def by_class(operations) -> list[tuple[str, float, float]]:
  """[(class, ms per step, operations per step)] of `profile_steps`' operations, largest first."""
  total, calls = collections.Counter(), collections.Counter()
  for name, ms, per_step in operations:
    lowered = name.lower()
    kind = next((label for label, keys in OP_CLASSES if any(k in lowered for k in keys)),
                'other')
    total[kind] += ms
    calls[kind] += per_step
  return [(kind, ms, calls[kind]) for kind, ms in total.most_common()]

