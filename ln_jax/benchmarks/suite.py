"""The benchmark suite: runs the parts, checks the speed targets, formats tables and the JSON."""

from __future__ import annotations

import os
import platform
import statistics

import jax

from ln_jax.training import rundir
from ln_jax.benchmarks import cells
from ln_jax.benchmarks import layers
from ln_jax.benchmarks import load_config
from ln_jax.benchmarks import roofline
from ln_jax.benchmarks import training

PI_MNIST = os.path.join('configs', 'pi_mnist.py')
# (batch size, competitor, least ln_jax / competitor steps/s ratio) the project aims for.
SPEED_TARGETS = ((4, 'jit_loop', 1.5), (4, 'torch', 4.0), (128, 'jit_loop', 1.0))
NORM_PARITY = 0.15  # BN and no-norm runs within 15% of LN's speed
PARITY_NORMS = ('batch', 'none')


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
  """Steps/s of every (contender, norm) at each batch size, all interleaved per batch size.

  Each is timed over min(`steps`, one epoch) steps; `steps=0` means one epoch. Each of
  `variants` (config overrides, 'key=value,...') adds an ln_jax contender named
  'ln_jax[<variant>]', so the effect of a config key is measured in the same rounds.
  """
  images, labels = training.make_dataset(num_examples)
  stream_gbs = roofline.stream_gb_per_s() if 'ln_jax' in contenders or variants else None
  rows = []
  for batch_size in batch_sizes:
    runners = {}
    for norm in norms:
      config = mlp_config(norm, batch_size, overrides)
      for name in contenders:
        if name == 'torch' and norm not in training.TorchRunner.NORMS:
          continue  # listed in the report as missing, not an error
        runners[(name, norm)] = training.RUNNERS[name](config, images, labels)
      for variant in variants:
        variant_config = mlp_config(norm, batch_size, ','.join(filter(None, (overrides, variant))))
        runners[(f'ln_jax[{variant}]', norm)] = training.FusedRunner(variant_config, images,
                                                                      labels)
    epoch = len(labels) // batch_size
    measured = training.measure(runners, min(steps, epoch) if steps else epoch, rounds,
                                warmup_steps)
    for (name, norm), result in measured.items():
      row = {'batch_size': batch_size, 'norm': norm, 'contender': name,
             'steps_per_s': result['steps_per_s'],
             'examples_per_s': result['steps_per_s'] * batch_size,
             'rounds': result['rounds'], 'steps': result['steps'],
             'cpu_per_wall': result['cpu_per_wall']}
      if isinstance(runners[(name, norm)], training.FusedRunner):
        row['bytes_per_step'] = runners[(name, norm)].bytes_per_step()
        row['stream_gb_per_s'] = stream_gbs
        row['bound_steps_per_s'] = stream_gbs * 1e9 / row['bytes_per_step']
        row['of_bound'] = row['steps_per_s'] / row['bound_steps_per_s']
      rows.append(row)
    del runners
  return rows


def _paired_ratio(a: dict, b: dict) -> float:
  """a's speed over b's: the median over rounds of the ratio within each round where both rows
  have per-round rates (their windows ran back to back, so a load change on a shared machine
  hits both), else the ratio of the medians."""
  if a.get('rounds') and b.get('rounds') and len(a['rounds']) == len(b['rounds']):
    return statistics.median(x / y for x, y in zip(a['rounds'], b['rounds']))
  return a['steps_per_s'] / b['steps_per_s']


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
    ratio = _paired_ratio(row_of[(batch_size, norm, 'ln_jax')], row_of[(batch_size, norm, name)])
    out.append({'what': f'ln_jax / {name}', 'batch_size': batch_size, 'norm': norm,
                'ratio': ratio, 'target': f'>= {target}' if target else None,
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


def run_layer_norm(rows: int, features: int, include_torch: bool, repeats: int,
                   peak_gbs: float = 0.0) -> list[dict]:
  results = layers.measure_layer_norm(rows, features,
                                      layers.layer_norm_contenders(include_torch), repeats=repeats)
  for result in results:
    if peak_gbs > 0:
      result['fraction_of_peak'] = result['gb_per_s'] / peak_gbs
  return results


def run_cells(batch_size: int, *, steps: int, rounds: int, warmup_steps: int,
              variant: str = 'rows', extra: str = '') -> dict:
  reason = cells.missing()
  if reason is not None:
    return {'skipped': reason}
  images, labels = training.make_dataset()
  return cells.measure_cells(variant, batch_size, images, labels, steps=steps, rounds=rounds,
                             warmup_steps=warmup_steps, extra=extra)


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
    bandwidth = (f'; bound: XLA\'s bytes per step at the {stream:.1f} GB/s a streaming kernel '
                 'reached, all from memory (caches can beat it)' if stream else '')
    parts += [f"\nTraining throughput, MLP {results['model']}, Adam "
              f"(median of {results['options']['rounds']} interleaved rounds{bandwidth})",
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
                         ('target', 'target', 's'), ('met', 'met', '')])]
  if 'layer_norm' in results:
    columns = [('LayerNorm fwd+bwd', 'contender', 's'), ('ms/call', 'ms_per_call', '.3f'),
               ('GB/s', 'gb_per_s', '.2f')]
    if any('fraction_of_peak' in r for r in results['layer_norm']):
      columns.append(('of peak', 'fraction_of_peak', '.1%'))
    rows = [dict(r, ms_per_call=1e3 * r['seconds_per_call']) for r in results['layer_norm']]
    parts += [f"\nLayerNorm forward+backward, float32 {results['layer_norm'][0]['shape']} "
              '(bytes = 5 x input size)', table(rows, columns)]
  if 'cells' in results:
    c = results['cells']
    if 'rows' in c and c['rows']:
      parts += ['\nRecurrent training steps (seq_mnist)',
                table(c['rows'], [('norm', 'norm', 's'), ('cell', 'cell', 's'),
                                  ('hidden', 'hidden_size', ''), ('batch', 'batch_size', 'd'),
                                  ('ms/step', 'ms_per_step', '.2f'),
                                  ('x plain', 'vs_none', '.2f')])]
    for norm, reason in c.get('skipped', {}).items() if isinstance(c.get('skipped'), dict) else []:
      parts.append(f'recurrent {norm}: skipped ({reason})')
    if isinstance(c.get('skipped'), str):
      parts.append(f"\nRecurrent cells: skipped ({c['skipped']})")
  return '\n'.join(parts)


def devices_summary() -> str:
  return ', '.join(sorted({d.device_kind for d in jax.devices()}))
