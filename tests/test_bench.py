"""The speed benchmark runs end to end on a toy model; no speed is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT
from conftest import load_config
from benchmarks import isolated
from benchmarks import suite
from benchmarks import training

pytestmark = pytest.mark.slow  # benchmark processes


def test_training_benchmark_runs_each_contender_in_its_own_process():
  contenders = ['ln_jax', 'flax_scan', 'jit_loop'] + (
      ['torch'] if training.torch_available() else [])
  rows = suite.run_training([4], ['layer'], contenders, steps=4, rounds=2, warmup_steps=1,
                            overrides='model.hidden_sizes=16,steps_per_call=2',
                            num_examples=64, variants=('fuse_weight_grad=False',))
  assert [r['contender'] for r in rows] == contenders + ['ln_jax[fuse_weight_grad=False]']
  for row in rows:
    assert len(row['rounds']) == 2 and row['steps_per_s'] > 0
    assert row['examples_per_s'] == row['steps_per_s'] * 4
  ours = rows[0]
  # The bound: at least the 784x16 + 16x10 weights, Adam's mu and nu, read and written once
  # per step, at the bandwidth of a working set of the state's size.
  assert ours['bytes_per_step'] >= 6 * 4 * (784 * 16 + 16 * 10)
  assert ours['state_bytes'] >= 3 * 4 * (784 * 16 + 16 * 10)
  assert ours['bound_steps_per_s'] == ours['stream_gb_per_s'] * 1e9 / ours['bytes_per_step']
  assert 'bytes_per_step' not in rows[1]  # only ln_jax's row has the bound
  ratios = suite.training_ratios(rows)
  assert {r['what'] for r in ratios} >= {'ln_jax / flax_scan', 'ln_jax / jit_loop'}
  text = suite.report({'machine': suite.machine(), 'load_average_before': None,
                       'load_average_after': None, 'options': {'rounds': 2}, 'model': '784-16-10',
                       'training': rows, 'training_ratios': ratios})
  assert 'ln_jax / flax_scan' in text


def test_peers_without_a_normalizer_are_left_out():
  rows = suite.run_training([4], ['batch'], ['ln_jax', 'flax_scan'], steps=2, rounds=1,
                            warmup_steps=1, overrides='model.hidden_sizes=16,steps_per_call=2',
                            num_examples=64)
  assert [r['contender'] for r in rows] == ['ln_jax']


def test_recurrent_benchmark_compares_the_cells_with_the_plain_lstm():
  contenders = ['ln_jax:none', 'ln_jax:layer', 'scan:none'] + (
      ['torch_lstm'] if training.torch_available() else [])
  rows = suite.run_cells(['rows'], contenders, steps={'rows': 2}, rounds=2, warmup_steps=1,
                         batch_size=4, extra='model.hidden_size=8', num_examples=64)
  assert [r['contender'] for r in rows] == contenders
  assert all(len(r['rounds']) == 2 and r['ms_per_step'] > 0 for r in rows)
  layer = rows[1]
  assert layer['target'] == '<= 1.25' and layer['met'] == (layer['vs_plain'] <= 1.25)
  assert 'vs_plain' not in rows[0]
  assert all(r['gflop_per_s'] > 0 for r in rows)


def test_recurrent_benchmark_times_step_wise_cells_gru_and_the_matmul_rate():
  contenders = ['ln_jax:layer', 'step:layer', 'gru:none'] + (
      ['torch_gru'] if training.torch_available() else [])
  rows = {r['contender']: r for r in suite.run_cells(
      ['rows'], contenders, steps={'rows': 2}, rounds=2, warmup_steps=1, batch_size=4,
      extra='model.hidden_size=8', num_examples=64, peak_gflops=1e3)}
  step = rows['step:layer']
  assert step['target'] == '<= 1.3 x sequence' and step['met'] == (step['vs_sequence'] <= 1.3)
  assert 0 < step['of_peak'] == step['gflop_per_s'] / 1e3
  if 'torch_gru' in rows:
    assert rows['torch_gru']['torch_over_ours'] > 0
  # The FLOPs: 28 steps x 2 B G H (3H + 2D): LSTM G = 4, GRU G = 3.
  config = load_config('configs/seq_mnist.py', 'rows,model.hidden_size=8')
  assert suite.lstm_step_flops(config, 4) == 28 * 2 * 4 * 4 * 8 * (3 * 8 + 2 * 28)
  [rate] = suite.matmul_rates([(16, 32, 64)], rounds=1)
  assert rate['shape'] == '16x32x64' and rate['gflop_per_s'] > 0


def test_paired_ratios_report_their_spread():
  assert isolated.paired([2.0, 4.0, 9.0], [1.0, 1.0, 3.0]) == {'median': 3.0, 'min': 2.0,
                                                               'max': 4.0}


def test_ratios_compare_ln_jax_with_each_contender_and_norms_with_layer_norm():
  rate = {('layer', 'ln_jax'): 30.0, ('layer', 'jit_loop'): 10.0, ('layer', 'flax_scan'): 40.0,
          ('layer', 'torch'): 10.0, ('batch', 'ln_jax'): 22.8, ('batch', 'jit_loop'): 20.0}
  rows = [{'batch_size': 4, 'norm': n, 'contender': c, 'steps_per_s': v}
          for (n, c), v in rate.items()]
  rows[0]['bound_steps_per_s'] = 35.0  # layer, ln_jax
  rows.append({'batch_size': 4, 'norm': 'layer', 'contender': 'ln_jax[x=1]', 'steps_per_s': 1.0,
               'bound_steps_per_s': 99.0})  # a variant's bound is not ln_jax's
  ratios = {(r['what'], r['norm']): r for r in suite.training_ratios(rows)}
  assert ratios[('bound / flax_scan', 'layer')]['ratio'] == 35.0 / 40.0
  assert ratios[('ln_jax / jit_loop', 'layer')]['ratio'] == 3.0
  assert ratios[('ln_jax / jit_loop', 'layer')]['met'] is True      # target 1.2
  assert ratios[('ln_jax / flax_scan', 'layer')]['met'] is False    # 0.75 < 0.9
  assert ratios[('ln_jax / torch', 'layer')]['met'] is None         # no target
  assert ratios[('ln_jax / jit_loop', 'batch')]['met'] is False     # 1.14 < 1.2
  assert ratios[('batch / layer (ln_jax)', 'batch')]['ratio'] == pytest.approx(0.76)
  assert ratios[('batch / layer (ln_jax)', 'batch')]['met'] is False  # 24% slower


def test_ratios_pair_the_rounds_that_ran_back_to_back():
  # Round 2 ran under load for both: the within-round ratios are 2, 2 and 2, while the ratio of
  # the medians (20 / 8) is 2.5.
  rows = [{'batch_size': 4, 'norm': 'layer', 'contender': 'ln_jax', 'steps_per_s': 20.0,
           'rounds': [20.0, 4.0, 22.0]},
          {'batch_size': 4, 'norm': 'layer', 'contender': 'jit_loop', 'steps_per_s': 10.0,
           'rounds': [10.0, 2.0, 11.0]},
          {'batch_size': 4, 'norm': 'none', 'contender': 'ln_jax', 'steps_per_s': 8.0,
           'rounds': [8.0, 4.0, 33.0]}]
  ratios = {(r['what'], r['norm']): r['ratio'] for r in suite.training_ratios(rows)}
  assert ratios[('ln_jax / jit_loop', 'layer')] == 2.0
  assert ratios[('none / layer (ln_jax)', 'none')] == 1.0  # median of 0.4, 1.0, 1.5


def test_bench_script_writes_json_and_rejects_bad_flags(tmp_path):
  script = os.path.join(REPO_ROOT, 'scripts', 'bench.py')
  bad = subprocess.run([sys.executable, script, '--batch_sizes=4,x'], capture_output=True,
                       text=True, timeout=120)
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines() == [
      'error: --batch_sizes=4,x must be integers, e.g. 4,128']
  output = tmp_path / 'bench.json'
  ok = subprocess.run([sys.executable, script, '--quick', '--parts=layer_norm',
                       '--ln_shapes=8x16', '--peak_gbs=100', f'--output={output}'],
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-2000:]
  results = json.loads(output.read_text())
  names = [r['contender'] for r in results['layer_norm']]
  assert names == ['ln_jax', 'flax'] + (['torch'] if training.torch_available() else [])
  for r in results['layer_norm']:
    assert r['shape'] == [8, 16]
    assert abs(r['gb_per_s'] - 5 * 8 * 16 * 4 / r['seconds_per_pass'] / 1e9) < 1e-9
    assert abs(r['fraction_of_peak'] - r['gb_per_s'] / 100.0) < 1e-12
  assert 'LayerNorm forward+backward' in ok.stdout


def test_profile_script_ranks_the_operations_of_a_step():
  script = os.path.join(REPO_ROOT, 'scripts', 'profile_step.py')
  config = os.path.join(REPO_ROOT, 'configs', 'pi_mnist.py')
  run = subprocess.run([sys.executable, script,
                        f'--config={config}:batch_size=4,model.hidden_sizes=16,steps_per_call=5',
                        '--steps=10', '--top=5'], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  lines = run.stdout.strip().splitlines()
  assert 'ms per step over 10 traced steps' in lines[0]
  assert lines[1].endswith('operation class')
  header = next(i for i, line in enumerate(lines) if line.endswith('  operation'))
  classes, operations = lines[2:header], lines[header + 1:]
  assert 1 <= len(classes) <= 6 and len(operations) == 5
  for rows in (classes, operations):
    times = [float(line.split()[0]) for line in rows]
    assert times == sorted(times, reverse=True) and times[0] > 0


def test_draw_benchmark_times_ln_jax_and_torch_and_estimates_a_gpu_step(tmp_path):
  script = os.path.join(REPO_ROOT, 'scripts', 'bench.py')
  output = tmp_path / 'bench.json'
  run = subprocess.run([sys.executable, script, '--parts=draw', '--draw_norms=layer_c',
                        '--draw_glimpses=2', '--draw_units=8', '--draw_latent=3',
                        '--draw_batch_size=4', '--draw_steps=1', '--rounds=1',
                        f'--output={output}'], capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  draw = json.loads(output.read_text())['draw']
  assert draw['sizes'] == {'glimpses': 2, 'units': 8, 'latent': 3, 'read_n': 2, 'write_n': 5,
                           'batch_size': 4}
  rows = {r['contender']: r for r in draw['rows']}
  assert set(rows) == {'ln_jax'} | ({'torch'} if training.torch_available() else set())
  assert all(r['ms_per_step'] > 0 and r['norm'] == 'layer_c' for r in rows.values())
  assert rows['ln_jax']['epoch_s'] == pytest.approx(12_500 * rows['ln_jax']['ms_per_step'] / 1e3)
  if 'torch' in rows:
    assert rows['torch']['parameters'] == rows['ln_jax']['parameters']
    assert rows['torch']['over_ln_jax'] > 0
  [gpu] = draw['gpu_estimate']
  assert gpu['gflop_per_step'] > 0 and gpu['kernels_per_glimpse'] > 0
  assert gpu['step_ms'] == max(gpu['compute_ms'], gpu['latency_ms'])
  assert 'GPU estimate, NOT a measurement' in run.stdout


@pytest.mark.parametrize('norm', ['none', 'layer_c'])
def test_torch_draw_has_the_parameters_of_ln_jax_draw(norm):
  pytest.importorskip('torch')
  from benchmarks import draw
  from benchmarks import draw_torch
  from benchmarks import load_config
  config = load_config(draw.CONFIG, f'tiny,norm={norm},model.read_n=3,model.write_n=4')
  torch_model = draw.torch_runner(config).model
  assert draw_torch.num_parameters(torch_model) == draw.parameter_count(config)


def test_profile_groups_operations_by_class():
  from benchmarks import profile
  operations = [('dot.3', 1.0, 28.0), ('ynn_fusion.1', 1.0, 28.0), ('loop_add_fusion.1', 1.5, 28.0),
                ('input_reduce_fusion', 0.5, 2.0), ('dynamic-update-slice.7', 0.25, 28.0),
                ('copy.2', 0.25, 1.0), ('custom-thing', 0.1, 1.0)]
  assert profile.by_class(operations) == [
      ('element-wise fusions', 1.5, 28.0), ('matrix products', 1.0, 28.0),
      ('library fusions (products and the work fused into them)', 1.0, 28.0),
      ('reductions', 0.5, 2.0), ('copies and slices', 0.5, 29.0), ('other', 0.1, 1.0)]
