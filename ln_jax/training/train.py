"""Training and evaluation: pure step functions, fused multi-step calls, one visible loop.

`train_step(state, batch) -> (state, metrics)` serves every normalizer: BatchNorm's running
averages come back through the loss function's aux output (an empty collection for the others).
`train_and_evaluate` keeps the dataset on the device, gathers each batch there from a seeded
per-epoch permutation, and runs `config.steps_per_call` optimizer steps per compiled call with
`lax.scan`; the step index alone fixes the data order, so the result does not depend on how steps
are grouped into calls.

Re-running on the same workdir resumes from the latest checkpoint (see `resume`): the state, the
step (which fixes the position in the data order), the partial train-loss window and the elapsed
time all come back, so the resumed run writes the same metrics.jsonl as an uninterrupted one.
"""

from __future__ import annotations

import errno
import functools
import math
import os
import time
from typing import Any

from absl import logging
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ln_jax.training import checkpoint
from ln_jax.training import config_checks
from ln_jax import data as data_lib
from ln_jax import models
from ln_jax.training import optimizers
from ln_jax.training import parallel
from ln_jax.training import population
from ln_jax.training import resume
from ln_jax.training import rundir
from ln_jax.errors import Interrupted
from ln_jax.errors import UserError
from ln_jax.training.progress import Progress


class TrainState(train_state.TrainState):
  batch_stats: Any = flax.core.FrozenDict()
  # Static: leave the state as it was after a step whose loss or gradients are not finite
  # (config.on_nonfinite='skip'); off, the step costs nothing extra.
  skip_nonfinite: bool = flax.struct.field(pytree_node=False, default=False)


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def preprocess(images):
  """uint8 pixels (kept that way on the device: 4x less memory and gather traffic) to [0, 1]."""
  return jnp.asarray(images, jnp.float32) / 255.0


def create_train_state(config, model, key, example_images) -> TrainState:
  # Compiled once as a whole: run op by op, every initializer would compile on its own.
  variables = jax.jit(functools.partial(model.init, train=False))(key, preprocess(example_images))
  return TrainState.create(apply_fn=model.apply, params=variables['params'],
                           tx=optimizers.make_optimizer(config),
                           batch_stats=variables.get('batch_stats', flax.core.FrozenDict()),
                           skip_nonfinite=config.on_nonfinite == 'skip')


def _variables(state, params):
  variables = {'params': params}
  if state.batch_stats:
    variables['batch_stats'] = state.batch_stats
  return variables


def _loss_and_errors(logits, labels):
  """Per-example negative log-likelihood and 0/1 error."""
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return nll, (jnp.argmax(logits, -1) != labels).astype(jnp.float32)


