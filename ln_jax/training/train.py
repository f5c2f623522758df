"""The training loop: one loop for every task, for one run or several seeds vmapped together.

`train_and_evaluate(config, workdir)` trains one run; `train_seeds(configs, workdirs)` trains
runs that differ only in their seed as one vmapped program (a state with a leading seed axis),
each seed writing its own, ordinary run directory. Both go through `_Loop`: the data stays on the
device (or streams from the host, see `tasks.Task`), `config.steps_per_call` optimizer steps run
per compiled call (`step.train_steps`), and the step index alone fixes the data order, so the
results do not depend on how steps are grouped into calls.

Re-running on the same workdir(s) resumes from the latest checkpoint (see `resume`): the state,
the step, the partial train-metric window and the elapsed time all come back, so the resumed run
writes the same metrics.jsonl as an uninterrupted one.
"""

from __future__ import annotations

import errno
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ln_jax import data as data_lib
from ln_jax import tasks
from ln_jax.errors import Interrupted
from ln_jax.errors import UserError
from ln_jax.training import checkpoint
from ln_jax.training import config_checks
from ln_jax.training import metrics_repair
from ln_jax.training import optimizers
from ln_jax.training import parallel
from ln_jax.training import pictures as pictures_lib
from ln_jax.training import population
from ln_jax.training import resume
from ln_jax.training import rundir
from ln_jax.training import signals
from ln_jax.training import step as step_lib
from ln_jax.training import window as window_lib
from ln_jax.training import workdir as workdir_lib
from ln_jax.training.progress import Progress
from ln_jax.training.schedule import Schedule

_RUN_KEY_STREAM = 0x72756E  # folded into the init key: the run's key for the model's draws


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def train_and_evaluate(config, workdir: str, fresh: bool = False) -> dict:
  """Trains `config` into `workdir` and returns the last evaluation's metrics.

  Resumes the run already in `workdir` when its config matches; `fresh` replaces it instead.
  Raises UserError, before anything in `workdir` changes, for a bad config, data or workdir, and
  Interrupted after SIGTERM or Ctrl-C made it save a checkpoint and stop. In a multi-process run
  every process trains and returns the same metrics; process 0 alone writes the run files.
  """
  return _train_runs([config], [workdir], fresh)[0]


def train_seeds(configs, workdirs: list[str], fresh: bool = False) -> list[dict]:
  """Trains configs that differ only in `seed` as one vmapped program, one run directory each,
  with the same lock, resume, checkpoints, mesh and `on_nonfinite` as separate runs; returns each
  run's last metrics. With on_nonfinite='stop', a seed whose loss diverges stops writing and
  saving (no summary.json) while the others go on; then `TrainingDiverged` names it."""
  def without_seed(config):
    d = config.to_dict()
    d.pop('seed')
    return d
  first = without_seed(configs[0])
  if any(without_seed(c) != first for c in configs[1:]):
    raise UserError('vmapped runs must differ only in their seed')
  if len({c.seed for c in configs}) != len(configs):
    raise UserError('vmapped runs need distinct seeds')
  return _train_runs(list(configs), list(workdirs), fresh, vmapped=True)


def _same_arrays(a: dict, b: dict) -> bool:
  return a.keys() == b.keys() and all(
      jax.tree.structure(a[k]) == jax.tree.structure(b[k]) and all(
          np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a[k]), jax.tree.leaves(b[k])))
      for k in a)


def _load_data(task, configs):
  """Each seed's splits, loaded once when they are identical (real data); (splits, per_seed)."""
  first = task.load_splits(configs[0])
  if 'train' not in first:
    raise UserError(f"task {task.name!r}: load_splits returned no 'train' split (got "
                    f'{", ".join(first) or "none"}); return a dict with train, valid, test')
  others = [task.load_splits(c) for c in configs[1:]]
  if all(_same_arrays(first, o) for o in others):
    return [first], False
  return [first] + others, True


