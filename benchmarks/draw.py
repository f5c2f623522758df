"""DRAW's training step: ln_jax's compiled step against PyTorch eager, and a GPU estimate.

Contenders, each in its own process (`isolated`), train DRAW at configs/draw_mnist.py's sizes
(the paper's, its `reduced` preset, or flags) with Adam at batch 128 on binary images:
- 'ln_jax:<norm>': what `train_and_evaluate` runs for `config.task='draw'`: `step.train_steps`
  over the images on the device (`training.FusedRunner`), one call per timed window.
- 'torch:<norm>': `draw_torch.Draw`, eager: forward, backward, the config's gradient clipping
  and Adam on one fixed batch.
Norms: 'none' (the baseline) and 'layer_c' (the paper's DRAW cell, LN of the cell state only).

Reported per contender: ms per step (median over interleaved rounds), the step time over the
same contender's 'none' row, and a full-scale epoch on this machine (`EPOCH_IMAGES` images);
per norm: torch's step time over ln_jax's, paired by round, with its spread. The GPU figure is an
estimate, not a measurement: max(FLOPs / peak, glimpses x kernels per glimpse x latency per
kernel), with XLA's FLOPs and kernel count of the step with its glimpse loop unrolled
(`step_cost`; per glimpse from 2 and 3 glimpses, the first glimpse's zero states aside).
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from benchmarks import isolated
from benchmarks import load_config
from benchmarks import step_cost
from benchmarks import training

CONFIG = os.path.join('configs', 'draw_mnist.py')
NORMS = ('none', 'layer_c')
CONTENDERS = ('ln_jax', 'torch')
# size name: config key (the LSTMs' units are one size: the encoder's and decoder's)
SIZE_KEYS = {'glimpses': 'model.glimpses', 'units': 'model.encoder_units',
             'latent': 'model.latent_size', 'read_n': 'model.read_n', 'write_n': 'model.write_n',
             'batch_size': 'batch_size'}
EPOCH_IMAGES = 50_000  # binarized MNIST's training split
WINDOWS_PER_EPOCH = 4  # the images ln_jax cycles through: this many windows of steps


def preset_sizes(preset: str) -> dict:
  """{size name: value} of configs/draw_mnist.py: `paper` its defaults, else a preset of it
  (`reduced`, `tiny`)."""
  config = load_config(CONFIG, None if preset == 'paper' else preset)
  return {name: _get(config, key) for name, key in SIZE_KEYS.items()}


def _get(config, dotted: str):
  for part in dotted.split('.'):
    config = config[part]
  return config


def overrides(norm: str, sizes: dict, steps_per_call: int) -> str:
  """The config variant of one contender: its norm, the sizes and the fused call's length."""
  pairs = [f'norm={norm}', f'steps_per_call={steps_per_call}',
           f"model.decoder_units={sizes['units']}"]
  return ','.join(pairs + [f'{SIZE_KEYS[name]}={value}' for name, value in sizes.items()])


def binary_images(num_examples: int, seed: int = 0) -> np.ndarray:
  """uint8 [N, 784] of 0/1, about 13% ones (binarized MNIST's share; the speed ignores it)."""
  return (np.random.default_rng(seed).random((num_examples, 784)) < 0.13).astype(np.uint8)


def parameter_count(config) -> int:
  """The parameters of ln_jax's DRAW for `config` (shapes only: nothing is run)."""
  from ln_jax import tasks
  task = tasks.load_task(config)
  model = task.create_model(config)
  key = jax.random.PRNGKey(0)
  shapes = jax.eval_shape(lambda x: model.init({'params': key, 'latent': key}, x),
                          np.zeros((1, 784), np.float32))
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes['params']))


