"""Comparing runs: reading run directories, grouping, the summary table and the figure files."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ln_jax.analysis import compare
from ln_jax.training import rundir
from ln_jax.sweeps import sweep
from ln_jax.sweeps import sweep_runner
from ln_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = '''
BASE_CONFIG = 'configs/pi_mnist.py:tiny,data.valid_size=0'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'batch_size')

def members(arg=None):
  return [{'norm': norm, 'seed': seed, 'num_epochs': 0.5, 'eval_every_epochs': 0.25,
           'steps_per_call': 9, 'learning_rate': 3e-3}
          for norm in ('none', 'layer') for seed in (0, 1)]
'''


@pytest.fixture(scope='module')
def sweep_dir(tmp_path_factory):
  """A real sweep: two methods x two seeds, each method's seeds trained as one vmapped group."""
  root = tmp_path_factory.mktemp('compare')
  (root / 'experiment.py').write_text(EXPERIMENT)
  workdir = str(root / 'sweep')
  os.makedirs(workdir)
  sweep_runner.run_sweep(sweep.load_experiment(str(root / 'experiment.py')), workdir, {},
                  vmap_seeds=True)
  return workdir


def _compare(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'compare.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=120)


def test_compare_writes_figure_and_tables_from_the_metrics(sweep_dir):
  result = _compare(sweep_dir, '--threshold=0.5')
  assert result.returncode == 0, result.stderr[-2000:]
  for ext in ('png', 'pdf', 'md', 'csv'):
    assert os.path.getsize(os.path.join(sweep_dir, f'comparison_test_error.{ext}')) > 100
  assert '| LayerNorm | 16 | 2 |' in result.stdout

  with open(os.path.join(sweep_dir, 'comparison_test_error.csv')) as f:
    rows = {row['norm']: row for row in csv.DictReader(f)}
  assert set(rows) == {'none', 'layer'}
  for norm in ('none', 'layer'):
    finals, bests, reach = [], [], []
    for seed in (0, 1):
      records = rundir.read_metrics(os.path.join(sweep_dir, f'norm-{norm}_seed-{seed}'))
      errors = [r['test_error'] for r in records]
      finals.append(errors[-1])
      bests.append(min(errors))
      reach += [next(r['epoch'] for r in records if r['test_error'] <= 0.5)]
    row = rows[norm]
    assert int(row['runs']) == 2 and int(row['unfinished']) == 0
    np.testing.assert_allclose(float(row['final_mean']), np.mean(finals), rtol=1e-6)
    np.testing.assert_allclose(float(row['final_std']), np.std(finals, ddof=1), rtol=1e-6,
                               atol=1e-12)
    np.testing.assert_allclose(float(row['best_mean']), np.mean(bests), rtol=1e-6)
    np.testing.assert_allclose(float(row['epochs_to_threshold']), np.mean(reach), rtol=1e-6)


def test_curves_average_over_seeds(sweep_dir):
  runs = compare.find_runs(sweep_dir)
  assert [r.path for r in runs] == ['norm-none_seed-0', 'norm-none_seed-1', 'norm-layer_seed-0',
                                    'norm-layer_seed-1']
  groups = compare.group_runs(runs, ('norm',))
  curve = compare.aggregate(groups[('layer',)], 'train_loss')
  losses = np.array([[r['train_loss'] for r in run.records] for run in groups[('layer',)]])
  np.testing.assert_allclose(curve['mean'], losses.mean(0), rtol=1e-6)
  np.testing.assert_allclose(curve['min'], losses.min(0), rtol=1e-6)
  np.testing.assert_array_equal(curve['count'], 2)


def _write_run(path, config, records, complete=True):
  os.makedirs(path)
  rundir.write_json_atomic(os.path.join(path, rundir.CONFIG_FILE), {'config': config})
  with open(os.path.join(path, rundir.METRICS_FILE), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  if complete:
    rundir.write_json_atomic(os.path.join(path, rundir.SUMMARY_FILE), {})


def test_hand_made_runs_repeated_steps_and_unfinished_runs(tmp_path):
  def record(step, error):
    return {'step': step, 'epoch': step / 10, 'train_loss': 1.0 / step, 'test_error': error}
  # A run re-started after an interruption repeats steps: the later lines count.
  _write_run(tmp_path / 'a', {'norm': 'batch', 'seed': 0, 'model': {'hidden_sizes': [4]}},
             [record(10, 0.5), record(20, 0.9), record(10, 0.4), record(20, 0.3)])
  _write_run(tmp_path / 'b', {'norm': 'batch', 'seed': 1, 'model': {'hidden_sizes': [4]}},
             [record(10, 0.2)], complete=False)
  _write_run(tmp_path / 'c' / 'nested', {'norm': 'layer', 'seed': 0}, [record(10, 0.1)])
  runs = compare.find_runs(str(tmp_path))
  assert [r.path for r in runs] == ['a', 'b', os.path.join('c', 'nested')]
  assert [r['test_error'] for r in runs[0].records] == [0.4, 0.3]
  assert runs[0].config['model.hidden_sizes'] == (4,)

  groups = compare.group_runs(runs, ('norm',))
  rows = compare.summarize(groups, ('norm',), 'test_error', threshold=0.35)
  batch = rows[0]
  assert (batch['norm'], batch['runs'], batch['unfinished']) == ('batch', 2, 1)
  assert batch['final_mean'] == pytest.approx(0.25)
  assert batch['best_mean'] == pytest.approx(0.25)
  assert batch['reached'] == 2 and batch['epochs_to_threshold'] == pytest.approx(1.5)
  assert rows[1]['final_std'] == 0.0
  assert math.isnan(compare.summarize(groups, ('norm',), 'test_error', 0.01)[0]
                    ['epochs_to_threshold'])
  table = compare.markdown_table(rows, ('norm',), 'test_error', 0.35)
  assert '| BatchNorm | 2 (1 unfinished) | 25.00 ± 7.07 | 25.00 ± 7.07 | 1.5 (2/2) |' in table
  assert '| LayerNorm | 1 | 10.00 | 10.00 | 1 (1/1) |' in table

  with pytest.raises(UserError, match="no run has config key 'nrom'"):
    compare.group_runs(runs, ('nrom',))


def test_compare_explains_a_missing_or_empty_directory(tmp_path):
  with pytest.raises(UserError, match='is not a directory'):
    compare.find_runs(str(tmp_path / 'missing'))
  with pytest.raises(UserError, match='no run directories'):
    compare.find_runs(str(tmp_path))
  result = _compare(str(tmp_path / 'missing'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: {tmp_path / "missing"} is not a directory; pass a sweep directory or a folder '
      'of runs']