def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
  """One optimizer step on `batch` ({'image': uint8 [B, ...], 'label': int [B]}).

  Metrics: 'loss', 'error' and 'nonfinite' (1 when the loss was not finite). With
  `state.skip_nonfinite`, a step with a non-finite loss or gradient changes nothing but the step
  count, reports loss and error 0 and counts as 'nonfinite'.
  """
  def loss_fn(params):
    logits, updates = state.apply_fn(_variables(state, params), preprocess(batch['image']),
                                     train=True, mutable=['batch_stats'])
    nll, errors = _loss_and_errors(logits, batch['label'])
    return jnp.mean(nll), (jnp.mean(errors), updates)

  (loss, (error, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  new_state = state.apply_gradients(grads=grads,
                                    batch_stats=updates.get('batch_stats', state.batch_stats))
  finite = jnp.isfinite(loss)
  if state.skip_nonfinite:
    finite &= _all_finite(grads)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    new_state = new_state.replace(params=keep(new_state.params, state.params),
                                  opt_state=keep(new_state.opt_state, state.opt_state),
                                  batch_stats=keep(new_state.batch_stats, state.batch_stats))
    loss, error = jnp.where(finite, loss, 0.0), jnp.where(finite, error, 0.0)
  return new_state, {'loss': loss, 'error': error, 'nonfinite': (~finite).astype(jnp.int32)}


def epoch_order(data_key, epoch, num_examples: int):
  """The seeded order in which epoch `epoch` visits the training set."""
  return jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples)


@functools.partial(jax.jit, static_argnames=('num_steps', 'batch_size', 'mesh'),
                   donate_argnums=(0,))
def train_steps(state, images, labels, order, position, window=None, *, num_steps: int,
                batch_size: int, mesh=None):
  """`num_steps` optimizer steps, batch i taken from `order` at (position + i) * batch_size.

  Returns the new state and `window` (default: `resume.empty_window()`) with the metrics of
  `train_step` added one step at a time, plus 'first_nonfinite': the step count (`state.step`
  after it) of the first step with a non-finite loss, or resume.NO_NONFINITE. Adding in step
  order inside the scan keeps the float sums, not only the state, independent of how the steps
  are grouped into calls. With a `mesh` (see `parallel`) each batch is split over its devices.
  """
  if window is None:
    window = resume.empty_window()

  def body(carry, i):
    state, window = carry
    idx = jax.lax.dynamic_slice_in_dim(order, (position + i) * batch_size, batch_size)
    idx = parallel.shard_batch(idx, mesh)
    state, metrics = train_step(state, {'image': images[idx], 'label': labels[idx]})
    state = parallel.keep_replicated(state, mesh)
    metrics['first_nonfinite'] = jnp.where(metrics['nonfinite'] > 0, state.step,
                                           resume.NO_NONFINITE).astype(jnp.int32)
    return (state, resume.accumulate(window, metrics)), None

  (state, window), _ = jax.lax.scan(body, (state, window), jnp.arange(num_steps))
  return state, window


@functools.partial(jax.jit, static_argnames=('batch_size', 'mesh'))
def evaluate(state, images, labels, *, batch_size: int, mesh=None):
  """Mean NLL and error over a whole split, in compiled batches (the last one wraps around and
  its repeated examples are masked out of the means)."""
  n = labels.shape[0]
  num_batches = -(-n // batch_size)
  idx = jnp.arange(num_batches * batch_size)
  weights = (idx < n).astype(jnp.float32).reshape(num_batches, batch_size)
  idx = (idx % n).reshape(num_batches, batch_size)

  def body(totals, xs):
    batch_idx, batch_weights = xs
    batch_idx = parallel.shard_batch(batch_idx, mesh)
    logits = state.apply_fn(_variables(state, state.params), preprocess(images[batch_idx]),
                            train=False)
    nll, errors = _loss_and_errors(logits, labels[batch_idx])
    return (totals[0] + jnp.sum(nll * batch_weights),
            totals[1] + jnp.sum(errors * batch_weights)), None

  (nll_sum, error_sum), _ = jax.lax.scan(body, (0.0, 0.0), (idx, weights))
  return {'loss': nll_sum / n, 'error': error_sum / n}


class Schedule:
  """Step arithmetic for a run: epochs, evaluation points and the size of each fused call."""

  def __init__(self, config, num_train: int):
    self.steps_per_epoch = num_train // config.batch_size
    self.total_steps = max(1, round(config.num_epochs * self.steps_per_epoch))
    if config.get('eval_every_epochs') is not None:
      self.eval_every = max(1, round(config.eval_every_epochs * self.steps_per_epoch))
    else:  # a fixed number per run, so a small-batch run shows metrics as early as a large one
      self.eval_every = max(1, -(-self.total_steps // config.get('num_evals', 20)))
    self.steps_per_call = config.steps_per_call
    self.checkpoint_every = max(1, round(config.checkpoint_every_epochs * self.steps_per_epoch))

  def next_chunk(self, step: int) -> int:
    """Steps to fuse from `step`: stop at an evaluation, an epoch end or the run's end."""
    next_eval = (step // self.eval_every + 1) * self.eval_every
    epoch_end = (step // self.steps_per_epoch + 1) * self.steps_per_epoch
    return min(self.steps_per_call, next_eval - step, epoch_end - step, self.total_steps - step)

  def is_eval_step(self, step: int) -> bool:
    return step % self.eval_every == 0 or step == self.total_steps

  def eval_steps(self) -> list[int]:
    """The steps the run evaluates at (and writes a metrics.jsonl line for), in order."""
    steps = list(range(self.eval_every, self.total_steps + 1, self.eval_every))
    return steps + [self.total_steps] if steps[-1:] != [self.total_steps] else steps

  def is_checkpoint_step(self, start: int, step: int) -> bool:
    """Whether the chunk from `start` to `step` crossed a checkpoint point or ended the run.

    Checkpoints go at chunk ends (which `next_chunk` fixes whatever `checkpoint_every` is), so
    where they go never changes how steps are grouped, nor any number the run reports.
    """
    return step // self.checkpoint_every > start // self.checkpoint_every or (
        step == self.total_steps)


def _to_float(tree) -> dict:
  return {k: float(v) for k, v in jax.device_get(tree).items()}


def _check_finite(config, loop: resume.LoopState, ckpt, workdir: str) -> None:
  """With on_nonfinite='stop', raises TrainingDiverged if the window saw a non-finite loss."""
  if config.on_nonfinite != 'stop' or not int(loop.window['nonfinite']):
    return
  good = ckpt.latest_step()
  where = (f'the last good checkpoint is step {good} in '
           f'{os.path.join(workdir, checkpoint.CHECKPOINT_DIR, str(good))}' if good is not None
           else 'no checkpoint was saved before it')
  raise TrainingDiverged(
      f'the training loss became non-finite at step {int(loop.window["first_nonfinite"])} '
      f'({where}); lower learning_rate (now {config.learning_rate}), set grad_clip_norm or '
      'on_nonfinite=skip, and rerun with --fresh or another --workdir')


def _record(config, state, loop: resume.LoopState, step: int, schedule: Schedule,
            eval_sets: dict, mesh=None) -> dict:
  """The metrics.jsonl line for an evaluation at `step` (wall-clock fields left to the caller)."""
  train = _to_float(loop.window)  # waits for the device
  counted = loop.window_steps - int(train['nonfinite'])  # skipped updates report no loss
  record = {'step': step, 'epoch': step / schedule.steps_per_epoch,
            'train_loss': train['loss'] / counted if counted else math.nan,
            'train_error': train['error'] / counted if counted else math.nan}
  if config.on_nonfinite == 'skip':
    record['skipped_steps'] = loop.skipped_steps + int(train['nonfinite'])
  eval_batch = config.batch_size if config.bn_eval_stats == 'batch' else config.eval_batch_size
  if mesh is not None:
    eval_batch = parallel.round_up(eval_batch, mesh)  # the padding is masked out of the means
  for name, (images, labels) in eval_sets.items():
    metrics = _to_float(evaluate(state, images, labels, batch_size=eval_batch, mesh=mesh))
    record[f'{name}_loss'], record[f'{name}_error'] = metrics['loss'], metrics['error']
  return record


def train_and_evaluate(config, workdir: str, fresh: bool = False) -> dict:
  """Trains `config` into `workdir` and returns the last evaluation's metrics.

  Resumes the run already in `workdir` when its config matches; `fresh` replaces it instead.
  Raises UserError, before anything in `workdir` changes, for a bad config, data or workdir, and
  Interrupted after SIGTERM or Ctrl-C made it save a checkpoint and stop. In a multi-process run
  every process trains and returns the same metrics; process 0 alone writes the run files.
  """
  config_checks.check_config(config)
  config = data_lib.with_absolute_dir(config)
  with parallel.together('the workdir check or loading the data'):
    resume.check_workdir(workdir)
    splits = data_lib.load_splits(config.data, config.seed)
    config_checks.check_config(config, num_train=len(splits['train']))
  mesh = parallel.make_mesh(config.get('num_devices', 0))
  parallel.check_divisible(config.batch_size, mesh)
  status, run_lock = resume.prepare_workdir(workdir, config, fresh)
  try:
    return _train(config, workdir, splits, mesh, status)
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    raise checkpoint.DiskFull(f'the disk holding {workdir} is full ({e.strerror}: '
                              f'{e.filename or "a run file"}); free space there and run the '
                              'same command again to resume') from None
  finally:
    run_lock.release()


def _train(config, workdir: str, splits: dict, mesh, status: str) -> dict:
  """train_and_evaluate once the workdir is checked, prepared and locked."""
  schedule = Schedule(config, len(splits['train']))
  if status == resume.COMPLETE:
    resume.check_finished_metrics(workdir, schedule.eval_steps())
    logging.info('%s holds this run, finished; nothing to do (--fresh runs it again)', workdir)
    return resume.read_summary(workdir)['final']
  ckpt = checkpoint.manager(workdir, config.checkpoint_keep)
  start_step = resume.choose_checkpoint(ckpt, workdir, schedule.eval_steps())

  init_key, data_key = jax.random.split(jax.random.PRNGKey(config.seed))
  model = models.create_model(config)
  train_images, train_labels = parallel.replicate(splits['train'], mesh)
  eval_sets = {name: parallel.replicate(s, mesh)
               for name, s in splits.items() if name != 'train' and len(s)}
  state = create_train_state(config, model, init_key, splits['train'].images[:1])
  state = parallel.replicate(state, mesh)
  logging.info('%s: %d parameters; %d steps (%d per epoch), evaluation every %d steps',
               config.model.name,
               sum(np.size(p) for p in jax.tree.leaves(state.params)),
               schedule.total_steps, schedule.steps_per_epoch, schedule.eval_every)
  logging.info('data parallel over %d device(s): %s', mesh.size, mesh.devices.tolist())

  state, loop = resume.restore(ckpt, start_step, state)
  # Placed as train_steps returns it, so its second call reuses the first one's program.
  loop.window = parallel.replicate(loop.window, mesh)
  step = int(state.step)
  dropped = resume.keep_metrics_through(workdir, step) if parallel.is_primary() else 0
  parallel.sync('keep_metrics_through')  # the others may read metrics.jsonl below
  if step or dropped:
    logging.info('resuming at step %d from %s (%d metrics lines after it dropped)', step,
                 ckpt.directory, dropped)

  def save():
    _check_finite(config, loop, ckpt, workdir)
    checkpoint.save(ckpt, step, loop.payload(state, loop.elapsed_s + progress.elapsed()),
                    keep=config.checkpoint_keep,
                    facts={'window_loss': float(jax.device_get(loop.window['loss']))})

  # BN's population statistics for evaluation, when asked for (the state is not changed).
  evaluation_state = population.evaluator(config, train_images, preprocess=preprocess, mesh=mesh)
  progress = Progress(schedule.total_steps, config.batch_size, config.log_every_seconds, step)
  writer = (rundir.MetricsWriter(workdir, config) if parallel.is_primary()
            else rundir.NoMetricsWriter())
  last, rate_steps, rate_start, order_epoch = {}, 0, time.time(), -1
  try:
    with resume.catch_stop_signals() as stop:
      while step < schedule.total_steps:
        if stop:
          if step and ckpt.latest_step() != step:
            save()
          raise Interrupted(f'{stop.name} at step {step}/{schedule.total_steps}; checkpoint in '
                            f'{ckpt.directory}; run the same command again to resume', stop.signum)
        epoch = step // schedule.steps_per_epoch
        if epoch != order_epoch:
          order = parallel.replicate(epoch_order(data_key, epoch, len(splits['train'])), mesh)
          order_epoch = epoch
        num_steps, start = schedule.next_chunk(step), step
        state, loop.window = train_steps(state, train_images, train_labels, order,
                                         step - epoch * schedule.steps_per_epoch, loop.window,
                                         num_steps=num_steps, batch_size=config.batch_size,
                                         mesh=mesh)
        loop.window_steps += num_steps
        rate_steps += num_steps
        step += num_steps
        progress.update(step, loop.window)
        if schedule.is_eval_step(step):
          _check_finite(config, loop, ckpt, workdir)
          record = _record(config, evaluation_state(state, step), loop, step, schedule,
                           eval_sets, mesh)
          record['elapsed_s'] = loop.elapsed_s + progress.elapsed()
          record['steps_per_s'] = rate_steps / max(time.time() - rate_start, 1e-9)
          writer.write(record)
          progress.report(record)
          last = record
          loop.skipped_steps = record.get('skipped_steps', 0)
          loop.window, loop.window_steps = parallel.replicate(resume.empty_window(), mesh), 0
          rate_steps, rate_start = 0, time.time()
        if schedule.is_checkpoint_step(start, step):
          save()
    writer.finish()
  finally:
    writer.close()
  if not last:  # resumed from the final checkpoint before summary.json was written
    last = (rundir.read_metrics(workdir) or [{}])[-1]
  if parallel.is_primary():
    rundir.write_json_atomic(f'{workdir}/{rundir.SUMMARY_FILE}',
                             {'final': last, 'total_steps': schedule.total_steps})
  return last
