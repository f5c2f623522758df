"""Fused multi-step training: grouping steps into compiled calls changes nothing, bit for bit."""

from __future__ import annotations

import os

import jax
import numpy as np

from conftest import empty_window
from conftest import load_config
from conftest import new_train_state
from ln_jax import data
from ln_jax.training import rundir
from ln_jax.training import step as step_lib
from ln_jax.training import train

WALL_CLOCK = ('elapsed_s', 'steps_per_s')


def _setup(norm: str):
  config = load_config('configs/pi_mnist.py', f'tiny,norm={norm}')
  split = data.load_splits(config.data, config.seed)['train']
  init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
  state = new_train_state(config, init_key, split.images[:1])
  order = step_lib.epoch_order(data_key, 0, len(split))
  return config, split, state, order


def _leaves(state, totals):
  return jax.tree.leaves((state.params, state.batch_stats, state.opt_state, totals))


def test_grouping_of_steps_leaves_state_and_sums_bitwise_equal():
  config, split, initial, order = _setup('batch')  # BN: params, optimizer and batch_stats
  results = {}
  for chunks in ((1,) * 4, (4,)):  # (uneven chunks: see the end-to-end test below)
    state = jax.tree.map(np.array, initial)  # a fresh copy: train_steps donates its input
    totals, position = empty_window(), 0
    arrays = {'image': split.images, 'label': split.labels}
    for n in chunks:
      state, totals = step_lib.train_steps(state, arrays, order, position, totals, num_steps=n,
                                           batch_size=config.batch_size)
      position += n
    results[chunks] = _leaves(state, totals)
  reference = results[(1,) * 4]
  for chunks, leaves in results.items():
    for a, b in zip(reference, leaves):
      np.testing.assert_array_equal(a, b, err_msg=f'chunks {chunks}')


def test_fused_steps_match_a_step_by_step_loop():
  config, split, initial, order = _setup('batch')
  fused, totals = step_lib.train_steps(jax.tree.map(np.array, initial),
                                       {'image': split.images, 'label': split.labels}, order, 0,
                                       empty_window(), num_steps=4, batch_size=config.batch_size)
  step = jax.jit(step_lib.train_step)
  state, losses = initial, []
  for i in range(4):
    idx = np.asarray(order[i * config.batch_size:(i + 1) * config.batch_size])
    state, metrics = step(state, {'image': split.images[idx], 'label': split.labels[idx]})
    losses.append(float(metrics['loss']))
  np.testing.assert_allclose(float(totals['loss']), sum(losses), rtol=1e-5)
  for a, b in zip(jax.tree.leaves((fused.params, fused.batch_stats)),
                  jax.tree.leaves((state.params, state.batch_stats))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_steps_per_call_does_not_change_the_run(tmp_path):
  records = {}
  for k in (1, 8):  # tiny: 31 steps per epoch, evaluation every 16, so 8 splits unevenly
    config = load_config('configs/pi_mnist.py', f'tiny,num_epochs=1.0,steps_per_call={k}')
    workdir = str(tmp_path / f'k{k}')
    os.makedirs(workdir)
    train.train_and_evaluate(config, workdir)
    records[k] = [{key: v for key, v in r.items() if key not in WALL_CLOCK}
                  for r in rundir.read_metrics(workdir)]
  assert len(records[1]) == 2
  assert records[1] == records[8]