def _train_runs(configs, workdirs, fresh: bool, vmapped: bool = False) -> list[dict]:
  config = configs[0]
  task = tasks.load_task(config)
  for c in configs:
    config_checks.check_config(c, task)
  configs = [data_lib.with_absolute_dir(c) for c in configs]
  with parallel.together('the workdir check or loading the data'):
    for workdir in workdirs:
      workdir_lib.check_workdir(workdir)
    splits, per_seed = _load_data(task, configs)
    num_train = config_checks.num_examples(splits[0]['train'], 'train', task)
    for c in configs:
      config_checks.check_config(c, task, num_train=num_train)
    config_checks.check_task_outputs(task, config, splits[0]['train'])
  mesh = parallel.make_mesh(config.num_devices)
  parallel.check_divisible(config.batch_size, mesh)
  prepared = []
  try:
    for c, workdir in zip(configs, workdirs):
      prepared.append(workdir_lib.prepare_workdir(workdir, c, fresh, task))
    loop = _Loop(task, configs, workdirs, [status for status, _ in prepared], splits, per_seed,
                 mesh, vmapped)
    return loop.run()
  except OSError as e:
    if e.errno not in (errno.ENOSPC, errno.EDQUOT):
      raise
    raise checkpoint.DiskFull(f'the disk holding {workdirs[0]} is full ({e.strerror}: '
                              f'{e.filename or "a run file"}); free space there and run the '
                              'same command again to resume') from None
  finally:
    for _, run_lock in prepared:
      run_lock.release()


