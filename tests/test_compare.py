"""Comparing runs: reading run directories, selection on validation, the table and the figure
files of a real (tiny) sweep, several folders, damaged runs, refusing to mix."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ln_jax.analysis import compare
from ln_jax.analysis import metrics as metrics_lib
from ln_jax.analysis import selection
from ln_jax.analysis import tables
from ln_jax.training import rundir
from ln_jax.sweeps import sweep
from ln_jax.sweeps import sweep_runner
from ln_jax.errors import UserError

pytestmark = pytest.mark.slow  # a trained sweep to compare

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = '''
BASE_CONFIG = 'configs/pi_mnist.py:tiny'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'batch_size')
TUNED = ('learning_rate',)
CLAIMS = ({'kind': 'less', 'a': {'norm': 'layer'}, 'b': {'norm': 'none'}, 'metric': 'test_error',
           'text': 'LayerNorm beats the baseline'},)

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


def compare_script(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'compare.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=600)


def test_compare_writes_figure_tables_and_claims_from_the_metrics(sweep_dir):
  result = compare_script(sweep_dir, '--threshold=0.5')
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ('comparison_test_error.png', 'comparison_test_error.pdf',
               'comparison_test_error.md', 'comparison_test_error.csv', 'claims.md',
               'claims.json'):
    assert os.path.getsize(os.path.join(sweep_dir, name)) > 100
  assert 'LayerNorm beats the baseline' in result.stdout
  assert 'Baseline, batch_size=16: learning_rate=0.003' in result.stdout

  with open(os.path.join(sweep_dir, 'comparison_test_error.csv')) as f:
    rows = {row['norm']: row for row in csv.DictReader(f)}
  assert set(rows) == {'none', 'layer'}
  for norm in ('none', 'layer'):
    at_best, finals = [], []
    for seed in (0, 1):
      records = rundir.read_metrics(os.path.join(sweep_dir, f'norm-{norm}_seed-{seed}'))
      best = min(records, key=lambda r: r['valid_error'])  # selected on validation only
      at_best.append(best['test_error'])
      finals.append(records[-1]['test_error'])
    row = rows[norm]
    assert int(row['runs']) == 2 and int(row['unfinished']) == 0
    np.testing.assert_allclose(float(row['at_best_mean']), np.mean(at_best), rtol=1e-6)
    np.testing.assert_allclose(float(row['final_mean']), np.mean(finals), rtol=1e-6)
  with open(os.path.join(sweep_dir, 'claims.json')) as f:
    claim = json.load(f)[0]
  assert claim['verdict'] in ('holds', 'does not hold', 'inconclusive')
  assert claim['difference']['n'] == 2 and claim['how'] == 'paired on 2 seeds'


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
  # Two seeds: mean +/- t(0.975, 1) * sd / sqrt(2), t(0.975, 1) = 12.7062.
  half = 12.706204736 * losses.std(0, ddof=1) / np.sqrt(2)
  np.testing.assert_allclose(curve['high'] - curve['mean'], half, rtol=1e-6)


def write_run(path, config, records, complete=True):
  os.makedirs(path)
  rundir.write_json_atomic(os.path.join(path, rundir.CONFIG_FILE), {'config': config})
  with open(os.path.join(path, rundir.METRICS_FILE), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  if complete:
    rundir.write_json_atomic(os.path.join(path, rundir.SUMMARY_FILE), {})


def record(step, test_error, valid_error=None):
  r = {'step': step, 'epoch': step / 10, 'train_loss': 1.0 / step, 'test_error': test_error}
  if valid_error is not None:
    r['valid_error'] = valid_error
  return r


def test_hand_made_runs_repeated_steps_and_unfinished_runs(tmp_path):
  # A run re-started after an interruption repeats steps: the later lines count.
  write_run(tmp_path / 'a', {'norm': 'batch', 'seed': 0, 'model': {'hidden_sizes': [4]}},
            [record(10, 0.5), record(20, 0.9), record(10, 0.4), record(20, 0.3)])
  write_run(tmp_path / 'b', {'norm': 'batch', 'seed': 1, 'model': {'hidden_sizes': [4]}},
            [record(10, 0.2)], complete=False)
  write_run(tmp_path / 'c' / 'nested', {'norm': 'layer', 'seed': 0}, [record(10, 0.1)])
  runs = compare.find_runs(str(tmp_path))
  assert [r.path for r in runs] == ['a', 'b', os.path.join('c', 'nested')]
  assert [r['test_error'] for r in runs[0].records] == [0.4, 0.3]
  assert runs[0].config['model.hidden_sizes'] == (4,)

  groups = compare.group_runs(runs, ('norm',))
  tuned = selection.tune(groups, (), 'valid_error')
  rows = tables.summarize(tuned, ('norm',), (), 'test_error', 'valid_error', threshold=0.35)
  batch = rows[0]
  assert (batch['norm'], batch['runs'], batch['unfinished']) == ('batch', 2, 1)
  # No validation metric: each run is read at its final evaluation, never at its best test.
  assert batch['at_best_mean'] == pytest.approx(0.25) and batch['final_mean'] == 0.25
  # Run a crosses 0.35 halfway between its evaluations at epochs 1 and 2 (0.4, 0.3): 1.5;
  # run b is below it at its first evaluation: 1.0.
  assert batch['reached'] == 2 and batch['epochs_to_threshold'] == pytest.approx(1.25)
  table = tables.markdown_table(rows, ('norm',), (), metrics_lib.info(runs, 'test_error'),
                                metrics_lib.info(runs, 'valid_error'), 0.35)
  assert '| LayerNorm | - | 1 | 10.00 | 10.00 | - | 1 (1/1) | - |' in table

  with pytest.raises(UserError, match="no run has config key 'nrom'"):
    compare.group_runs(runs, ('nrom',))


def test_each_run_is_read_at_its_best_validation_error_not_its_best_test_error(tmp_path):
  # The test error is lowest at step 10, the validation error at step 30: the headline number
  # is the test error at step 30.
  write_run(tmp_path / 'a', {'norm': 'layer', 'seed': 0},
            [record(10, 0.05, 0.30), record(20, 0.20, 0.10), record(30, 0.15, 0.08),
             record(40, 0.12, 0.09)])
  run, = compare.find_runs(str(tmp_path))
  assert selection.selected_record(run, 'valid_error')['step'] == 30
  assert selection.at_selection(run, 'test_error', 'valid_error') == 0.15
  assert selection.final_value(run, 'test_error') == 0.12
  rows = tables.summarize(selection.tune({('layer',): [run]}, (), 'valid_error'), ('norm',), (),
                          'test_error', 'valid_error', 0.1)
  assert rows[0]['at_best_mean'] == 0.15 and rows[0]['final_mean'] == 0.12


def test_tuned_key_picks_the_best_mean_validation_over_seeds(tmp_path):
  # lr 0.1 has the single best seed (valid 0.01) but the worse mean (0.155 against 0.05).
  valid = {(0.1, 0): 0.01, (0.1, 1): 0.30, (0.01, 0): 0.05, (0.01, 1): 0.05}
  for (lr, seed), v in valid.items():
    write_run(tmp_path / f'lr{lr}_s{seed}', {'norm': 'layer', 'learning_rate': lr, 'seed': seed},
              [record(10, v + 0.01, v)])
  runs = compare.find_runs(str(tmp_path))
  with pytest.raises(UserError, match='differ in learning_rate'):
    compare.group_runs(runs, ('norm',))  # not declared tuned: refused, not averaged
  groups = compare.group_runs(runs, ('norm',), ('learning_rate',))
  settings = selection.tune(groups, ('learning_rate',), 'valid_error')[('layer',)]
  assert [s.tuned for s in settings] == [(0.01,), (0.1,)]
  assert settings[0].score == pytest.approx(0.05) and settings[1].score == pytest.approx(0.155)
  rows = tables.summarize({('layer',): settings}, ('norm',), ('learning_rate',), 'test_error',
                          'valid_error', 0.1, all_settings=True)
  assert [(r['learning_rate'], r['selected']) for r in rows] == [(0.01, True), (0.1, False)]
  table = tables.markdown_table(rows, ('norm',), ('learning_rate',),
                                metrics_lib.info(runs, 'test_error'),
                                metrics_lib.info(runs, 'valid_error'), 0.1)
  assert 'learning_rate (of 2)' in table and '| 0.1 (not selected) |' in table


def test_runs_differing_in_an_ungrouped_key_are_refused_with_one_line(tmp_path):
  write_run(tmp_path / 'a', {'norm': 'layer', 'seed': 0, 'model': {'hidden_sizes': [4]},
                             'num_epochs': 1.0}, [record(10, 0.1, 0.1)])
  write_run(tmp_path / 'b', {'norm': 'layer', 'seed': 1, 'model': {'hidden_sizes': [8]},
                             'num_epochs': 2.0}, [record(10, 0.2, 0.2)])
  result = compare_script(str(tmp_path), '--group_by=norm')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      'error: runs in one group differ in model.hidden_sizes, num_epochs; add them to '
      '--group_by, or pass --allow_mixed to average them together']
  assert not os.path.exists(tmp_path / 'comparison_test_error.md')  # nothing written
  runs = compare.find_runs(str(tmp_path))
  mixed = compare.group_runs(runs, ('norm',), allow_mixed=True)
  assert [r.path for r in mixed[('layer',)]] == ['a', 'b']


def test_several_folders_and_a_damaged_run(tmp_path):
  write_run(tmp_path / 'one' / 'a', {'norm': 'layer', 'seed': 0}, [record(10, 0.1, 0.1)])
  write_run(tmp_path / 'two' / 'b', {'norm': 'none', 'seed': 0}, [record(10, 0.3, 0.3)])
  write_run(tmp_path / 'two' / 'broken', {'norm': 'none', 'seed': 1}, [record(10, 0.3, 0.3)])
  with open(tmp_path / 'two' / 'broken' / rundir.METRICS_FILE, 'a') as f:
    f.write('{"step": 20, "epo')  # a line cut short
  result = compare_script(str(tmp_path / 'one'), str(tmp_path / 'two'),
                          f'--output_dir={tmp_path / "out"}', '--group_by=norm')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '2 runs in 2 groups' in result.stdout
  warnings = [line for line in result.stderr.splitlines() if 'skipping' in line]
  assert len(warnings) == 1 and 'broken' in warnings[0]
  assert os.path.exists(tmp_path / 'out' / 'comparison_test_error.png')
  assert not os.path.exists(tmp_path / 'one' / 'comparison_test_error.md')


def test_compare_explains_a_missing_or_empty_directory(tmp_path):
  with pytest.raises(UserError, match='is not a directory'):
    compare.find_runs(str(tmp_path / 'missing'))
  with pytest.raises(UserError, match='no run directories'):
    compare.find_runs(str(tmp_path))
  result = compare_script(str(tmp_path / 'missing'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'error: {tmp_path / "missing"} is not a directory; pass a sweep directory or a folder '
      'of runs']


# ---- the figure: per-seed curves for few seeds, panels, the experiment's axes ------------------

def synthetic_run(norm, seed, batch_size=None, errors=(0.05, 0.02, 0.015)):
  """A compare.Run with three evaluations, made in memory."""
  config = {'norm': norm, 'seed': seed, **({'batch_size': batch_size} if batch_size else {})}
  records = [{'step': i + 1, 'epoch': i + 1.0, 'train_loss': 0.5 / (i + 1) * (1 + 0.1 * seed),
              'test_error': e * (1 + 0.05 * seed)} for i, e in enumerate(errors)]
  return compare.Run(f'{norm}_{batch_size}_{seed}', config, records, True)


def curves_of(groups: dict) -> list:
  return [{'values': values, 'runs': runs, 'detail': ''} for values, runs in groups.items()]


def test_groups_of_fewer_than_3_seeds_draw_each_seed():
  from ln_jax.analysis import plots
  curves = curves_of({('layer',): [synthetic_run('layer', s) for s in range(2)],
                      ('none',): [synthetic_run('none', s) for s in range(3)]})
  fig = plots.figure(curves, ('norm',), None, 'test_error', 'ci')
  for ax in fig.axes:
    # LayerNorm: its 2 seeds' curves, one legend entry; Baseline: its mean (the band is a patch).
    assert len(ax.get_lines()) == 3
    assert len(ax.collections) == 1
  labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert labels == ['LayerNorm (2 seeds)', 'Baseline (3 seeds)']
  assert 'each seed drawn where a group has fewer than 3' in fig._suptitle.get_text()


def test_panels_split_by_batch_size_or_the_experiments_key_else_one_panel():
  assert compare.panel_key(('norm', 'batch_size'), None, None) == 'batch_size'
  assert compare.panel_key(('norm',), None, None) is None
  assert compare.panel_key(('norm', 'model.pixels_per_step', 'batch_size'), None,
                           'model.pixels_per_step') == 'model.pixels_per_step'
  assert compare.panel_key(('norm', 'batch_size'), None, 'model.pixels_per_step') == 'batch_size'
  with pytest.raises(UserError, match='--panel_by=seed is not a group key'):
    compare.panel_key(('norm',), 'seed', None)
  from ln_jax.analysis import plots
  by_batch = {(n, b): [synthetic_run(n, s, b) for s in range(3)]
              for b in (128, 4) for n in ('none', 'batch', 'layer')}
  fig = plots.figure(curves_of(by_batch), ('norm', 'batch_size'), 'batch_size', 'test_error',
                     'ci')
  assert [ax.get_title() for ax in fig.axes[:2]] == ['batch size 128', 'batch size 4']
  assert len(fig.axes) == 4 and all(len(ax.get_lines()) == 3 for ax in fig.axes)
  # No panel key (a conv experiment grouped by norm only): every norm in one panel.
  by_norm = {(n,): [synthetic_run(n, s) for s in range(3)] for n in ('none', 'batch', 'layer')}
  fig = plots.figure(curves_of(by_norm), ('norm',), None, 'test_error', 'ci')
  assert len(fig.axes) == 2 and len(fig.axes[0].get_legend().get_texts()) == 3


def test_the_experiments_axes_apply_where_the_data_fits():
  from ln_jax.analysis import plots
  plot = {'train_loss': {'log': True}, 'test_error': {'ylim': (0.005, 0.025)}}
  fits = curves_of({('layer',): [synthetic_run('layer', s) for s in range(3)]})
  fig = plots.figure(fits, ('norm',), None, 'test_error', 'ci', plot)
  nll, error = fig.axes
  assert nll.get_yscale() == 'log'
  assert error.get_ylim() == pytest.approx((0.5, 2.5))  # in %, as the axis shows it
  # Runs that end at 4% error do not fit 0.5-2.5%: the axis follows the data.
  high = curves_of({('layer',): [synthetic_run('layer', s, errors=(0.2, 0.08, 0.04))
                                 for s in range(3)]})
  _, error = plots.figure(high, ('norm',), None, 'test_error', 'ci', plot).axes
  assert error.get_ylim()[1] > 4.0


def test_compare_reads_the_panel_key_and_axes_from_the_experiment_file(tmp_path):
  (tmp_path / 'experiment.py').write_text(
      "PANEL_BY = 'model.pixels_per_step'\nPLOT = {'test_error': {'log': True}}\n")
  write_run(tmp_path / 'runs' / 'a', {'norm': 'layer', 'seed': 0}, [record(10, 0.1, 0.1)])
  rundir.write_json_atomic(str(tmp_path / 'runs' / 'sweep.json'), {
      'experiment': f'{tmp_path / "experiment.py"}:cpu', 'metrics': ['test_error'],
      'group_by': ['norm'], 'members': []})
  defaults = compare.sweep_defaults(str(tmp_path / 'runs'))
  assert defaults.panel_by == 'model.pixels_per_step'
  assert defaults.plot == {'test_error': {'log': True}}
  (tmp_path / 'experiment.py').unlink()  # gone: the default layout, with a warning
  assert compare.sweep_defaults(str(tmp_path / 'runs')).panel_by is None
