"""The training loop on synthetic data: learning, evaluation arithmetic, the run directory."""

from __future__ import annotations

import json

import jax
import numpy as np
import optax
import pytest

from conftest import empty_window
from conftest import new_train_state
from ln_jax.training import checkpoint
from ln_jax import data
from ln_jax import models
from ln_jax.training import resume
from ln_jax.training import rundir
from ln_jax.training import schedule as schedule_lib
from ln_jax.training import step as step_lib
from ln_jax.training import train


@pytest.mark.slow
@pytest.mark.parametrize('norm', ['layer', 'batch', 'none'])
def test_training_on_synthetic_data_lowers_the_loss(tmp_path, tiny_config, norm):
  tiny_config.norm = norm
  final = train.train_and_evaluate(tiny_config, str(tmp_path))
  records = rundir.read_metrics(str(tmp_path))
  assert len(records) == 4  # 2 epochs, evaluated every half epoch
  assert records[-1]['train_loss'] < 0.5 * records[0]['train_loss']
  assert final['test_error'] < 0.2
  assert final == records[-1]


@pytest.mark.slow
def test_run_directory_describes_itself(tmp_path, tiny_config):
  tiny_config.norm = 'batch'
  train.train_and_evaluate(tiny_config, str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    described = json.load(f)
  assert described['config']['norm'] == 'batch'
  assert described['config']['data']['source'] == 'synthetic'
  assert {'jax', 'flax', 'optax'} <= set(described['versions'])
  assert described['device']['backend'] == 'cpu'
  record = rundir.read_metrics(str(tmp_path))[0]
  for key in ('step', 'epoch', 'train_loss', 'test_loss', 'test_error', 'valid_error',
              'elapsed_s'):
    assert key in record
  steps_per_epoch = (600 - 100) // 16
  assert record['step'] == round(0.5 * steps_per_epoch)
  assert record['epoch'] == pytest.approx(record['step'] / steps_per_epoch)
  assert rundir.is_complete(str(tmp_path))


@pytest.mark.slow
def test_final_checkpoint_restores_the_trained_state(tmp_path, tiny_config):
  tiny_config.norm = 'batch'
  final = train.train_and_evaluate(tiny_config, str(tmp_path))
  state = new_train_state(tiny_config, jax.random.PRNGKey(1), np.zeros((1, 784), np.uint8))
  mngr = checkpoint.manager(str(tmp_path), 2)
  restored_state, _ = resume.restore(mngr, mngr.latest_step(), state, empty_window())
  assert int(restored_state.step) == final['step']
  test = data.load_splits(tiny_config.data, tiny_config.seed)['test']
  metrics = step_lib.evaluate(restored_state, {'image': test.images, 'label': test.labels},
                              batch_size=64)
  assert float(metrics['error']) == pytest.approx(final['test_error'], abs=1e-6)


def test_evaluate_matches_numpy_with_a_ragged_last_batch(tiny_config):
  model = models.create_model(tiny_config)
  state = new_train_state(tiny_config, jax.random.PRNGKey(0), np.zeros((1, 784), np.uint8),
                          model=model)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (37, 784), dtype=np.uint8)
  labels = rng.integers(0, 10, 37).astype(np.int32)
  metrics = step_lib.evaluate(state, {'image': images, 'label': labels},
                              batch_size=16)  # 16 + 16 + 5
  logits = np.asarray(model.apply({'params': state.params}, images / 255.0))
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  np.testing.assert_allclose(metrics['loss'], np.mean(nll), rtol=1e-5)
  np.testing.assert_allclose(metrics['error'], np.mean(logits.argmax(-1) != labels), rtol=1e-6)


