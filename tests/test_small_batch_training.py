"""The small-batch normalizers end to end: CLI runs, config errors, and population statistics
that leave the training trajectory alone and survive a resume."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import REPO_ROOT
from conftest import classification_task
from conftest import empty_window
from conftest import load_config
from conftest import new_train_state
from conftest import set_key
from ln_jax.errors import Interrupted
from ln_jax.errors import UserError
from ln_jax.training import checkpoint
from ln_jax.training import config_checks
from ln_jax.training import metrics_repair
from ln_jax.training import resume
from ln_jax.training import rundir
from ln_jax.training import step as step_lib
from ln_jax.training import train

pytestmark = pytest.mark.slow  # trained runs of each normalizer


@pytest.mark.parametrize('config, overrides', [
    ('configs/pi_mnist.py:tiny', ['--config.norm=group']),
    ('configs/pi_mnist.py:tiny', ['--config.norm=batch_renorm']),
    ('configs/seq_mnist.py:tiny', ['--config.norm=group']),
    ('configs/seq_mnist.py:tiny', ['--config.norm=batch_renorm']),
])
def test_cli_trains_each_new_normalizer(tmp_path, config, overrides):
  # BN's population statistics train in-process below (test_population_*).
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'train.py'), f'--config={config}',
       f'--workdir={workdir}', '--config.num_epochs=1', '--config.eval_every_epochs=0.5',
       *overrides], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  records = rundir.read_metrics(str(workdir))
  assert len(records) == 2 and rundir.is_complete(str(workdir))
  assert all(np.isfinite(r['train_loss']) and np.isfinite(r['test_loss']) for r in records)
  if config.startswith('configs/pi_mnist'):  # the MLP learns the synthetic classes in an epoch
    assert records[-1]['train_loss'] < records[0]['train_loss']


@pytest.mark.parametrize('overrides, message', [
    ({'norm': 'group', 'norm_options.groups': 5},
     'norm_options.groups=5 must be a positive divisor of every normalized width (32, 32)'),
    ({'norm': 'batch_renorm', 'norm_options.renorm_r_max': 0.5},
     'norm_options.renorm_r_max=0.5 must be >= 1'),
    ({'norm': 'batch_renorm', 'norm_options.renorm_d_max': -1.0},
     'norm_options.renorm_d_max=-1.0 must be >= 0'),
    ({'norm': 'batch_renorm', 'norm_options.renorm_d_max_step': 10},
     'norm_options.renorm_r_max_step=40000 and renorm_d_max_step=10 must be >='),
    # BatchNorm's settings are checked where they apply: for the norms of BN's family.
    ({'norm': 'batch', 'norm_options.eval_stats': 'precise'},
     "norm_options.eval_stats='precise' must be one of running, batch, population"),
    ({'norm': 'batch', 'norm_options.eval_stats': 'population',
      'norm_options.population_batches': 0},
     'norm_options.population_batches=0 must be a positive number'),
])
def test_bad_small_batch_values_are_one_clear_error(tiny_config, overrides, message):
  for key, value in overrides.items():
    set_key(tiny_config, key, value)
  with pytest.raises(UserError, match=re.escape(message)):
    config_checks.check_config(tiny_config, classification_task())


def test_population_larger_than_the_training_set_is_refused(tiny_config):
  tiny_config.norm, tiny_config.norm_options.eval_stats = 'batch', 'population'
  tiny_config.norm_options.population_batches = 40  # 40 x 16 > 500 training examples
  with pytest.raises(UserError, match='need 640 of the 500 training examples'):
    config_checks.check_config(tiny_config, classification_task(), num_train=500)


def _config(eval_stats):
  # 500 training examples, batches of 25: 20 steps per epoch; evaluations every 5 steps,
  # checkpoints every 10, fused calls of 5 steps.
  return load_config('configs/pi_mnist.py', (
      f'tiny,norm=batch,norm_options.eval_stats={eval_stats},batch_size=25,num_epochs=1,'
      'eval_every_epochs=0.25,checkpoint_every_epochs=0.5,steps_per_call=5'))


def _final_state(config, workdir):
  state = new_train_state(config, jax.random.PRNGKey(1), np.zeros((1, 784), np.uint8))
  mngr = checkpoint.manager(str(workdir), 2)
  return resume.restore(mngr, mngr.latest_step(), state, empty_window())[0]


@pytest.fixture(scope='module')
def population_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('population')
  train.train_and_evaluate(_config('population'), str(workdir))
  return workdir


def test_population_statistics_change_evaluation_but_not_training(population_run, tmp_path):
  train.train_and_evaluate(_config('running'), str(tmp_path))
  with_population, with_running = (rundir.read_metrics(str(d)) for d in (population_run, tmp_path))
  assert [r['train_loss'] for r in with_population] == [r['train_loss'] for r in with_running]
  assert all(a['test_loss'] != b['test_loss'] for a, b in zip(with_population, with_running))
  states = [_final_state(_config(stats), d) for stats, d in (('population', population_run),
                                                             ('running', tmp_path))]
  for a, b in zip(*(jax.tree.leaves((s.params, s.batch_stats)) for s in states)):
    np.testing.assert_array_equal(a, b)


def test_population_run_resumes_with_identical_metrics(population_run, tmp_path, monkeypatch):
  calls, real_train_steps = [], step_lib.train_steps

  def train_steps_then_ctrl_c(*args, **kwargs):
    calls.append(kwargs['num_steps'])
    out = real_train_steps(*args, **kwargs)
    if len(calls) == 3:  # step 15: after the checkpoint at 10 and the evaluation at 15
      os.kill(os.getpid(), signal.SIGINT)
    return out

  monkeypatch.setattr(step_lib, 'train_steps', train_steps_then_ctrl_c)
  with pytest.raises(Interrupted):
    train.train_and_evaluate(_config('population'), str(tmp_path))
  monkeypatch.undo()
  train.train_and_evaluate(_config('population'), str(tmp_path))
  assert metrics_repair.metrics_differences(str(population_run), str(tmp_path)) == []


def test_vmapped_seeds_evaluate_with_their_own_population_statistics(population_run, tmp_path):
  # Once refused by vmapped seeds: each seed now draws its own population batches from its own
  # (synthetic, per-seed) data, so seed 0 of a vmapped group repeats its separate run.
  configs = [_config('population') for _ in range(2)]
  configs[1].seed = 1
  dirs = [str(tmp_path / name) for name in ('a', 'b')]
  train.train_seeds(configs, dirs)
  separate, vmapped = rundir.read_metrics(str(population_run)), rundir.read_metrics(dirs[0])
  assert [r['step'] for r in separate] == [r['step'] for r in vmapped]
  for a, b in zip(separate, vmapped):
    for key in ('train_loss', 'valid_loss', 'test_loss'):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-6, err_msg=key)
  assert all(rundir.is_complete(d) for d in dirs)
  assert rundir.read_metrics(dirs[1])[-1]['test_loss'] != vmapped[-1]['test_loss']
