"""The benchmark suite: runs the parts, checks the speed targets, formats tables and the JSON."""

from __future__ import annotations

import os
import platform


from ln_jax.training import rundir
from benchmarks import isolated
from benchmarks import layers
from benchmarks import load_config
from benchmarks import training

PI_MNIST = os.path.join('configs', 'pi_mnist.py')
SEQ_MNIST = os.path.join('configs', 'seq_mnist.py')
# (batch size, competitor, least ln_jax / competitor steps/s ratio) the project aims for.
SPEED_TARGETS = ((4, 'flax_scan', 0.9), (4, 'jit_loop', 1.2), (128, 'jit_loop', 1.0))
NORM_PARITY = 0.15  # BN and no-norm runs within 15% of LN's speed
PARITY_NORMS = ('batch', 'none')
# Recurrent step time over the plain LSTM's that the normalized cells aim for.
CELL_TARGETS = {'layer': 1.25, 'batch': 1.5}
MLP_CONTENDERS = ('ln_jax', 'flax_scan', 'jit_loop', 'torch')
MLP_PEER_NORMS = {'torch': training.TorchRunner.NORMS, 'flax_scan': ('layer', 'none')}


def machine() -> dict:
  info = dict(rundir.device_info(), cpu=_cpu_model(), cpu_count=os.cpu_count(),
              python=platform.python_version(), versions=rundir.package_versions())
  try:
    import torch
    info['versions']['torch'] = torch.__version__
    info['torch_threads'] = torch.get_num_threads()
  except ImportError:
    pass
  return info


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def mlp_config(norm: str, batch_size: int, overrides: str = ''):
  arg = ','.join(a for a in (f'norm={norm}', f'batch_size={batch_size}', overrides) if a)
  return load_config(PI_MNIST, arg)