def test_train_steps_threads_batch_stats_and_follows_the_epoch_order(tiny_config):
  tiny_config.norm = 'batch'
  model = models.create_model(tiny_config)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (64, 784), dtype=np.uint8)
  labels = rng.integers(0, 10, 64).astype(np.int32)
  state = new_train_state(tiny_config, jax.random.PRNGKey(0), images[:1], model=model)
  order = step_lib.epoch_order(jax.random.PRNGKey(5), 0, 64)
  fused, sums = step_lib.train_steps(state, {'image': images, 'label': labels}, order, 1,
                                     empty_window(), num_steps=2, batch_size=16)
  # The same two steps by hand: batches 1 and 2 of the epoch order.
  state = new_train_state(tiny_config, jax.random.PRNGKey(0), images[:1], model=model)
  losses = []
  for i in (1, 2):
    idx = np.asarray(order[i * 16:(i + 1) * 16])
    state, metrics = step_lib.train_step(state, {'image': images[idx], 'label': labels[idx]})
    losses.append(float(metrics['loss']))
  assert int(fused.step) == 2
  np.testing.assert_allclose(float(sums['loss']), sum(losses), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(fused.batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(jax.tree.leaves(fused.batch_stats)[0], 0.0)


def test_schedule_evaluates_at_fractions_of_an_epoch(tiny_config):
  tiny_config.batch_size = 4
  tiny_config.num_epochs = 1.5
  tiny_config.eval_every_epochs = 0.1
  tiny_config.steps_per_call = 7
  schedule = schedule_lib.Schedule(tiny_config, num_train=400)
  assert (schedule.steps_per_epoch, schedule.total_steps, schedule.eval_every) == (100, 150, 10)
  step, chunks = 0, []
  while step < schedule.total_steps:
    chunks.append(schedule.next_chunk(step))
    step += chunks[-1]
  assert step == 150 and max(chunks) == 7 and set(chunks) == {7, 3}
  assert [s for s in range(1, 151) if schedule.is_eval_step(s)] == list(range(10, 151, 10))


@pytest.mark.slow
def test_non_finite_loss_stops_the_run(tmp_path, tiny_config):
  tiny_config.learning_rate = 1e30
  tiny_config.optimizer = 'sgd'
  with pytest.raises(train.TrainingDiverged, match='non-finite'):
    train.train_and_evaluate(tiny_config, str(tmp_path))


def test_schedule_evaluates_a_fixed_number_of_times_unless_eval_every_epochs_is_set(
    tiny_config):
  from conftest import load_config
  tiny_config.batch_size, tiny_config.num_epochs, tiny_config.steps_per_call = 4, 1.5, 50
  tiny_config.eval_every_epochs, tiny_config.num_evals = None, 4
  schedule = schedule_lib.Schedule(tiny_config, num_train=400)
  assert [s for s in range(1, 151) if schedule.is_eval_step(s)] == [38, 76, 114, 150]
  tiny_config.batch_size = 128  # the same number of evaluations at any batch size
  schedule = schedule_lib.Schedule(tiny_config, num_train=12800)
  assert sum(schedule.is_eval_step(s) for s in range(1, schedule.total_steps + 1)) == 4
  assert load_config('configs/pi_mnist.py').eval_every_epochs is None


def test_progress_waits_for_each_call_and_logs_at_the_configured_cadence(monkeypatch):
  from ln_jax.training import progress as progress_lib
  now, lines, waited = [0.0], [], []
  monkeypatch.setattr(progress_lib, 'time', type('Clock', (), {'time': lambda: now[0]}))
  monkeypatch.setattr(progress_lib.logging, 'log', lambda level, fmt, *args: lines.append(args))

  class DeviceValue:
    def block_until_ready(self):
      waited.append(now[0])
      return self

  progress = progress_lib.Progress(total_steps=100, batch_size=4, every_s=10.0)
  for step in range(4, 101, 4):  # a call of 4 steps every 3 s
    now[0] += 3.0
    progress.update(step, DeviceValue())
  assert len(waited) == 25  # every call, not only those that log
  assert [args[0] for args in lines] == [16, 32, 48, 64, 80, 96, 100]
  assert lines[0][3] == pytest.approx(16 / 12)  # steps/s over the interval