def _take(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


class _Loop:
  """The loop over compiled calls for one run, or several seeds with a leading seed axis."""

  def __init__(self, task, configs, workdirs, statuses, splits, per_seed, mesh, vmapped):
    self.task, self.configs, self.workdirs, self.mesh = task, configs, workdirs, mesh
    self.config = configs[0]
    self.vmapped = vmapped
    self.statuses = statuses
    self.per_seed = per_seed
    self.host_train = splits[0]['train'] if not per_seed else step_lib.stack(
        [s['train'] for s in splits])
    self.num_train = config_checks.num_examples(splits[0]['train'], 'train', task)
    self.schedule = Schedule(self.config, self.num_train)
    self.eval_sets = {}
    for name in splits[0]:
      if name == 'train' or not config_checks.num_examples(splits[0][name], name, task):
        continue
      data = splits[0][name] if not per_seed else step_lib.stack([s[name] for s in splits])
      self.eval_sets[name] = parallel.replicate(data, mesh)
    self.train_data = (None if task.stream_from_host
                       else parallel.replicate(self.host_train, mesh))

  # ---- setting up: states, checkpoints, resume --------------------------------------------
  def _first_examples(self, n: int):
    """The first `n` training examples (of the first seed's data when each seed has its own)."""
    train = _take(self.host_train, 0) if self.per_seed else self.host_train
    return jax.tree.map(lambda a: a[:n], train)

  def _initial_states(self):
    model = self.model = self.task.create_model(self.config)
    tx = optimizers.make_optimizer(self.config)
    example = self._first_examples(1)
    states, data_keys = [], []
    for c in self.configs:
      init_key, data_key = jax.random.split(jax.random.PRNGKey(c.seed))
      run_key = jax.random.fold_in(init_key, _RUN_KEY_STREAM)
      states.append(step_lib.create_train_state(c, self.task, model, tx, init_key, run_key,
                                                example))
      data_keys.append(data_key)
    logging.info('task %s, model %s: %d parameters; %d steps (%d per epoch), evaluation every '
                 '%d steps%s', self.task.name, type(model).__name__,
                 sum(np.size(p) for p in jax.tree.leaves(states[0].params)),
                 self.schedule.total_steps, self.schedule.steps_per_epoch,
                 self.schedule.eval_every,
                 f'; {len(states)} seeds vmapped' if self.vmapped else '')
    logging.info('data parallel over %d device(s): %s', self.mesh.size,
                 self.mesh.devices.tolist())
    return states, data_keys

  def _choose_start(self, ckpts) -> int | None:
    """The checkpoint step every run resumes from (the same for all seeds), or None."""
    eval_steps = self.schedule.eval_steps()
    chosen = [resume.choose_checkpoint(m, w, eval_steps) for m, w in zip(ckpts, self.workdirs)]
    if len(set(chosen)) == 1:
      return chosen[0]
    common = None if None in chosen else min(chosen)
    if common is not None and all(common in m.all_steps() and
                                  checkpoint.verify(str(m.directory), common) is None
                                  for m in ckpts):
      logging.warning('the seeds were saved at different steps (%s); all resume from step %d',
                      chosen, common)
      return common
    logging.warning('the seeds have no checkpoint step in common (%s); they start again from '
                    'step 0', chosen)
    if parallel.is_primary():
      with checkpoint.quiet():
        for m in ckpts:
          for s in m.all_steps():
            m.delete(s)
    return None

  def run(self) -> list[dict]:
    schedule = self.schedule
    if all(s == workdir_lib.COMPLETE for s in self.statuses):
      for w in self.workdirs:
        metrics_repair.check_finished_metrics(w, schedule.eval_steps(),
                                              schedule.eval_steps_up_to_0_2())
      logging.info('%s holds this run, finished; nothing to do (--fresh runs it again)',
                   ', '.join(self.workdirs))
      return [workdir_lib.read_summary(w)['final'] for w in self.workdirs]
    if any(s == workdir_lib.COMPLETE for s in self.statuses):  # train the unfinished seeds
      todo = [i for i, s in enumerate(self.statuses) if s != workdir_lib.COMPLETE]
      sub = _Loop.__new__(_Loop)
      sub.__dict__.update(self.__dict__)
      sub.configs = [self.configs[i] for i in todo]
      sub.workdirs = [self.workdirs[i] for i in todo]
      sub.statuses = [self.statuses[i] for i in todo]
      if self.per_seed:
        sub.host_train = jax.tree.map(lambda x: x[np.asarray(todo)], self.host_train)
        sub.train_data = None if self.task.stream_from_host else parallel.replicate(
            sub.host_train, self.mesh)
        sub.eval_sets = {k: jax.tree.map(lambda x: x[np.asarray(todo)], v)
                         for k, v in self.eval_sets.items()}
      trained = dict(zip(todo, sub.run()))
      return [trained[i] if i in trained else workdir_lib.read_summary(w)['final']
              for i, w in enumerate(self.workdirs)]
    return self._train()

  def _train(self) -> list[dict]:
    cfg, schedule, task, mesh = self.config, self.schedule, self.task, self.mesh
    num_runs = len(self.configs)
    ckpts = [checkpoint.manager(w, cfg.checkpoint_keep) for w in self.workdirs]
    start_step = self._choose_start(ckpts)
    states, data_keys = self._initial_states()
    example = self._first_examples(cfg.batch_size)
    self.unroll = jax.default_backend() == 'cpu' and step_lib.has_convolution(states[0], example)
    if self.unroll:
      logging.info('the model has convolutions: one step per compiled call, outside a loop '
                   '(XLA:CPU runs convolutions inside a loop several times slower)')
    empty = window_lib.empty_window(task.metric_names)
    restored = [resume.restore(m, start_step, s, empty) for m, s in zip(ckpts, states)]
    loops = [loop for _, loop in restored]
    if self.vmapped:
      state = step_lib.stack([s for s, _ in restored])
      window = step_lib.stack([loop.window for loop in loops])
    else:
      state, window = restored[0][0], loops[0].window
    state = parallel.replicate(state, mesh)
    # Placed as train_steps returns it, so its second call reuses the first one's program.
    window = parallel.replicate(window, mesh)
    step = int(start_step or 0)
    for w, m in zip(self.workdirs, ckpts):
      dropped = metrics_repair.keep_metrics_through(w, step) if parallel.is_primary() else 0
      if step or dropped:
        logging.info('resuming at step %d from %s (%d metrics lines after it dropped)', step,
                     m.directory, dropped)
    parallel.sync('keep_metrics_through')  # the others may read metrics.jsonl below

    seeds = [c.seed for c in self.configs] if self.vmapped else None
    pop_data = self.train_data if self.train_data is not None else parallel.replicate(
        self.host_train, mesh)
    evaluation_state = population.evaluator(cfg, task, pop_data, seeds=seeds,
                                            shared_data=not self.per_seed, mesh=mesh)
    select = task.select_by
    progress = Progress(schedule.total_steps, cfg.batch_size * num_runs, cfg.log_every_seconds,
                        step, shown=tuple(dict.fromkeys(('train_loss', f'valid_{select}',
                                                         'test_loss', f'test_{select}'))))
    writers = [rundir.MetricsWriter(w, c, task) if parallel.is_primary()
               else rundir.NoMetricsWriter() for c, w in zip(self.configs, self.workdirs)]
    diverged = set()
    last = [{} for _ in self.configs]
    window_steps = loops[0].window_steps
    empty_windows = step_lib.stack([empty] * num_runs) if self.vmapped else empty
    rate_steps, rate_start, order_epoch, orders = 0, time.time(), -1, None

    def save():
      host = jax.device_get(state) if self.vmapped else state
      host_window = jax.device_get(window)
      for i in range(num_runs):
        if i in diverged:
          continue
        self._check_finite(_take(host_window, i) if self.vmapped else host_window, ckpts[i],
                           i, diverged)
        if i in diverged:
          continue
        loop = loops[i]
        loop.window = _take(host_window, i) if self.vmapped else window
        loop.window_steps = window_steps
        one = _take(host, i) if self.vmapped else host
        checkpoint.save(ckpts[i], step, loop.payload(one, loop.elapsed_s + progress.elapsed()),
                        keep=cfg.checkpoint_keep,
                        facts={'window_loss': float(jax.device_get(loop.window['loss']))})

    try:
      with signals.catch_stop_signals() as stop:
        while step < schedule.total_steps:
          if stop:
            if step and ckpts[0].latest_step() != step:
              save()
            raise Interrupted(f'{stop.name} at step {step}/{schedule.total_steps}; checkpoint '
                              f'in {ckpts[0].directory}; run the same command again to resume',
                              stop.signum)
          epoch = step // schedule.steps_per_epoch
          if epoch != order_epoch:
            orders = [step_lib.epoch_order(k, epoch, self.num_train) for k in data_keys]
            orders = jnp.stack(orders) if self.vmapped else orders[0]
            if task.stream_from_host:
              orders = np.asarray(jax.device_get(orders))
            else:
              orders = parallel.replicate(orders, mesh)
            order_epoch = epoch
          num_steps, start = schedule.next_chunk(step), step
          position = step - epoch * schedule.steps_per_epoch
          state, window = self._steps(state, orders, position, window, num_steps)
          window_steps += num_steps
          rate_steps += num_steps
          step += num_steps
          progress.update(step, window)
          if schedule.is_eval_step(step):
            host_window = jax.device_get(window)  # waits for the device
            for i in range(num_runs):
              if i not in diverged:
                self._check_finite(_take(host_window, i) if self.vmapped else host_window,
                                   ckpts[i], i, diverged)
            if len(diverged) == num_runs:
              break
            evaluated = evaluation_state(state, step)
            evals = self._evaluate(evaluated)
            seconds = max(time.time() - rate_start, 1e-9)
            for i in range(num_runs):
              if i in diverged:
                continue
              record = self._record(_take(host_window, i) if self.vmapped else host_window,
                                    window_steps, loops[i], step,
                                    {k: _take(v, i) if self.vmapped else v
                                     for k, v in evals.items()})
              record['elapsed_s'] = loops[i].elapsed_s + progress.elapsed()
              record['steps_per_s'] = rate_steps / seconds
              writers[i].write(record)
              last[i] = record
              loops[i].skipped_steps = record.get('skipped_steps', 0)
            if task.pictures is not None:
              self._pictures(evaluated, step, writers, diverged)
            progress.report(next(last[i] for i in range(num_runs) if i not in diverged))
            window = parallel.replicate(empty_windows, mesh)
            window_steps = 0
            rate_steps, rate_start = 0, time.time()
          if schedule.is_checkpoint_step(start, step):
            save()
      for i, writer in enumerate(writers):
        if i not in diverged:
          writer.finish()
    finally:
      for writer in writers:
        writer.close()
    for i, w in enumerate(self.workdirs):
      if i in diverged:
        continue
      if not last[i]:  # resumed from the final checkpoint before summary.json was written
        last[i] = (rundir.read_metrics(w) or [{}])[-1]
      if parallel.is_primary():
        rundir.write_json_atomic(f'{w}/{rundir.SUMMARY_FILE}',
                                 {'final': last[i], 'total_steps': schedule.total_steps})
    if diverged:
      seeds_text = ', '.join(str(self.configs[i].seed) for i in sorted(diverged))
      raise TrainingDiverged(
          f'the training loss became non-finite for seed(s) {seeds_text}; lower learning_rate '
          f'(now {cfg.learning_rate}), set grad_clip_norm or on_nonfinite=skip, and rerun with '
          '--fresh or another --workdir')
    return last

  # ---- one compiled call, one evaluation, one record --------------------------------------
  def _steps(self, state, orders, position, window, num_steps):
    if self.unroll:  # one unrolled step per call: the same program whatever the chunk size
      for i in range(num_steps):
        state, window = self._call(state, orders, position + i, window, 1)
      return state, window
    return self._call(state, orders, position, window, num_steps)

  def _call(self, state, orders, position, window, num_steps):
    cfg = self.config
    data, order = self.train_data, orders
    if self.task.stream_from_host:  # gather this call's batches on the host
      size = cfg.batch_size
      span = slice(position * size, (position + num_steps) * size)

      def gather(arrays, order_1d):
        idx = order_1d[span]
        return jax.tree.map(
            lambda a: a[idx].reshape((num_steps, size) + a.shape[1:]), arrays)
      if self.vmapped:
        data = step_lib.stack([
            gather(_take(self.host_train, i) if self.per_seed else self.host_train, orders[i])
            for i in range(len(self.configs))])
      else:
        data = gather(self.host_train, orders)
      data, order = parallel.replicate(data, self.mesh), None
    kwargs = dict(num_steps=num_steps, batch_size=cfg.batch_size, mesh=self.mesh,
                  unroll=self.unroll)
    if self.vmapped:
      return step_lib.vmapped_train_steps(state, data, order, position, window,
                                          shared_data=not self.per_seed, **kwargs)
    return step_lib.train_steps(state, data, order, position, window, **kwargs)

  def _evaluate(self, state) -> dict:
    cfg = self.config
    eval_batch = (cfg.batch_size if cfg.norm_options.eval_stats == 'batch'
                  else cfg.eval_batch_size)
    if self.mesh is not None:
      eval_batch = parallel.round_up(eval_batch, self.mesh)  # padding is masked out of means
    out = {}
    for name, data in self.eval_sets.items():
      if self.vmapped:
        metrics = step_lib.vmapped_evaluate(state, data, batch_size=eval_batch, mesh=self.mesh,
                                            unroll=self.unroll, shared_data=not self.per_seed)
      else:
        metrics = step_lib.evaluate(state, data, batch_size=eval_batch, mesh=self.mesh,
                                    unroll=self.unroll)
      out[name] = jax.device_get(metrics)
    return out

  def _pictures(self, state, step: int, writers, diverged: set) -> None:
    """Each run's `Task.pictures` of the evaluated `state` into its run directory."""
    final = step == self.schedule.total_steps
    for i, config in enumerate(self.configs):
      if i not in diverged:
        one = _take(state, i) if self.vmapped else state
        writers[i].write_pictures(pictures_lib.draw(self.task, self.model, config, one), step,
                                  final)

  def _record(self, train, window_steps: int, loop, step: int, evals: dict) -> dict:
    """The metrics.jsonl line for an evaluation at `step` (wall-clock fields left to the caller)."""
    counted = window_steps - int(train['nonfinite'])  # skipped updates report no metrics
    record = {'step': step, 'epoch': step / self.schedule.steps_per_epoch}
    for name in self.task.metric_names:
      record[f'train_{name}'] = float(train[name]) / counted if counted else math.nan
    if self.config.on_nonfinite == 'skip':
      record['skipped_steps'] = loop.skipped_steps + int(train['nonfinite'])
    for split, metrics in evals.items():
      for name in self.task.metric_names:
        record[f'{split}_{name}'] = float(metrics[name])
    return record

  def _check_finite(self, window, ckpt, i: int, diverged: set) -> None:
    """With on_nonfinite='stop': a single run raises TrainingDiverged if its window saw a
    non-finite loss; a seed of a vmapped group is marked diverged instead."""
    if self.config.on_nonfinite != 'stop' or not int(window['nonfinite']):
      return
    if self.vmapped:
      logging.error('seed %d diverged at step %d; it stops here, the other seeds go on',
                    self.configs[i].seed, int(window['first_nonfinite']))
      diverged.add(i)
      return
    good = ckpt.latest_step()
    where = (f'the last good checkpoint is step {good} in '
             f'{os.path.join(self.workdirs[i], checkpoint.CHECKPOINT_DIR, str(good))}'
             if good is not None else 'no checkpoint was saved before it')
    raise TrainingDiverged(
        f'the training loss became non-finite at step {int(window["first_nonfinite"])} '
        f'({where}); lower learning_rate (now {self.config.learning_rate}), set grad_clip_norm '
        'or on_nonfinite=skip, and rerun with --fresh or another --workdir')
