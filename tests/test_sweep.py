"""Sweeps: member naming and configs, sharding, skip/resume, subprocess runs, vmapped seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ln_jax.training import rundir
from ln_jax.sweeps import sweep
from ln_jax.sweeps import sweep_runner
from ln_jax.training import train
from ln_jax.errors import UserError

pytestmark = pytest.mark.slow  # sweeps of trained members

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = '''
BASE_CONFIG = 'configs/pi_mnist.py:tiny,data.valid_size=0'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm',)

def members(arg=None):
  return [{'norm': norm, 'seed': seed, 'num_epochs': 0.5, 'eval_every_epochs': 0.25,
           'steps_per_call': 9, 'learning_rate': 3e-3}
          for norm in NORMS[arg] for seed in (0, 1)]

NORMS = {None: ('layer', 'batch'), 'one': ('batch',)}
'''


@pytest.fixture
def experiment_file(tmp_path):
  path = tmp_path / 'tiny_experiment.py'
  path.write_text(EXPERIMENT)
  return str(path)


def test_member_names_use_only_the_keys_that_tell_members_apart():
  overrides = [{'norm': n, 'batch_size': b, 'learning_rate': {128: 1e-3, 4: 1e-4}[b],
                'num_epochs': 5.0, 'model.hidden_sizes': (8, 8), 'seed': s}
               for n in ('layer', 'batch') for b in (128, 4) for s in (0, 1)]
  names = sweep.member_names(overrides)
  assert names[:3] == ['norm-layer_bs-128_seed-0', 'norm-layer_bs-128_seed-1',
                       'norm-layer_bs-4_seed-0']
  assert len(set(names)) == len(names)
  assert sweep.member_names([{'model.hidden_sizes': (8, 8)}, {'model.hidden_sizes': (4, 2)}]) \
      == ['hidden_sizes-8x8', 'hidden_sizes-4x2']
  assert sweep.member_names([{'data.dir': '/a b/c'}, {'data.dir': 'x'}])[0] == 'dir--a-b-c'
  with pytest.raises(UserError, match='identical members'):
    sweep.member_names([{'seed': 0}, {'seed': 0}])


def test_member_config_applies_command_line_last_and_rejects_unknown_keys(experiment_file):
  experiment = sweep.load_experiment(experiment_file)
  base = sweep.load_base_config(experiment.base_config)
  member = experiment.members[1]
  config = sweep.member_config(base, member, {'learning_rate': '0.01', 'data.valid_size': '50'})
  assert (config.norm, config.seed, config.learning_rate, config.data.valid_size) == \
      ('layer', 1, 0.01, 50)
  assert base.learning_rate != 0.01  # the base config is not modified
  with pytest.raises(UserError, match='unknown config key'):
    sweep.member_config(base, member, {'learnin_rate': '0.1'})
  bad = sweep.Member('bad', {'batch_sise': 4})
  with pytest.raises(UserError, match='member bad: cannot set batch_sise'):
    sweep.member_config(base, bad, {})
  with pytest.raises(UserError, match='--config.key=value'):
    sweep.parse_common_overrides(['--config.seed'])


def test_shards_partition_the_members():
  members = [sweep.Member(str(i), {'seed': i}) for i in range(7)]
  shards = [sweep.select(members, sweep.parse_shard(f'{i}/3')) for i in range(3)]
  assert sorted(m.name for s in shards for m in s) == [str(i) for i in range(7)]
  assert [m.name for m in shards[1]] == ['1', '4']
  for text in ('3/3', '1', 'a/b', '-1/2'):
    with pytest.raises(UserError, match='--shard'):
      sweep.parse_shard(text)
  with pytest.raises(UserError, match="unknown member 'x'"):
    sweep.select(members, only=['x'])


@pytest.fixture(scope='module')
def batch_sweep(tmp_path_factory):
  """Two BatchNorm seeds swept as a cluster job array would, then the whole sweep re-run after
  one member was interrupted before its first evaluation."""
  root = tmp_path_factory.mktemp('sweep')
  (root / 'experiment.py').write_text(EXPERIMENT)
  experiment = sweep.load_experiment(str(root / 'experiment.py') + ':one')
  workdir = str(root / 'sweep')
  os.makedirs(workdir)
  sweep_runner.run_sweep(experiment, workdir, {}, shard=(1, 2))
  after_shard = [rundir.is_complete(os.path.join(workdir, m.name)) for m in experiment.members]
  interrupted = os.path.join(workdir, experiment.members[0].name)
  os.makedirs(interrupted)
  # A run killed after writing its config.json, before its first checkpoint: seed 0's config.
  with open(os.path.join(workdir, experiment.members[1].name, rundir.CONFIG_FILE)) as f:
    described = json.load(f)
  described['config']['seed'] = 0
  rundir.write_json_atomic(os.path.join(interrupted, rundir.CONFIG_FILE), described)
  summary = os.path.join(workdir, experiment.members[1].name, rundir.SUMMARY_FILE)
  before = os.stat(summary).st_mtime_ns
  sweep_runner.run_sweep(experiment, workdir, {})
  return {'experiment': experiment, 'workdir': workdir, 'after_shard': after_shard,
          'untouched': os.stat(summary).st_mtime_ns == before}


def test_sweep_runs_its_shard_then_only_unfinished_members(batch_sweep):
  experiment, workdir = batch_sweep['experiment'], batch_sweep['workdir']
  names = [m.name for m in experiment.members]
  assert names == ['seed-0', 'seed-1']
  assert batch_sweep['after_shard'] == [False, True]
  assert all(rundir.is_complete(os.path.join(workdir, n)) for n in names)
  assert batch_sweep['untouched']
  listed = json.load(open(os.path.join(workdir, sweep.SWEEP_FILE)))
  assert [m['name'] for m in listed['members']] == names
  assert listed['members'][1]['overrides'] == experiment.members[1].overrides
  assert listed['common_overrides'] == {}
  with pytest.raises(UserError, match='another --workdir'):
    sweep_runner.run_sweep(experiment, workdir, {'learning_rate': '0.1'})


def _run_script(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def test_script_runs_members_in_parallel_processes(experiment_file, tmp_path):
  workdir = str(tmp_path / 'sweep')
  result = _run_script(f'--experiment={experiment_file}:one', f'--workdir={workdir}',
                       '--parallel=2', '--config.model.hidden_sizes=8:8')
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ('seed-0', 'seed-1'):
    assert rundir.is_complete(os.path.join(workdir, name))
    assert os.path.exists(os.path.join(workdir, 'logs', name + '.log'))
    config = json.load(open(os.path.join(workdir, name, rundir.CONFIG_FILE)))['config']
    assert config['model']['hidden_sizes'] == [8, 8]
  assert '2/2 done' in result.stderr

  result = _run_script(f'--experiment={experiment_file}:one', f'--workdir={workdir}',
                       '--config.model.hidden_sizs=8')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: unknown config key")


def test_vmapped_seeds_match_separate_runs(batch_sweep, tmp_path):
  # BatchNorm: the running averages travel through the vmapped state too.
  experiment, workdir = batch_sweep['experiment'], batch_sweep['workdir']
  base = sweep.load_base_config(experiment.base_config)
  configs = [sweep.member_config(base, m, {}) for m in experiment.members]
  separate = [os.path.join(workdir, m.name) for m in experiment.members]
  together = [str(tmp_path / m.name) for m in experiment.members]
  for path in together:
    os.makedirs(path)
  finals = train.train_seeds(configs, together)

  for a, b in zip(separate, together):
    assert rundir.is_complete(b)
    records_a, records_b = rundir.read_metrics(a), rundir.read_metrics(b)
    assert [r['step'] for r in records_a] == [r['step'] for r in records_b]
    for ra, rb in zip(records_a, records_b):
      for key in ('train_loss', 'train_error', 'test_loss', 'test_error'):
        np.testing.assert_allclose(rb[key], ra[key], rtol=1e-4, atol=1e-6, err_msg=key)
    assert json.load(open(os.path.join(b, rundir.CONFIG_FILE)))['config'] == \
        json.load(open(os.path.join(a, rundir.CONFIG_FILE)))['config']
  # The two seeds really trained differently.
  assert rundir.read_metrics(together[0])[-1]['train_loss'] != \
      rundir.read_metrics(together[1])[-1]['train_loss']
  assert os.path.isdir(os.path.join(together[1], 'checkpoints'))
  assert finals == [rundir.read_metrics(b)[-1] for b in together]
  # Finished: running the group again trains nothing and returns the same metrics.
  assert train.train_seeds(configs, together) == finals


def test_eta_comes_from_steps_and_the_rate_of_each_batch_size():
  steps = {'bs128_a': 780, 'bs128_b': 780, 'bs4_a': 25000, 'bs4_b': 25000}
  units = {name: [sweep.Member(name, {})] for name in steps}
  progress = sweep_runner.SweepProgress(
      4, 0, 1, lambda unit: (unit[0].name.split('_')[0], steps[unit[0].name]))
  progress.finished(units['bs128_a'], 1, 10.0)  # 78 steps/s
  # Not measured at batch 4 yet: counted, not guessed from batch 128's time per step.
  assert progress.line([], [units['bs4_a'], units['bs128_b']]).endswith(
      'ETA ~0:00:10 + 1 member(s) of a batch size not timed yet')
  assert progress.line([(units['bs4_a'], 5.0)], []).endswith(
      'ETA when a batch size of the 1 member(s) left is timed')
  progress.finished(units['bs4_a'], 1, 150.0)   # 167 steps/s
  line = progress.line([(units['bs4_b'], 50.0)], [units['bs128_b']])
  assert line.startswith('sweep: 2/4 done, 1 running, 1 left')
  assert line.endswith('ETA ~0:01:50')  # 150 - 50 s of batch 4 and 10 s of batch 128


def test_a_failure_every_member_shares_stops_the_sweep_before_anything_is_created(
    experiment_file, tmp_path):
  workdir = tmp_path / 'sweep'
  result = _run_script(f'--experiment={experiment_file}', f'--workdir={workdir}',
                       '--config.data.source=idx', f'--config.data.dir={tmp_path / "none"}')
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if 'not a directory' in line]
  assert len(errors) == 1 and errors[0].startswith('error: ')
  assert result.stderr.strip().splitlines()[-1] == errors[0]
  assert not workdir.exists()
  result = _run_script(f'--experiment={experiment_file}', f'--workdir={workdir}',
                       '--config.batch_size=1000')  # more than the 500 training images
  assert result.returncode == 2 and 'batch_size' in result.stderr.strip().splitlines()[-1]
  assert not workdir.exists()


def test_a_sweep_folder_accepts_other_flags_that_resolve_to_the_same_configs(
    tmp_path, monkeypatch):
  data_dir = tmp_path / 'mnist'
  data_dir.mkdir()
  (tmp_path / 'experiment.py').write_text(
      "BASE_CONFIG = 'configs/pi_mnist.py'\n"
      "def members(arg=None):\n  return [{'seed': 0}, {'seed': 1}]\n")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv('LN_JAX_DATA_DIR', 'mnist')  # relative: stored as an absolute path

  def configs(common):
    experiment = sweep.load_experiment(str(tmp_path / 'experiment.py'))
    base = sweep.load_base_config(experiment.base_config)
    return experiment, {m.name: sweep.member_config(base, m, common) for m in experiment.members}

  experiment, from_env = configs({})
  assert from_env['seed-0'].data.dir == str(data_dir.resolve())
  sweep.write_sweep_file(str(tmp_path), experiment, {}, from_env)
  monkeypatch.delenv('LN_JAX_DATA_DIR')
  _, from_flags = configs({'data.source': 'idx', 'data.dir': './mnist/'})
  sweep.check_sweep_file(str(tmp_path), from_flags, {'data.source': 'idx'})
  _, elsewhere = configs({'data.source': 'idx', 'data.dir': str(tmp_path)})
  with pytest.raises(UserError, match='member seed-0 has another config.*data.dir'):
    sweep.check_sweep_file(str(tmp_path), elsewhere, {})


def test_time_budget_starts_only_units_that_fit(monkeypatch):
  now = [1000.0]
  monkeypatch.setattr(sweep_runner.time, 'time', lambda: now[0])
  units = {name: [sweep.Member(name, {})] for name in ('a', 'b', 'c')}
  progress = sweep_runner.SweepProgress(3, 0, 1, lambda unit: ('bs4', 100), budget_s=100.0)
  assert progress.may_start([units['a'], units['b']])  # nothing timed yet: time is left
  now[0] += 60.0
  progress.finished(units['a'], 1, 60.0)
  assert not progress.may_start([units['b'], units['c']])  # 60 s gone + 60 s > 100 s
  assert progress.not_started == 2
  unlimited = sweep_runner.SweepProgress(3, 0, 1, lambda unit: ('bs4', 100))
  assert unlimited.may_start([units['c']])


def test_time_budget_leaves_members_for_the_next_run(experiment_file, tmp_path):
  workdir = tmp_path / 'sweep'
  result = _run_script(f'--experiment={experiment_file}', f'--workdir={workdir}',
                       '--time_budget=0:00:01')
  assert result.returncode == 0, result.stderr
  assert 'time budget 0:00:01 reached' in result.stderr
  finished = [d for d in workdir.iterdir() if (d / 'summary.json').exists()]
  assert 1 <= len(finished) < len(json.loads((workdir / 'sweep.json').read_text())['members'])
  result = _run_script(f'--experiment={experiment_file}', f'--workdir={workdir}',
                       '--time_budget=soon')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: --time_budget='soon'")
