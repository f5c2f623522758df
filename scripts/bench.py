"""Speed benchmark: ln_jax training against a per-step-jit loop and PyTorch, LayerNorm GB/s, cells.

  python scripts/bench.py                      # the full benchmark, JSON to bench.json
  python scripts/bench.py --quick --output=/tmp/bench_quick.json   # a smoke run, a minute or two

Prints the tables and writes everything (per-round rates, the machine, the load average) as JSON.
Close other programs first: the figures are only as steady as the machine.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from absl import logging

from ln_jax import cli
from ln_jax.errors import UserError

PARTS = ('training', 'layer_norm', 'cells')

_OUTPUT = flags.DEFINE_string('output', 'bench.json', 'Where to write the results as JSON.')
_QUICK = flags.DEFINE_bool('quick', False, 'Smoke run: 20 steps, one round, a small LayerNorm '
                           'input (unless those flags are given).')
_STEPS = flags.DEFINE_integer(
    'steps', 3000, 'Timed training steps per contender, capped at one epoch (429 steps at '
    'batch 128); 0: one whole epoch (13,750 steps at batch 4).', lower_bound=0)
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Interleaved timing rounds; the median is reported.',
                               lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup_steps', 20, 'Untimed steps first (compilation).',
                               lower_bound=0)
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['4', '128'], 'Training batch sizes.')
_NORMS = flags.DEFINE_list('norms', ['layer', 'batch', 'none'], 'Normalizers to train.')
_CONTENDERS = flags.DEFINE_list('contenders', ['ln_jax', 'jit_loop', 'torch'],
                                'Training loops to compare (torch only when installed).')
_PARTS = flags.DEFINE_list('parts', list(PARTS), f'Which parts to run, of {", ".join(PARTS)}.')
_MLP_OVERRIDES = flags.DEFINE_string(
    'mlp_overrides', '', 'key=value overrides of configs/pi_mnist.py for every training run, '
    'e.g. steps_per_call=1000.')
_VARIANT = flags.DEFINE_multi_string(
    'ln_jax_variant', [], 'Config overrides (key=value,...) for an extra ln_jax contender, timed '
    'in the same rounds, e.g. fuse_weight_grad=False; repeatable.')
_LN_SHAPE = flags.DEFINE_list('ln_shape', ['8192', '1000'], 'LayerNorm input rows,features.')
_PEAK_GBS = flags.DEFINE_float('peak_gbs', 0.0, "The device's memory bandwidth in GB/s, to "
                               'report LayerNorm GB/s as a fraction of it (0: not reported).',
                               lower_bound=0.0)
_CELLS_BATCH = flags.DEFINE_integer('cells_batch_size', 64, 'Batch size of the recurrent runs.',
                                    lower_bound=1)
_CELLS_VARIANT = flags.DEFINE_string('cells_variant', 'rows', 'configs/seq_mnist.py variant.')


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
  from ln_jax import layers
  from ln_jax.training import rundir
  from ln_jax.benchmarks import suite
  from ln_jax.benchmarks import training

  batch_sizes = _ints(_BATCH_SIZES.value, 'batch_sizes')
  ln_shape = _ints(_LN_SHAPE.value, 'ln_shape')
  if len(ln_shape) != 2:
    raise UserError('--ln_shape needs two integers, rows,features (e.g. 8192,1000)')
  rows, features = ln_shape
  _check_choices(_NORMS.value, layers.NORMS, 'norms')
  _check_choices(_CONTENDERS.value, training.RUNNERS, 'contenders')
  _check_choices(_PARTS.value, PARTS, 'parts')
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

  steps, rounds, warmup, repeats = _STEPS.value, _ROUNDS.value, _WARMUP.value, 5
  if _QUICK.value:  # smaller defaults; flags given explicitly still win
    given = {name for name in ('steps', 'rounds', 'warmup_steps', 'ln_shape')
             if flags.FLAGS[name].present}
    steps = steps if 'steps' in given else 20
    rounds = rounds if 'rounds' in given else 1
    warmup = warmup if 'warmup_steps' in given else 2
    rows, features = (rows, features) if 'ln_shape' in given else (256, 1000)
    repeats = 2
  if steps < 0 or rounds < 1 or warmup < 0:
    raise UserError('--steps and --warmup_steps must be >= 0 and --rounds >= 1')
  contenders = list(_CONTENDERS.value)
  notes = []
  if 'torch' in contenders and not training.torch_available():
    contenders.remove('torch')
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
  if 'layer_norm' in _PARTS.value:
    logging.info('LayerNorm forward+backward on [%d, %d]', rows, features)
    results['layer_norm'] = suite.run_layer_norm(rows, features, 'torch' in contenders,
                                                 repeats, _PEAK_GBS.value)
  if 'cells' in _PARTS.value:
    logging.info('recurrent cells')
    results['cells'] = suite.run_cells(
        _CELLS_BATCH.value, steps=min(steps, 300) if steps else 300, rounds=rounds,
        warmup_steps=warmup, variant=_CELLS_VARIANT.value)
  results['load_average_after'] = suite.load_average()

  print(suite.report(results))
  for note in notes:
    print(f'note: {note}')
  rundir.write_json_atomic(_OUTPUT.value, results)
  print(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  cli.run(main)
