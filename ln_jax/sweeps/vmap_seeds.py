"""Runs that differ only in their seed, trained as one `jax.vmap`ped program.

The same `train.train_steps` and `train.evaluate` run under `jax.vmap` over a stacked state and
per-seed data orders, so each seed follows exactly the steps of its separate run (up to float
rounding in batched matmuls). Each seed still writes its own normal run directory. A group that
was interrupted starts again from step 0.

Whether this is faster depends on the backend: see docs/sweeps.md for what was measured.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ln_jax.training import config_checks
from ln_jax.training import checkpoint
from ln_jax import data as data_lib
from ln_jax import models
from ln_jax.training import population
from ln_jax.training import rundir
from ln_jax.training import train
from ln_jax.errors import UserError
from ln_jax.training.progress import Progress


@functools.partial(jax.jit, static_argnames=('num_steps', 'batch_size', 'shared_data'),
                   donate_argnums=(0,))
def train_steps(states, images, labels, orders, position, *, num_steps: int, batch_size: int,
                shared_data: bool):
  """`train.train_steps` for every seed at once; data is [S, N, ...] unless `shared_data`."""
  data_axis = None if shared_data else 0
  steps = functools.partial(train.train_steps, num_steps=num_steps, batch_size=batch_size)
  return jax.vmap(lambda s, x, y, o: steps(s, x, y, o, position),
                  in_axes=(0, data_axis, data_axis, 0))(states, images, labels, orders)


@functools.partial(jax.jit, static_argnames=('batch_size', 'shared_data'))
def evaluate(states, images, labels, *, batch_size: int, shared_data: bool):
  data_axis = None if shared_data else 0
  return jax.vmap(functools.partial(train.evaluate, batch_size=batch_size),
                  in_axes=(0, data_axis, data_axis))(states, images, labels)


def _check_seed_group(configs) -> None:
  def without_seed(config):
    d = config.to_dict()
    d.pop('seed')
    return d
  first = without_seed(configs[0])
  if any(without_seed(c) != first for c in configs[1:]):
    raise ValueError('vmapped runs must differ only in their seed')


def _same(a: data_lib.Split, b: data_lib.Split) -> bool:
  return np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)


def _stack_splits(configs):
  """Each seed's splits, kept once when identical (real data), stacked when not (synthetic)."""
  splits = [data_lib.load_splits(c.data, c.seed) for c in configs]
  shared = all(_same(s[k], splits[0][k]) for s in splits[1:] for k in splits[0])

  def put(name):
    if shared:
      return (jax.device_put(splits[0][name].images), jax.device_put(splits[0][name].labels))
    return (jax.device_put(np.stack([s[name].images for s in splits])),
            jax.device_put(np.stack([s[name].labels for s in splits])))
  arrays = {name: put(name) for name in splits[0] if len(splits[0][name])}
  return arrays, shared, len(splits[0]['train']), splits[0]['train'].images[:1]


def _stack_states(states):
  """One state with a leading seed axis. Each seed is initialised as in its separate run: a
  vmapped init gives the same values but compiles far slower (threefry in one big program)."""
  stack = lambda *xs: jax.device_put(np.stack(xs))
  return states[0].replace(
      step=stack(*[s.step for s in states]),
      params=jax.tree.map(stack, *[s.params for s in states]),
      opt_state=jax.tree.map(stack, *[s.opt_state for s in states]),
      batch_stats=jax.tree.map(stack, *[s.batch_stats for s in states]))


def _seed_state(host_states, i: int) -> dict:
  one = jax.tree.map(lambda x: x[i], host_states)  # numpy slices: no compilation per leaf
  return {'step': one.step, 'params': one.params, 'opt_state': one.opt_state,
          'batch_stats': one.batch_stats}


