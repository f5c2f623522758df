"""Data parallelism: one run on 1 and 4 (forced host) devices, ghost BatchNorm, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO_ROOT, classification_task, load_config
from ln_jax.training import config_checks
from ln_jax import layers
from ln_jax.training import parallel
from ln_jax.errors import UserError

pytestmark = pytest.mark.slow  # runs on 1 and 4 devices in subprocesses

# Runs in a fresh interpreter: the device count is fixed when JAX starts.
_WORKER = r'''
import json, sys, tempfile
sys.path.insert(0, 'tests')
from absl import logging
import jax
from conftest import load_config
from ln_jax.training import parallel, rundir, train
from ln_jax.errors import UserError
logging.set_verbosity(logging.ERROR)

def run(variant):
  # One epoch, one fused call, one evaluation: few compilations.
  config = load_config('configs/pi_mnist.py',
                       'tiny,num_epochs=1.0,eval_every_epochs=1.0,steps_per_call=100,' + variant)
  workdir = tempfile.mkdtemp()
  train.train_and_evaluate(config, workdir)
  return [{k: v for k, v in r.items() if k not in ('elapsed_s', 'steps_per_s')}
          for r in rundir.read_metrics(workdir)]

out = {'device_count': jax.device_count(), 'runs': {}}
# BatchNorm covers LN's path too: the same gradient all-reduce, plus statistics across devices.
for variant in ('norm=batch', 'norm=batch,norm_options.ghost_batches=4'):
  out['runs'][variant] = {n: run(f'{variant},num_devices={n}') for n in (1, 4)}
try:
  run('batch_size=18,num_devices=4')
except UserError as e:
  out['error'] = str(e)

config = load_config('configs/pi_mnist.py', 'tiny')
from conftest import empty_window, new_train_state
from ln_jax.training import step
import numpy as np

mesh = parallel.make_mesh(4)
state = parallel.replicate(new_train_state(config, jax.random.PRNGKey(0),
                                           np.zeros((1, 784), np.uint8)), mesh)
data, order, window = parallel.replicate(
    ({'image': np.zeros((64, 784), np.uint8), 'label': np.zeros(64, np.int32)},
     np.arange(64, dtype=np.int32), empty_window()), mesh)
hlo = step.train_steps.lower(state, data, order, 0, window, num_steps=2, batch_size=16,
                             mesh=mesh).compile().as_text()
out['all_reduce'] = 'all-reduce' in hlo
state, _ = step.train_steps(state, data, order, 0, window, num_steps=2, batch_size=16, mesh=mesh)
out['state_replicated'] = all(x.sharding.is_fully_replicated and len(x.sharding.device_set) == 4
                              for x in jax.tree.leaves(state.params))
print(json.dumps(out))
'''


@pytest.fixture(scope='module')
def four_devices():
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4',
             JAX_PLATFORMS='cpu')
  result = subprocess.run([sys.executable, '-c', _WORKER], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_same_metrics(a, b, rtol):
  assert [r['step'] for r in a] == [r['step'] for r in b]
  for ra, rb in zip(a, b):
    for key in ra:
      np.testing.assert_allclose(ra[key], rb[key], rtol=rtol, atol=1e-6, err_msg=key)


@pytest.mark.parametrize('variant', ['norm=batch', 'norm=batch,norm_options.ghost_batches=4'])
def test_one_and_four_devices_give_the_same_run(four_devices, variant):
  assert four_devices['device_count'] == 4
  runs = four_devices['runs'][variant]
  assert len(runs['1']) == 1
  _assert_same_metrics(runs['1'], runs['4'], rtol=1e-4)


def test_ghost_statistics_change_the_run(four_devices):
  # Guards the comparison above: per-group statistics are a different model at batch 16.
  whole = four_devices['runs']['norm=batch']['1'][-1]
  ghost = four_devices['runs']['norm=batch,norm_options.ghost_batches=4']['1'][-1]
  assert abs(whole['train_loss'] - ghost['train_loss']) > 1e-4


def test_four_devices_split_the_batch_and_keep_the_state_whole(four_devices):
  assert four_devices['all_reduce']  # gradients are summed across devices
  assert four_devices['state_replicated']


def test_batch_not_divisible_by_devices_is_a_user_error(four_devices):
  assert 'batch_size=18' in four_devices['error']
  assert 'multiple of 4' in four_devices['error']


def test_more_devices_than_available_is_a_user_error():
  with pytest.raises(UserError, match='num_devices'):
    parallel.make_mesh(jax.device_count() + 1)


def test_ghost_batches_must_divide_the_batch():
  config = load_config('configs/pi_mnist.py', 'tiny,norm=batch,norm_options.ghost_batches=3')
  with pytest.raises(UserError, match='norm_options.ghost_batches=3'):
    config_checks.check_config(config, classification_task())


@pytest.mark.parametrize('unbiased', [False, True])
def test_ghost_batch_norm_normalizes_each_group_on_its_own(unbiased):
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 5)) * 3.0 + 1.0
  ghost = layers.BatchNorm(ghost_batches=3, unbiased_variance=unbiased, momentum=0.5)
  plain = layers.BatchNorm(unbiased_variance=unbiased, momentum=0.5)
  variables = ghost.init(jax.random.PRNGKey(1), x, use_running_average=True)
  y, updates = ghost.apply(variables, x, use_running_average=False, mutable=['batch_stats'])
  groups, group_stats = [], []
  for part in jnp.split(x, 3):
    y_part, stats = plain.apply(variables, part, use_running_average=False,
                                mutable=['batch_stats'])
    groups.append(y_part)
    group_stats.append(stats['batch_stats'])
  np.testing.assert_allclose(y, jnp.concatenate(groups), rtol=1e-5, atol=1e-5)
  for name in ('mean', 'var'):
    expected = np.mean([s[name] for s in group_stats], axis=0)
    np.testing.assert_allclose(updates['batch_stats'][name], expected, rtol=1e-5, atol=1e-6)