def step_costs(config, images) -> dict:
  """XLA's FLOPs and kernels of one training step: per glimpse (3 glimpses' minus 2's) and the
  whole step at `config`'s glimpses, extrapolated (the glimpses are the same program)."""
  costs = {}
  for glimpses in (2, 3):
    resized = config.copy_and_resolve_references()
    resized.model.glimpses = glimpses
    state = training.new_state(resized, images)
    costs[glimpses] = step_cost.train_step_cost(state, {'image': images[:config.batch_size]})
  extra = config.model.glimpses - 2
  out = {}
  for name in ('flops', 'kernels'):
    per_glimpse = costs[3][name] - costs[2][name]
    out[f'{name}_per_glimpse'] = per_glimpse
    out[f'{name}_per_step'] = costs[2][name] + extra * per_glimpse
  return out


def torch_runner(config):
  """`draw_torch.TorchDrawRunner` of `config`'s sizes, norm, learning rate and clipping."""
  from benchmarks import draw_torch
  m = config.model
  if m.encoder_units != m.decoder_units or not m.attention:
    raise ValueError('the PyTorch DRAW has one LSTM size and attention')
  return draw_torch.TorchDrawRunner(
      glimpses=m.glimpses, units=m.encoder_units, latent=m.latent_size, read_n=m.read_n,
      write_n=m.write_n, norm=config.norm, batch_size=config.batch_size,
      learning_rate=config.learning_rate, grad_clip_norm=config.grad_clip_norm, seed=config.seed)


def build(spec: dict):
  """(run(n) -> steps, setup info) of a 'draw' spec, in the worker process."""
  config = load_config(CONFIG, spec['overrides'])
  if spec['contender'] == 'torch':
    from benchmarks import draw_torch
    runner = torch_runner(config)
    info = {'parameters': draw_torch.num_parameters(runner.model)}
  else:
    images = binary_images(spec['num_examples'])
    runner = training.FusedRunner(config, images)
    info = {'parameters': parameter_count(config)}
    if spec.get('cost'):
      info.update(step_costs(config, images))
  runner.warmup(spec['warmup_steps'])
  return runner.run, info