def run_training(batch_sizes, norms, contenders, *, steps: int, rounds: int, warmup_steps: int,
                 overrides: str = '', num_examples: int = training.NUM_TRAIN,
                 variants: tuple[str, ...] = ()) -> list[dict]:
  """Steps/s of every (contender, norm) at each batch size, each contender in its own process.

  The contenders of one (batch size, norm) run in interleaved rounds of about `steps / rounds`
  steps each (min(`steps`, one epoch); `steps=0`: one epoch). Each of `variants` (config
  overrides, 'key=value,...') adds an ln_jax contender named 'ln_jax[<variant>]'. ln_jax's row
  has the bound: XLA's bytes per step at the bandwidth of a working set of the step's size.
  """
  rows = []
  for batch_size in batch_sizes:
    for norm in norms:
      specs = {}
      names = [(c, '') for c in contenders] + [(f'ln_jax[{v}]', v) for v in variants]
      for name, variant in names:
        contender = 'ln_jax' if variant else name
        if norm not in MLP_PEER_NORMS.get(contender, (norm,)):
          continue  # a peer without this normalizer
        arg = ','.join(filter(None, (f'norm={norm}', f'batch_size={batch_size}', overrides,
                                     variant)))
        specs[name] = {'kind': 'mlp', 'contender': contender, 'config': PI_MNIST,
                       'overrides': arg, 'num_examples': num_examples,
                       'warmup_steps': warmup_steps, 'bound': name == 'ln_jax'}
      total = min(steps, num_examples // batch_size) if steps else num_examples // batch_size
      measured = isolated.interleave(specs, max(1, total // rounds), rounds)
      for name, result in measured.items():
        row = {'batch_size': batch_size, 'norm': norm, 'contender': name,
               'steps_per_s': result['median'],
               'examples_per_s': result['median'] * batch_size,
               'rounds': result['rates'], 'cpu_per_wall': result['cpu_per_wall']}
        info = result['info']
        if 'bytes_per_step' in info:
          row.update(info)
          row['bound_steps_per_s'] = info['stream_gb_per_s'] * 1e9 / info['bytes_per_step']
          row['of_bound'] = row['steps_per_s'] / row['bound_steps_per_s']
        rows.append(row)
  return rows


def _paired_ratio(a: dict, b: dict) -> float:
  return _paired(a, b)['median']


def _paired(a: dict, b: dict) -> dict:
  """a's speed over b's: the median over rounds of the ratio within each round where both rows
  have per-round rates (their windows ran back to back, so a load change on a shared machine
  hits both), else the ratio of the medians."""
  if a.get('rounds') and b.get('rounds') and len(a['rounds']) == len(b['rounds']):
    return isolated.paired(a['rounds'], b['rounds'])
  ratio = a['steps_per_s'] / b['steps_per_s']
  return {'median': ratio, 'min': ratio, 'max': ratio}


def training_ratios(rows: list[dict]) -> list[dict]:
  """ln_jax against each competitor, and each norm against LN, with the targets where set."""
  row_of = {(r['batch_size'], r['norm'], r['contender']): r for r in rows}
  rate = {key: r['steps_per_s'] for key, r in row_of.items()}
  bound = {(r['batch_size'], r['norm']): r['bound_steps_per_s'] for r in rows
           if r['contender'] == 'ln_jax' and 'bound_steps_per_s' in r}
  targets = {(b, c): t for b, c, t in SPEED_TARGETS}
  out = []
  for (batch_size, norm, name), value in sorted(rate.items()):
    if name == 'ln_jax':
      continue
    ours = rate.get((batch_size, norm, 'ln_jax'))
    if ours is None:
      continue
    target = targets.get((batch_size, name))
    pair = _paired(row_of[(batch_size, norm, 'ln_jax')], row_of[(batch_size, norm, name)])
    ratio = pair['median']
    out.append({'what': f'ln_jax / {name}', 'batch_size': batch_size, 'norm': norm,
                'ratio': ratio, 'spread': f"{pair['min']:.2f}-{pair['max']:.2f}",
                'target': f'>= {target}' if target else None,
                'met': None if target is None else ratio >= target})
    if target and (batch_size, norm) in bound:  # could any step of these bytes reach it?
      out.append({'what': f'bound / {name}', 'batch_size': batch_size, 'norm': norm,
                  'ratio': bound[(batch_size, norm)] / value, 'target': None, 'met': None})
  for (batch_size, norm, name), value in sorted(rate.items()):
    reference = rate.get((batch_size, 'layer', name))
    if norm == 'layer' or reference is None or name != 'ln_jax':
      continue
    ratio = _paired_ratio(row_of[(batch_size, norm, name)], row_of[(batch_size, 'layer', name)])
    targeted = norm in PARITY_NORMS
    out.append({'what': f'{norm} / layer (ln_jax)', 'batch_size': batch_size, 'norm': norm,
                'ratio': ratio, 'target': f'within {NORM_PARITY:.0%}' if targeted else None,
                'met': abs(ratio - 1.0) <= NORM_PARITY if targeted else None})
  return out


def run_layer_norm(shapes, contenders, rounds: int, peak_gbs: float = 0.0) -> list[dict]:
  """GB/s of each contender's forward+backward at each [rows, features] shape, own processes."""
  out = []
  for rows, features in shapes:
    size = rows * features
    calls = max(2, min(1000, int(2e7 / size)))  # about half a second at 10 GB/s
    specs = {name: {'kind': 'layer_norm', 'contender': name, 'rows': rows, 'features': features}
             for name in contenders}
    measured = isolated.interleave(specs, calls, rounds)
    nbytes = layers.layer_norm_bytes(rows, features)
    for name, result in measured.items():
      row = {'contender': name, 'shape': [rows, features], 'rounds': result['rates'],
             'seconds_per_pass': 1.0 / result['median'],
             'gb_per_s': result['median'] * nbytes / 1e9, 'cpu_per_wall': result['cpu_per_wall']}
      if name != 'ln_jax' and 'ln_jax' in measured:
        pair = isolated.paired(measured['ln_jax']['rates'], result['rates'])
        row['ln_jax_over_this'] = pair['median']
        row['spread'] = f"{pair['min']:.2f}-{pair['max']:.2f}"
      if peak_gbs > 0:
        row['fraction_of_peak'] = row['gb_per_s'] / peak_gbs
      out.append(row)
  return out


# Contenders of the recurrent part: '<runner>:<norm>'. ln_jax: the library's layer (the LSTM
# kernel where it applies); scan: the same layer on autodiff of cells' lax.scan; step: nn.RNN
# over the step-wise cells (model.step_wise); gru: ln_jax's GRU layer; torch_lstm / torch_gru.
CELL_RUNNERS = {'ln_jax': '', 'scan': '', 'step': 'model.step_wise=True', 'gru': 'model.cell=gru'}
STEP_WISE_TARGET = 1.3  # step-wise cells' step time over the whole-sequence layer's


def lstm_step_flops(config, batch_size: int) -> float:
  """Matrix-product FLOPs of one training step of the recurrent classifier: per time step the
  forward W_x x and W_h h, the backward dh = dz W_h^T and the weight gradients (no gradient of
  the input itself): 2 B G H (3 H + 2 D), G gate blocks of H units, D inputs per step."""
  m = config.model
  gates = {'lstm': 4, 'gru': 3, 'rnn': 1}[m.cell]
  steps = 784 // m.pixels_per_step
  return steps * 2.0 * batch_size * gates * m.hidden_size * (
      3 * m.hidden_size + 2 * m.pixels_per_step) * m.num_layers


def matmul_rates(shapes, rounds: int) -> list[dict]:
  """XLA's float32 matmul GFLOP/s at each (m, k, n), each shape in its own process."""
  specs = {f'{m}x{k}x{n}': {'kind': 'matmul', 'm': m, 'k': k, 'n': n} for m, k, n in shapes}
  units = {name: max(10, int(2e10 / (2 * m * k * n))) for name, (m, k, n)
           in zip(specs, shapes)}  # ~20 GFLOP a round: a second or so
  measured = isolated.interleave(specs, units, rounds)
  return [{'shape': name, 'gflop_per_s': result['median'] * 2 * m * k * n / 1e9,
           'rounds': result['rates']}
          for (name, result), (m, k, n) in zip(measured.items(), shapes)]


def run_cells(variants, contenders, *, steps: dict, rounds: int, warmup_steps: int,
              batch_size: int = 64, extra: str = '', num_examples: int = 6400,
              peak_gflops: float = 0.0) -> list[dict]:
  """Training steps/s of the recurrent classifier for each contender (`CELL_RUNNERS`), each
  in its own process; step times relative to ln_jax's plain LSTM ('x plain'), the step-wise
  cells' also relative to the whole-sequence layer of the same norm ('x sequence'), and the
  matrix-product GFLOP/s each reaches (`lstm_step_flops`), as a fraction of `peak_gflops`."""
  out = []
  for variant in variants:
    specs = {}
    for name in contenders:
      runner, _, norm = name.partition(':')
      norm = norm or 'none'
      arg = ','.join(filter(None, (variant, f'norm={norm}', f'batch_size={batch_size}',
                                   CELL_RUNNERS.get(runner, ''),
                                   'model.cell=gru' if runner == 'torch_gru' else '', extra)))
      specs[name] = {'kind': 'cell',
                     'contender': 'torch_lstm' if runner.startswith('torch') else 'ln_jax',
                     'config': SEQ_MNIST, 'overrides': arg, 'num_examples': num_examples,
                     'warmup_steps': warmup_steps}
      if runner == 'scan':  # ln_jax with every layer on autodiff of cells' lax.scan
        specs[name]['lstm_kernel'] = []
    measured = isolated.interleave(specs, max(1, steps[variant] // rounds), rounds)
    plain = measured.get('ln_jax:none')
    for name, result in measured.items():
      runner, _, norm = name.partition(':')
      flops = lstm_step_flops(load_config(SEQ_MNIST, specs[name]['overrides']), batch_size)
      row = {'variant': variant, 'contender': name, 'batch_size': batch_size,
             'steps_per_s': result['median'], 'ms_per_step': 1e3 / result['median'],
             'gflop_per_s': flops * result['median'] / 1e9,
             'rounds': result['rates'], 'cpu_per_wall': result['cpu_per_wall']}
      if peak_gflops > 0:
        row['of_peak'] = row['gflop_per_s'] / peak_gflops
      if plain is not None and name != 'ln_jax:none':
        pair = isolated.paired(plain['rates'], result['rates'])  # step time over the plain's
        row['vs_plain'] = pair['median']
        row['spread'] = f"{pair['min']:.2f}-{pair['max']:.2f}"
        if runner == 'ln_jax' and norm in CELL_TARGETS:
          row['target'] = f'<= {CELL_TARGETS[norm]}'
          row['met'] = pair['median'] <= CELL_TARGETS[norm]
        elif name == 'torch_lstm':  # torch's step time over ours: ours no slower
          row['target'] = '>= 1.0'
          row['met'] = pair['median'] >= 1.0
      sequence = measured.get(f'ln_jax:{norm or "none"}')
      if runner == 'step' and sequence is not None:
        pair = isolated.paired(sequence['rates'], result['rates'])
        row['vs_sequence'] = pair['median']
        row['spread'] = f"{pair['min']:.2f}-{pair['max']:.2f}"
        row['target'] = f'<= {STEP_WISE_TARGET} x sequence'
        row['met'] = pair['median'] <= STEP_WISE_TARGET
      ours = measured.get({'torch_lstm': 'ln_jax:none', 'torch_gru': 'gru:none'}.get(name, ''))
      if ours is not None:  # torch's step time over ours for the same cell
        row['torch_over_ours'] = isolated.paired(ours['rates'], result['rates'])['median']
      out.append(row)
  return out


# XLA:CPU options and loop unrolling tried on the plain LSTM's step (`--parts=cell_levers`):
# name -> what the worker gets on top of the default ('xla_flags' or 'lstm_unroll').
CELL_LEVERS = {
    'eigen_one_thread': {'xla_flags': '--xla_cpu_multi_thread_eigen=false'},
    'xnnpack': {'xla_flags': '--xla_cpu_use_xnnpack=true'},
    'xnn_dot_fusion': {'xla_flags': '--xla_cpu_experimental_xnn_fusion_type='
                                    'LIBRARY_FUSION_TYPE_DOT'},
    'ynn_dot_fusion': {'xla_flags': '--xla_cpu_experimental_ynn_fusion_type='
                                    'LIBRARY_FUSION_TYPE_DOT'},
    'onednn': {'xla_flags': '--xla_cpu_use_onednn=true'},
    'unroll_2': {'lstm_unroll': 2},
    'unroll_4': {'lstm_unroll': 4},
}


def run_cell_levers(variant: str, *, steps: int, rounds: int, warmup_steps: int,
                    batch_size: int = 64, num_examples: int = 6400) -> list[dict]:
  """The plain LSTM's training step under each of `CELL_LEVERS`, each in its own process,
  against the default (and torch.nn.LSTM where installed): step time over the default's."""
  base = {'kind': 'cell', 'contender': 'ln_jax', 'config': SEQ_MNIST,
          'overrides': f'{variant},norm=none,batch_size={batch_size}',
          'num_examples': num_examples, 'warmup_steps': warmup_steps}
  specs = {'default': base, **{name: {**base, **extra} for name, extra in CELL_LEVERS.items()}}
  if training.torch_available():
    specs['torch_lstm'] = {**base, 'contender': 'torch_lstm'}
  measured = isolated.interleave(specs, max(1, steps // rounds), rounds)
  out = []
  for name, result in measured.items():
    pair = isolated.paired(measured['default']['rates'], result['rates'])
    out.append({'variant': variant, 'lever': name, 'ms_per_step': 1e3 / result['median'],
                'vs_default': pair['median'], 'spread': f"{pair['min']:.2f}-{pair['max']:.2f}",
                'rounds': result['rates']})
  return out


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
  """Plain-text table; columns are (header, key, format spec)."""
  cells_ = [[h for h, _, _ in columns]]
  for row in rows:
    cells_.append(['' if row.get(k) is None else format(row[k], spec) for _, k, spec in columns])
  widths = [max(len(r[i]) for r in cells_) for i in range(len(columns))]
  lines = ['  '.join(c.rjust(w) for c, w in zip(r, widths)) for r in cells_]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)


def report(results: dict) -> str:
  """The human-readable summary of `results` (what scripts/bench.py writes as JSON)."""
  m = results['machine']
  parts = [f"machine: {m['cpu']} ({m['cpu_count']} CPUs), jax {m['backend']} x{m['count']} "
           f"{m['kind']}; load average before/after: {results['load_average_before']} / "
           f"{results['load_average_after']}"]
  if 'training' in results:
    rows = [dict(r, mb_per_step=r['bytes_per_step'] / 1e6) if 'bytes_per_step' in r else r
            for r in results['training']]
    stream = next((r['stream_gb_per_s'] for r in rows if r.get('stream_gb_per_s')), None)
    bandwidth = (f"; bound: XLA's bytes per step at the {stream:.1f} GB/s a stream over a "
                 "working set of the step's state reached" if stream else '')
    parts += [f"\nTraining throughput, MLP {results['model']}, Adam "
              f"(each in its own process, median of {results['options']['rounds']} interleaved "
              f"rounds{bandwidth})",
              table(rows, [('batch', 'batch_size', 'd'), ('norm', 'norm', 's'),
                           ('contender', 'contender', 's'), ('steps/s', 'steps_per_s', '.1f'),
                           ('examples/s', 'examples_per_s', '.0f'),
                           ('MB/step', 'mb_per_step', '.1f'),
                           ('bound steps/s', 'bound_steps_per_s', '.0f'),
                           ('of bound', 'of_bound', '.0%')]),
              '\nRatios: median over rounds of the ratio within each round',
              table(results['training_ratios'],
                        [('ratio', 'what', 's'), ('batch', 'batch_size', 'd'),
                         ('norm', 'norm', 's'), ('value', 'ratio', '.2f'),
                         ('spread', 'spread', 's'),
                         ('target', 'target', 's'), ('met', 'met', '')])]
  if results.get('layer_norm'):
    columns = [('LayerNorm fwd+bwd', 'contender', 's'), ('shape', 'shape_text', 's'),
               ('us/pass', 'us_per_pass', '.1f'), ('GB/s', 'gb_per_s', '.2f'),
               ('ln_jax / this', 'ln_jax_over_this', '.2f'), ('spread', 'spread', 's')]
    if any('fraction_of_peak' in r for r in results['layer_norm']):
      columns.append(('of peak', 'fraction_of_peak', '.1%'))
    rows = [dict(r, us_per_pass=1e6 * r['seconds_per_pass'],
                 shape_text='x'.join(map(str, r['shape']))) for r in results['layer_norm']]
    parts += ['\nLayerNorm forward+backward, float32, each in its own process (bytes = 5 x input '
              'size per pass; ratios paired by round)', table(rows, columns)]
  if results.get('cells'):
    parts += ['\nRecurrent training steps (seq_mnist, LSTM 128 units, Adam; each in its own '
              'process; "x plain": step time over ln_jax\'s plain LSTM, paired by round)',
              table(results['cells'], [('variant', 'variant', 's'), ('contender', 'contender', 's'),
                                       ('batch', 'batch_size', 'd'),
                                       ('ms/step', 'ms_per_step', '.2f'),
                                       ('x plain', 'vs_plain', '.2f'),
                                       ('x sequence', 'vs_sequence', '.2f'),
                                       ('torch / ours', 'torch_over_ours', '.2f'),
                                       ('spread', 'spread', 's'),
                                       ('GFLOP/s', 'gflop_per_s', '.1f'),
                                       ('of peak', 'of_peak', '.0%'),
                                       ('target', 'target', 's'), ('met', 'met', '')])]
    if results.get('matmul'):
      parts += ['\nXLA float32 matmul rate (each shape in its own process; "of peak" above is '
                'the step\'s matrix-product GFLOP/s over the largest of these)',
                table(results['matmul'], [('shape m x k x n', 'shape', 's'),
                                          ('GFLOP/s', 'gflop_per_s', '.1f')])]
  if results.get('cell_levers'):
    parts += ['\nXLA:CPU options and unrolling on the plain LSTM step (each in its own process; '
              '"x default": step time over the default\'s, paired by round)',
              table(results['cell_levers'], [('variant', 'variant', 's'), ('lever', 'lever', 's'),
                                             ('ms/step', 'ms_per_step', '.2f'),
                                             ('x default', 'vs_default', '.2f'),
                                             ('spread', 'spread', 's')])]
  if results.get('real_run'):
    parts += ['\nReal runs (scripts/train.py; steps_per_s of metrics.jsonl, windows after the '
              'first)', table(results['real_run'], [('run', 'name', 's'),
                                                    ('steps/s', 'steps_per_s', '.1f'),
                                                    ('ms/step', 'ms_per_step', '.2f'),
                                                    ('windows', 'windows', 'd')])]
  return '\n'.join(parts)