def train_seeds(configs, workdirs: list[str]) -> list[dict]:
  """Trains configs that differ only in `seed`, one run directory each; returns each run's last
  metrics. A seed whose loss diverges stops writing (no summary.json) and the others go on; then
  `train.TrainingDiverged` names it."""
  _check_seed_group(configs)
  for config in configs:
    config_checks.check_config(config)
  config = configs[0]
  if population.applies(config):
    raise UserError('bn_eval_stats=population is not available with --vmap_seeds; run the seeds '
                    'separately (--novmap_seeds)')
  arrays, shared, num_train, example = _stack_splits(configs)
  config_checks.check_config(config, num_train=num_train)
  schedule = train.Schedule(config, num_train)
  eval_batch = config.batch_size if config.bn_eval_stats == 'batch' else config.eval_batch_size
  train_images, train_labels = arrays.pop('train')

  writers = []
  for c, workdir in zip(configs, workdirs):
    # An interrupted group starts again from step 0: drop what its last attempt wrote.
    if os.path.exists(os.path.join(workdir, rundir.METRICS_FILE)):
      os.remove(os.path.join(workdir, rundir.METRICS_FILE))
    shutil.rmtree(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), ignore_errors=True)
    rundir.write_json_atomic(os.path.join(workdir, rundir.CONFIG_FILE), rundir.describe_run(c))
    writers.append(rundir.MetricsWriter(workdir, c))

  seed_keys = [jax.random.split(jax.random.PRNGKey(c.seed)) for c in configs]  # (init, data)
  data_keys = [data_key for _, data_key in seed_keys]
  model = models.create_model(config)
  states = _stack_states([train.create_train_state(config, model, init_key, example)
                          for init_key, _ in seed_keys])
  num_seeds = len(configs)
  logging.info('training %d seeds as one vmapped program: %d steps each (%d per epoch)',
               num_seeds, schedule.total_steps, schedule.steps_per_epoch)

  progress = Progress(schedule.total_steps, config.batch_size * num_seeds,
                      config.log_every_seconds)
  diverged, last = set(), [{} for _ in configs]
  step, orders, order_epoch = 0, None, -1
  window, window_steps, window_start = None, 0, time.time()
  while step < schedule.total_steps:
    epoch = step // schedule.steps_per_epoch
    if epoch != order_epoch:
      orders = jnp.stack([train.epoch_order(k, epoch, num_train) for k in data_keys])
      order_epoch = epoch
    num_steps = schedule.next_chunk(step)
    states, sums = train_steps(states, train_images, train_labels, orders,
                               step - epoch * schedule.steps_per_epoch, num_steps=num_steps,
                               batch_size=config.batch_size, shared_data=shared)
    window = sums if window is None else jax.tree.map(jnp.add, window, sums)
    window_steps += num_steps
    step += num_steps
    progress.update(step, sums)
    if not schedule.is_eval_step(step):
      continue
    train_sums = jax.device_get(window)  # waits for the device
    seconds = time.time() - window_start
    evals = {name: jax.device_get(evaluate(states, images, labels, batch_size=eval_batch,
                                           shared_data=shared))
             for name, (images, labels) in arrays.items()}
    for i in range(num_seeds):
      if i in diverged:
        continue
      record = {'step': step, 'epoch': step / schedule.steps_per_epoch,
                'train_loss': float(train_sums['loss'][i]) / window_steps,
                'train_error': float(train_sums['error'][i]) / window_steps}
      if not math.isfinite(record['train_loss']):
        logging.error('seed %d diverged between steps %d and %d', configs[i].seed,
                      step - window_steps, step)
        diverged.add(i)
        continue
      for name, metrics in evals.items():
        record[f'{name}_loss'] = float(metrics['loss'][i])
        record[f'{name}_error'] = float(metrics['error'][i])
      record['elapsed_s'] = progress.elapsed()
      record['steps_per_s'] = window_steps / seconds  # of the whole vmapped program
      writers[i].write(record)
      last[i] = record
    window, window_steps, window_start = None, 0, time.time()
    alive = [i for i in range(num_seeds) if i not in diverged]
    if not alive:
      break
    progress.report(last[alive[0]])

  host_states = jax.device_get(states)
  for i, (workdir, writer) in enumerate(zip(workdirs, writers)):
    if i not in diverged:
      writer.finish()
    writer.close()
    if i in diverged:
      continue
    ckpt = checkpoint.manager(workdir, config.checkpoint_keep)
    checkpoint.save(ckpt, step, _seed_state(host_states, i))
    rundir.write_json_atomic(os.path.join(workdir, rundir.SUMMARY_FILE),
                             {'final': last[i], 'total_steps': schedule.total_steps})
  if diverged:
    seeds = ', '.join(str(configs[i].seed) for i in sorted(diverged))
    raise train.TrainingDiverged(
        f'the training loss became non-finite for seed(s) {seeds}; lower learning_rate (now '
        f'{config.learning_rate}) or clip gradients')
  return last
