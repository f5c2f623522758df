"""Speed benchmark: ln_jax against its peers, each in its own process, in interleaved rounds.

  python scripts/bench.py                      # everything (about 11 minutes on 2 quiet cores,
                                               # before the draw part: several more)
  python scripts/bench.py --quick --output=/tmp/bench_quick.json   # a smoke run
  python scripts/bench.py --parts=draw                               # DRAW at the paper's size
  python scripts/bench.py --parts=draw --draw_size=reduced           # DRAW at the CPU size

Parts: `training` (the paper's MLP at batch 4 with LN: ln_jax, a hand-fused Flax lax.scan loop,
a per-step jit loop, PyTorch eager; the bandwidth bound), `cells` (LSTM, LN-LSTM, BN-LSTM, GRU,
LN-GRU, torch.nn.LSTM and torch.nn.GRU on sequential MNIST rows and pixels; at rows also the
layers on autodiff of the scan and the step-wise cells under nn.RNN; each step's matrix-product
GFLOP/s against XLA's measured matmul rate), `cell_levers` (XLA:CPU options and unrolling on the
plain LSTM's step), `layer_norm` (forward+backward GB/s of
ln_jax, flax.linen and PyTorch at 8192x1000 and 64x512), `real_run` (steps_per_s of real
scripts/train.py runs), `draw` (DRAW's training step, ln_jax and PyTorch eager, plain LSTMs and
the LN-on-c cell, with a full-epoch time on this machine and an estimated GPU step). Prints the
tables and writes everything (per-round rates, the machine, the load average) as JSON. Close
other programs first: the figures are only as steady as the machine.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging

from ln_jax import cli
from ln_jax.errors import UserError

PARTS = ('training', 'cells', 'cell_levers', 'layer_norm', 'real_run', 'draw')

_OUTPUT = flags.DEFINE_string('output', 'bench.json', 'Where to write the results as JSON.')
_QUICK = flags.DEFINE_bool('quick', False, 'Smoke run: few steps, one round, small LayerNorm '
                           'inputs, rows only (unless those flags are given).')
_STEPS = flags.DEFINE_integer(
    'steps', 2000, 'Timed MLP training steps per contender, capped at one epoch; 0: one epoch.',
    lower_bound=0)
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Interleaved timing rounds; medians are reported.',
                               lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup_steps', 20, 'Untimed steps first (compilation).',
                               lower_bound=0)
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['4'], 'MLP training batch sizes.')
_NORMS = flags.DEFINE_list('norms', ['layer'], 'Normalizers of the MLP runs.')
_CONTENDERS = flags.DEFINE_list('contenders', ['ln_jax', 'flax_scan', 'jit_loop', 'torch'],
                                'MLP training loops to compare (torch only when installed).')
_PARTS = flags.DEFINE_list('parts', list(PARTS), f'Which parts to run, of {", ".join(PARTS)}.')
_MLP_OVERRIDES = flags.DEFINE_string(
    'mlp_overrides', '', 'key=value overrides of configs/pi_mnist.py for every training run, '
    'e.g. steps_per_call=1000.')
_VARIANT = flags.DEFINE_multi_string(
    'ln_jax_variant', [], 'Config overrides (key=value,...) for an extra ln_jax contender, timed '
    'in the same rounds, e.g. fuse_weight_grad=False; repeatable.')
_LN_SHAPES = flags.DEFINE_list('ln_shapes', ['8192x1000', '64x512'],
                               'LayerNorm inputs, rows x features.')
_PEAK_GBS = flags.DEFINE_float('peak_gbs', 0.0, "The device's memory bandwidth in GB/s, to "
                               'report LayerNorm GB/s as a fraction of it (0: not reported).',
                               lower_bound=0.0)
_CELLS_BATCH = flags.DEFINE_integer('cells_batch_size', 64, 'Batch size of the recurrent runs.',
                                    lower_bound=1)
_CELLS_VARIANTS = flags.DEFINE_list('cells_variants', ['rows', 'pixels'],
                                    'configs/seq_mnist.py variants of the recurrent runs.')
_CELLS_STEPS = {'rows': 300, 'pixels': 10}  # timed steps per contender (T = 28 and 784)
_DRAW_SIZE = flags.DEFINE_enum('draw_size', 'paper', ['paper', 'reduced', 'tiny'],
                               "DRAW's sizes: the paper's (configs/draw_mnist.py), its reduced "
                               'CPU preset or its tiny one; the flags below override single sizes.')
_DRAW_SIZES = {name: flags.DEFINE_integer(f'draw_{name}', None, f"DRAW's {text} (default: "
                                          '--draw_size).', lower_bound=1)
               for name, text in (('glimpses', 'glimpses'), ('units', 'LSTM units'),
                                  ('latent', 'latent size'), ('read_n', 'read grid side'),
                                  ('write_n', 'write patch side'), ('batch_size', 'batch size'))}
_DRAW_STEPS = flags.DEFINE_integer('draw_steps', 30, 'Timed DRAW steps per contender, split '
                                   'over the rounds (about 1 s each at the paper size).',
                                   lower_bound=1)
_DRAW_NORMS = flags.DEFINE_list('draw_norms', ['none', 'layer_c'], "DRAW's LSTM cells.")
_GPU_TFLOPS = flags.DEFINE_float('gpu_tflops', 67.0, "Assumed GPU peak for DRAW's estimated GPU "
                                 'step, TFLOP/s (67: H100/H200 SXM FP32).', lower_bound=1e-3)
_GPU_KERNEL_US = flags.DEFINE_float('gpu_kernel_us', 3.0, 'Assumed latency of one dependent GPU '
                                    "kernel for DRAW's estimated step, microseconds.",
                                    lower_bound=0.0)


def _ints(values, flag: str) -> list[int]:
  try:
    out = [int(v) for v in values]
  except ValueError:
    raise UserError(f'--{flag}={",".join(values)} must be integers, e.g. 4,128') from None
  if not out or min(out) <= 0:
    raise UserError(f'--{flag} needs positive integers')
  return out


def _check_choices(values, choices, flag: str) -> None:
  unknown = [v for v in values if v not in choices]
  if unknown:
    raise UserError(f'--{flag}: unknown {", ".join(unknown)}; choose from {", ".join(choices)}')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  from ln_jax import norms
  from ln_jax.training import rundir
  from benchmarks import draw
  from benchmarks import real_run
  from benchmarks import suite
  from benchmarks import training

  batch_sizes = _ints(_BATCH_SIZES.value, 'batch_sizes')
  ln_shapes = []
  for shape in _LN_SHAPES.value:
    try:
      rows, features = (int(v) for v in shape.split('x'))
    except ValueError:
      raise UserError(f'--ln_shapes: {shape!r} is not rows x features, e.g. 8192x1000') from None
    ln_shapes.append((rows, features))
  _check_choices(_NORMS.value, norms.NORMS, 'norms')
  _check_choices(_CONTENDERS.value, suite.MLP_CONTENDERS, 'contenders')
  _check_choices(_PARTS.value, PARTS, 'parts')
  _check_choices(_CELLS_VARIANTS.value, _CELLS_STEPS, 'cells_variants')
  _check_choices(_DRAW_NORMS.value, draw.NORMS, 'draw_norms')
  output_dir = os.path.dirname(os.path.abspath(_OUTPUT.value))
  if not os.path.isdir(output_dir) or not os.access(output_dir, os.W_OK):
    raise UserError(f'cannot write --output={_OUTPUT.value}: {output_dir} is not a writable '
                    'folder; choose another path')
  configs = []  # bad keys or values fail here, before anything runs
  for overrides in [_MLP_OVERRIDES.value] + _VARIANT.value:
    for key_value in filter(None, overrides.split(',')):
      if '=' not in key_value:
        raise UserError(f'override {key_value!r} is not key=value')
    configs.append(suite.mlp_config('layer', batch_sizes[0], overrides))
  config = configs[0]  # the --mlp_overrides one

  steps, rounds, warmup = _STEPS.value, _ROUNDS.value, _WARMUP.value
  cells_steps, cells_variants = dict(_CELLS_STEPS), _CELLS_VARIANTS.value
  draw_size, draw_steps = _DRAW_SIZE.value, _DRAW_STEPS.value
  if _QUICK.value:  # smaller defaults; flags given explicitly still win
    given = {name for name in ('steps', 'rounds', 'warmup_steps', 'ln_shapes', 'cells_variants')
             if flags.FLAGS[name].present}
    steps = steps if 'steps' in given else 20
    rounds = rounds if 'rounds' in given else 1
    warmup = warmup if 'warmup_steps' in given else 2
    ln_shapes = ln_shapes if 'ln_shapes' in given else [(256, 1000), (64, 512)]
    cells_variants = cells_variants if 'cells_variants' in given else ['rows']
    cells_steps = {'rows': 4, 'pixels': 2}
    draw_size = draw_size if flags.FLAGS['draw_size'].present else 'tiny'
    draw_steps = draw_steps if flags.FLAGS['draw_steps'].present else 2
  if steps < 0 or rounds < 1 or warmup < 0:
    raise UserError('--steps and --warmup_steps must be >= 0 and --rounds >= 1')
  contenders = list(_CONTENDERS.value)
  notes = []
  has_torch = training.torch_available()
  if 'torch' in contenders and not has_torch:
    contenders.remove('torch')
  if not has_torch:
    notes.append('PyTorch is not installed (pip install ln_jax[bench]); its rows are left out')

  results = {'machine': suite.machine(), 'load_average_before': suite.load_average(),
             'options': {'steps': steps, 'rounds': rounds, 'warmup_steps': warmup,
                         'quick': _QUICK.value, 'mlp_overrides': _MLP_OVERRIDES.value,
                         'ln_jax_variants': _VARIANT.value},
             'notes': notes}
  results['model'] = '-'.join(str(w) for w in (784, *config.model.hidden_sizes,
                                                config.model.num_classes))
  results['options']['steps_per_call'] = config.steps_per_call
  if 'training' in _PARTS.value:
    logging.info('training: batch sizes %s, norms %s, contenders %s', batch_sizes,
                 _NORMS.value, contenders)
    results['training'] = suite.run_training(
        batch_sizes, _NORMS.value, contenders, steps=steps, rounds=rounds, warmup_steps=warmup,
        overrides=_MLP_OVERRIDES.value, variants=tuple(_VARIANT.value))
    results['training_ratios'] = suite.training_ratios(results['training'])
  if 'cells' in _PARTS.value:
    logging.info('recurrent cells: %s', cells_variants)
    results['cells'] = []
    # The bound's denominator: XLA's matmul rate on a large product and at the LSTM's shape.
    hidden = 128
    results['matmul'] = suite.matmul_rates(
        [(1024, 1024, 1024), (_CELLS_BATCH.value, hidden, 4 * hidden)], rounds)
    peak = max(r['gflop_per_s'] for r in results['matmul'])
    for variant in cells_variants:
      # At T = 784 a step takes ~0.5 s: the autodiff and step-wise rows are timed at T = 28.
      contenders = ['ln_jax:none', 'ln_jax:layer', 'ln_jax:batch', 'gru:none', 'gru:layer'] + (
          ['scan:none', 'scan:layer', 'scan:batch', 'step:none', 'step:layer', 'step:batch']
          if variant == 'rows' else []) + (['torch_lstm', 'torch_gru'] if has_torch else [])
      results['cells'] += suite.run_cells(
          [variant], contenders, steps=cells_steps, rounds=rounds,
          warmup_steps=warmup if variant == 'rows' else min(warmup, 2),
          batch_size=_CELLS_BATCH.value, peak_gflops=peak)
  if 'cell_levers' in _PARTS.value:
    logging.info('XLA options and unrolling on the plain LSTM (T = 28)')
    results['cell_levers'] = suite.run_cell_levers(
        'rows', steps=cells_steps['rows'], rounds=rounds, warmup_steps=warmup,
        batch_size=_CELLS_BATCH.value)
  if 'layer_norm' in _PARTS.value:
    logging.info('LayerNorm forward+backward on %s', ln_shapes)
    results['layer_norm'] = suite.run_layer_norm(
        ln_shapes, ['ln_jax', 'flax'] + (['torch'] if has_torch else []), rounds,
        _PEAK_GBS.value)
  if 'real_run' in _PARTS.value and not _QUICK.value:
    logging.info('real runs')
    results['real_run'] = [real_run.run(name) for name in real_run.REAL_RUNS]
  if 'draw' in _PARTS.value:
    sizes = draw.preset_sizes(draw_size)
    sizes.update({name: flag.value for name, flag in _DRAW_SIZES.items() if flag.value})
    logging.info('DRAW: %s', sizes)
    results['draw'] = draw.run_draw(
        _DRAW_NORMS.value, [c for c in draw.CONTENDERS if has_torch or c != 'torch'], sizes,
        steps=draw_steps, rounds=rounds, warmup_steps=min(warmup, 2),
        gpu_tflops=_GPU_TFLOPS.value, gpu_kernel_us=_GPU_KERNEL_US.value)
    load, cpus = suite.load_average(), os.cpu_count() or 1
    # The benchmark alone loads up to `cpus`; more means other programs took cores. Seen on a
    # shared machine: a reduced-size torch step took 8.0 s instead of 0.22.
    if has_torch and load and load[0] > 1.5 * cpus:
      notes.append(f'load average {load[0]} on {cpus} CPUs after the DRAW part: PyTorch\'s '
                   'OpenMP threads spin-wait for each other when other programs hold the cores, '
                   'so its DRAW rows can be many times too slow; rerun on a quiet machine')
  results['load_average_after'] = suite.load_average()

  print(suite.report(results))
  if 'draw' in results:
    print(draw.report(results['draw'], rounds))
  for note in notes:
    print(f'note: {note}')
  rundir.write_json_atomic(_OUTPUT.value, results)
  print(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  cli.run(main)