def run_draw(norms, contenders, sizes: dict, *, steps: int, rounds: int, gpu_tflops: float,
             gpu_kernel_us: float, warmup_steps: int = 2) -> dict:
  """Every (norm, contender) in its own process, `steps / rounds` steps per round; the rows,
  the paired ratios and the GPU estimate (see the module docstring) for an assumed peak of
  `gpu_tflops` and `gpu_kernel_us` per dependent kernel."""
  window = max(1, steps // rounds)
  specs = {f'{contender}:{norm}': {
      'kind': 'draw', 'contender': contender, 'overrides': overrides(norm, sizes, window),
      'num_examples': WINDOWS_PER_EPOCH * window * sizes['batch_size'],
      'warmup_steps': warmup_steps, 'cost': contender == 'ln_jax'}
      for norm in norms for contender in contenders}
  measured = isolated.interleave(specs, window, rounds)
  epoch_steps = math.ceil(EPOCH_IMAGES / sizes['batch_size'])
  rows = []
  for name, result in measured.items():
    contender, norm = name.split(':')
    row = {'contender': contender, 'norm': norm, 'ms_per_step': 1e3 / result['median'],
           'steps_per_s': result['median'], 'rounds': result['rates'],
           'cpu_per_wall': result['cpu_per_wall'], 'parameters': result['info']['parameters'],
           'epoch_s': epoch_steps / result['median']}
    row.update({k: v for k, v in result['info'].items() if k.endswith(('_step', '_glimpse'))})
    if 'flops_per_step' in row:
      row['cpu_gflop_per_s'] = row['flops_per_step'] * result['median'] / 1e9
    plain = measured.get(f'{contender}:none')
    if norm != 'none' and plain is not None:  # this norm's step time over the plain LSTM's
      pair = isolated.paired(plain['rates'], result['rates'])
      row['vs_none'], row['vs_none_spread'] = pair['median'], f"{pair['min']:.2f}-{pair['max']:.2f}"
    ours = measured.get(f'ln_jax:{norm}')
    if contender != 'ln_jax' and ours is not None:  # its step time over ln_jax's
      pair = isolated.paired(ours['rates'], result['rates'])
      row['over_ln_jax'], row['spread'] = pair['median'], f"{pair['min']:.2f}-{pair['max']:.2f}"
    rows.append(row)
  assumptions = {'gpu_tflops': gpu_tflops, 'gpu_kernel_us': gpu_kernel_us,
                 'epoch_steps': epoch_steps,
                 'gpu_estimate': 'an estimate from assumed figures, not a measurement'}
  return {'sizes': dict(sizes), 'steps_per_round': window, 'rows': rows,
          'assumptions': assumptions,
          'gpu_estimate': [gpu_estimate(r, sizes['glimpses'], epoch_steps, gpu_tflops,
                                        gpu_kernel_us) for r in rows if 'flops_per_step' in r]}


def gpu_estimate(row: dict, glimpses: int, epoch_steps: int, tflops: float,
                 kernel_us: float) -> dict:
  """An estimated (not measured) GPU step: the larger of the FLOPs at the peak rate and the
  glimpses' sequential kernels at `kernel_us` each."""
  compute_ms = row['flops_per_step'] / (tflops * 1e12) * 1e3
  latency_ms = glimpses * row['kernels_per_glimpse'] * kernel_us / 1e3
  step_ms = max(compute_ms, latency_ms)
  return {'norm': row['norm'], 'gflop_per_step': row['flops_per_step'] / 1e9,
          'kernels_per_glimpse': row['kernels_per_glimpse'], 'compute_ms': compute_ms,
          'latency_ms': latency_ms, 'bound': 'compute' if compute_ms >= latency_ms else 'latency',
          'step_ms': step_ms, 'epoch_s': epoch_steps * step_ms / 1e3}


def report(draw: dict, rounds: int) -> str:
  """The DRAW tables of `run_draw`'s results."""
  from benchmarks import suite
  s, a = draw['sizes'], draw['assumptions']
  rows = [dict(r, over_text=f"{r['over_ln_jax']:.2f} ({r['spread']})" if 'over_ln_jax' in r
               else '', vs_none_text=f"{r['vs_none']:.2f} ({r['vs_none_spread']})"
               if 'vs_none' in r else '') for r in draw['rows']]
  parts = [f"\nDRAW training steps: {s['glimpses']} glimpses, LSTMs of {s['units']} units, "
           f"{s['latent']} latents, read {s['read_n']}x{s['read_n']}, write "
           f"{s['write_n']}x{s['write_n']}, batch {s['batch_size']}, Adam (each in its own "
           f"process, median of {rounds} interleaved rounds of {draw['steps_per_round']} steps; "
           f"epoch: {a['epoch_steps']} steps of {EPOCH_IMAGES:,} images on this machine)",
           suite.table(rows, [('contender', 'contender', 's'), ('norm', 'norm', 's'),
                              ('ms/step', 'ms_per_step', '.1f'),
                              ('torch / ln_jax (spread)', 'over_text', 's'),
                              ('x none (spread)', 'vs_none_text', 's'),
                              ('epoch s', 'epoch_s', '.0f'), ('params', 'parameters', 'd'),
                              ('GFLOP/s', 'cpu_gflop_per_s', '.1f')])]
  if draw['gpu_estimate']:
    parts += [f"\nGPU estimate, NOT a measurement: step = max(FLOPs / {a['gpu_tflops']:g} "
              'TFLOP/s (assumed peak, --gpu_tflops), glimpses x kernels per glimpse x '
              f"{a['gpu_kernel_us']:g} us (assumed latency of one dependent kernel, "
              "--gpu_kernel_us)); FLOPs and kernels: XLA:CPU's count of the step with its loop "
              'unrolled (XLA:GPU fuses more: fewer kernels)',
              suite.table(draw['gpu_estimate'], [
                  ('norm', 'norm', 's'), ('GFLOP/step', 'gflop_per_step', '.1f'),
                  ('kernels/glimpse', 'kernels_per_glimpse', '.0f'),
                  ('compute ms', 'compute_ms', '.2f'), ('latency ms', 'latency_ms', '.2f'),
                  ('bound', 'bound', 's'), ('est. ms/step', 'step_ms', '.2f'),
                  ('est. epoch s', 'epoch_s', '.1f')])]
  return '\n'.join(parts)
