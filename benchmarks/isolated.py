"""Each contender in its own process, timed in interleaved rounds.

PyTorch's and XLA's thread pools in one process compete for the cores (an in-process PyTorch
contender swung from 7 to 200 steps/s within one run), and one library's allocator or caches
can slow the next. So every contender here is a worker process of its own
(`python -m benchmarks.isolated SPEC`): it builds and compiles its workload, says it is
ready, then runs one timed window per request from the parent and idles (blocked on a pipe,
using no CPU) while the others run theirs. Rounds interleave the contenders, so a load change
on a shared machine hits each of them; ratios pair the windows of the same round.

A spec is a dict: {'kind': 'mlp' | 'cell' | 'layer_norm' | 'draw', 'contender': ..., ...}; a
window answers {'units': work done, 'seconds': wall time, 'cpu_seconds': the worker's CPU time}.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from benchmarks import REPO_ROOT

PAUSE_S = 0.3  # between windows: spinning OpenMP/XLA threads of the last worker go to sleep


class Worker:
  """A contender's process; `window(n)` runs n units of its work and returns the timings."""

  def __init__(self, spec: dict):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, (REPO_ROOT, os.environ.get('PYTHONPATH')))))
    if spec.get('xla_flags'):  # an XLA option under test, for this contender only
      env['XLA_FLAGS'] = ' '.join(filter(None, (env.get('XLA_FLAGS'), spec['xla_flags'])))
    self.spec = spec
    self._process = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.isolated', json.dumps(spec)], cwd=REPO_ROOT,
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()  # blocks until built and warmed up

  def _read(self) -> dict:
    line = self._process.stdout.readline()
    if not line:
      code = self._process.wait()
      raise RuntimeError(f'benchmark worker {self.spec} exited with status {code}')
    return json.loads(line)

  def window(self, units: int) -> dict:
    self._process.stdin.write(f'{units}\n')
    self._process.stdin.flush()
    return self._read()

  def close(self) -> None:
    if self._process.poll() is None:
      self._process.stdin.close()
      self._process.wait(timeout=60)


def interleave(specs: dict, units: int, rounds: int) -> dict:
  """{name: {'rates': units/s per round, 'cpu_per_wall': [...], 'info': worker's setup info}}.

  Workers start one at a time (a start compiles, which would disturb a running window), then
  each round runs every worker's window in turn.
  """
  workers, out = {}, {}
  try:
    for name, spec in specs.items():
      workers[name] = Worker(spec)
      out[name] = {'rates': [], 'cpu_per_wall': [], 'info': workers[name].info}
    for _ in range(rounds):
      for name, worker in workers.items():
        time.sleep(PAUSE_S)
        result = worker.window(units if isinstance(units, int) else units[name])
        out[name]['rates'].append(result['units'] / result['seconds'])
        out[name]['cpu_per_wall'].append(result['cpu_seconds'] / result['seconds'])
  finally:
    for worker in workers.values():
      worker.close()
  for result in out.values():
    result['median'] = statistics.median(result['rates'])
  return out


def paired(a: list[float], b: list[float]) -> dict:
  """a / b per round: {'median', 'min', 'max'} (the spread says how steady the machine was)."""
  ratios = [x / y for x, y in zip(a, b)]
  return {'median': statistics.median(ratios), 'min': min(ratios), 'max': max(ratios)}


def _build(spec: dict):
  """(run(n) -> units done, setup info) of a spec, in this (worker) process."""
  kind = spec['kind']
  if kind == 'layer_norm':
    from benchmarks import layers
    call, sync = layers.pass_callable(spec['contender'], spec['rows'], spec['features'])
    sync(call())

    def run(n):
      for _ in range(n):
        out = call()
      sync(out)
      return n * layers.PASSES_PER_CALL
    return run, {}
  if kind == 'draw':
    from benchmarks import draw
    return draw.build(spec)
  if kind == 'matmul':  # XLA's float32 [m, k] x [k, n] product: the cores' matmul rate
    from benchmarks import layers
    call, sync = layers.matmul_callable(spec['m'], spec['k'], spec['n'])
    sync(call())

    def run(n):
      done = 0
      while done < n:
        out = call()
        done += out[0]
      sync(out)
      return done
    return run, {}
  from benchmarks import load_config, peers, training
  if 'lstm_kernel' in spec:  # which recurrent layers use the hand-written backward pass
    from ln_jax.kernels import lstm_kernel
    lstm_kernel.FUSED_KINDS = tuple(spec['lstm_kernel'])
  if 'lstm_unroll' in spec:  # steps per iteration of the recurrent loops
    from ln_jax.kernels import lstm_kernel
    lstm_kernel.UNROLL = spec['lstm_unroll']
  images, labels = training.make_dataset(spec.get('num_examples', training.NUM_TRAIN))
  config = load_config(spec['config'], spec['overrides'])
  runners = dict(training.RUNNERS, flax_scan=peers.FlaxScanRunner,
                 torch_lstm=peers.TorchLSTMRunner)
  runner = runners[spec['contender']](config, images, labels)
  runner.warmup(spec.get('warmup_steps', 20))
  info = {}
  if spec.get('bound') and hasattr(runner, 'bytes_per_step'):
    from benchmarks import roofline
    info['bytes_per_step'] = runner.bytes_per_step()
    info['state_bytes'] = runner.state_bytes()
    info['stream_gb_per_s'] = roofline.stream_gb_per_s(
        megabytes=max(1, info['state_bytes'] / 3 / 2**20))
  return runner.run, info


def _serve(spec: dict) -> None:
  """The worker's loop; anything the libraries print goes to stderr, off the answer pipe."""
  answers = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)
  run, info = _build(spec)
  print(json.dumps(info), file=answers, flush=True)
  for line in sys.stdin:
    start, cpu_start = time.perf_counter(), time.process_time()
    units = run(int(line))
    print(json.dumps({'units': units, 'seconds': time.perf_counter() - start,
                      'cpu_seconds': time.process_time() - cpu_start}), file=answers, flush=True)


if __name__ == '__main__':
  _serve(json.loads(sys.argv[1]))
