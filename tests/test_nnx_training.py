"""An NNX model trained by the framework: the PI-MNIST MLP written in Flax NNX (config
`model.api=nnx`) goes through the same task, loop, resume, vmapped seeds and compare as the Linen
one, and from the same parameters gives the same metrics; a user's NNX model in a task file of
its own (examples/nnx_model) trains through scripts/train.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from ln_jax import tasks
from ln_jax.training import metrics_repair
from ln_jax.training import resume_check
from ln_jax.training import rundir
from ln_jax.training import step as step_lib
from ln_jax.training import train
from ln_jax.training import window as window_lib
from tests.conftest import load_config
from tests.conftest import REPO_ROOT


def _state(config, images):
  from ln_jax.training import optimizers
  task = tasks.load_task(config)
  key = jax.random.PRNGKey(0)
  return step_lib.create_train_state(config, task, task.create_model(config),
                                     optimizers.make_optimizer(config), key, key,
                                     {'image': images[:1]})


@pytest.mark.parametrize('norm', ['layer', 'batch', 'none', 'weight', 'group'])
def test_the_nnx_mlp_has_the_linen_variables_and_trains_to_the_same_numbers(norm):
  linen = load_config('configs/pi_mnist.py', f'tiny,norm={norm},batch_size=4')
  nnx_config = load_config('configs/pi_mnist.py', f'tiny,norm={norm},batch_size=4,model.api=nnx')
  task = tasks.load_task(linen)
  data = task.load_splits(linen)
  a, b = _state(linen, data['train']['image']), _state(nnx_config, data['train']['image'])
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(a.params) == shapes(b.params)
  assert shapes(a.batch_stats) == shapes(b.batch_stats)
  # From the same parameters: 12 steps, then evaluation, equal to float rounding.
  copy = lambda tree: jax.tree.map(lambda x: np.array(x), tree)  # train_steps donates a's
  b = b.replace(params=copy(a.params), batch_stats=copy(a.batch_stats),
                opt_state=copy(a.opt_state))
  order = step_lib.epoch_order(jax.random.PRNGKey(1), 0, len(data['train']['label']))
  results = []
  for state in (a, b):
    window = window_lib.empty_window(task.metric_names)
    state, window = step_lib.train_steps(state, data['train'], order, 0, window, num_steps=12,
                                         batch_size=4)
    results.append((jax.device_get(window), jax.device_get(
        step_lib.evaluate(state, data['test'], batch_size=64)), state))
  (wa, ea, sa), (wb, eb, sb) = results
  for key in ('loss', 'error'):
    np.testing.assert_allclose(wa[key], wb[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ea[key], eb[key], rtol=1e-5, atol=1e-6)
  for x, y in zip(jax.tree.leaves(sa.params), jax.tree.leaves(sb.params)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  for x, y in zip(jax.tree.leaves(sa.batch_stats), jax.tree.leaves(sb.batch_stats)):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_the_loop_trains_resumes_and_vmaps_an_nnx_model(tmp_path):
  base = load_config('configs/pi_mnist.py', 'tiny,norm=batch,model.api=nnx').unlock()
  configs = []
  for seed in (0, 1):
    c = base.copy_and_resolve_references()
    c.seed = seed
    configs.append(c.lock())
  train.train_seeds(configs, [str(tmp_path / f'v{c.seed}') for c in configs])
  final = train.train_and_evaluate(configs[0], str(tmp_path / 'alone'))
  records = rundir.read_metrics(str(tmp_path / 'alone'))
  assert records[-1]['train_loss'] < records[0]['train_loss']
  assert final['test_error'] < 0.5
  for x, y in zip(rundir.read_metrics(str(tmp_path / 'v0')), records):
    assert x['test_loss'] == pytest.approx(y['test_loss'], rel=1e-4)


@pytest.mark.slow
def test_an_nnx_run_resumes_identically_after_sigkill(tmp_path):
  variant = ('tiny,model.api=nnx,norm=batch,data.valid_size=200,batch_size=20,num_epochs=6,'
             'steps_per_call=5,eval_every_epochs=0.5,checkpoint_every_epochs=0.75,'
             'checkpoint_keep=3')
  result = resume_check.run_check([f'--config=configs/pi_mnist.py:{variant}'],
                                  str(tmp_path / 'runs'), signals=['KILL'], timeout=300)
  assert result['returncodes'] == (0, 0)
  assert result['differences'] == []
  assert metrics_repair.metrics_differences(str(tmp_path / 'runs' / 'uninterrupted'),
                                            str(tmp_path / 'runs' / 'interrupted')) == []


def test_an_unknown_api_is_one_error_line(tmp_path):
  from ln_jax.errors import UserError
  from ln_jax.training import config_checks
  config = load_config('configs/pi_mnist.py', 'tiny,model.api=haiku')
  with pytest.raises(UserError, match="unknown model.api 'haiku'; choose one of linen, nnx"):
    config_checks.check_config(config, tasks.load_task(config))


@pytest.mark.slow
def test_the_nnx_example_trains_through_the_train_script(tmp_path):
  """examples/nnx_model: ln_jax.nnx's LSTM cell with recurrent BN under nnx.RNN, in a model
  brought into the loop by nnx.bridge.to_linen, trained a few steps by scripts/train.py."""
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, 'scripts/train.py', '--config=examples/nnx_model/config.py:tiny',
       f'--workdir={workdir}', '--config.norm=batch'],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
      env={**os.environ, 'PYTHONPATH': REPO_ROOT})
  assert result.returncode == 0, result.stderr[-3000:]
  records = rundir.read_metrics(str(workdir))
  assert records[-1]['train_loss'] < records[0]['train_loss']
  assert {'valid_error', 'test_error', 'test_loss'} <= set(records[-1])
  described = json.loads((workdir / 'config.json').read_text())
  assert described['task']['name'] == 'nnx_sequences'
