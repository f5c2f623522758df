"""Resuming a run: what a workdir already holds, and what a checkpoint carries besides the state.

Re-running the same command on a workdir resumes its run; nothing is written or deleted until every
check has passed, and then only by process 0 of a multi-process run (see `prepare_workdir`). A
workdir whose config.json differs from the requested config (in any key but `IGNORED_KEYS`) is
refused unless `--fresh` asks to replace it. When a run resumes from a checkpoint, the
metrics.jsonl lines after the checkpoint's step are dropped, so that the replayed steps write them
again exactly once. Each checkpoint also holds the partial sums of the training metrics since the
last evaluation, so a run stopped between two evaluations reports the same train_loss once
resumed.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import threading

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ln_jax.training import checkpoint
from ln_jax.training import lock
from ln_jax.training import parallel
from ln_jax.training import rundir
from ln_jax.errors import UserError

# Keys that change neither the numbers a run produces nor where they are written.
IGNORED_KEYS = ('log_every_seconds', 'checkpoint_every_epochs', 'checkpoint_keep')
EVENTS_GLOB = 'events.out.tfevents.*'
WALL_CLOCK_KEYS = ('elapsed_s', 'steps_per_s')  # metrics that differ between identical runs

NEW, RESUME, COMPLETE = 'new', 'resume', 'complete'
NO_NONFINITE = np.iinfo(np.int32).max  # 'first_nonfinite' of steps whose losses were all finite


def check_workdir(workdir: str) -> None:
  """Fails unless a run can be read and written at `workdir`; creates nothing."""
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise UserError(f'workdir {workdir} exists and is not a directory; choose another '
                      '--workdir')
    if not os.access(workdir, os.R_OK | os.W_OK | os.X_OK):
      raise UserError(f'workdir {workdir} is not readable and writable; fix its permissions or '
                      'choose another --workdir')
    return
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f'cannot create workdir {workdir}: {parent} is not a writable directory; '
                    'choose another --workdir')


def config_differences(saved: dict, config) -> list[str]:
  """'key: old -> new' for each result-changing key where `config` differs from `saved`."""
  old = rundir.flatten(saved)
  new = rundir.flatten(json.loads(json.dumps(config.to_dict())))  # the form config.json stores
  missing = '(absent)'
  return [f'{key}: {old.get(key, missing)} -> {new.get(key, missing)}'
          for key in sorted(set(old) | set(new))
          if key not in IGNORED_KEYS and old.get(key, missing) != new.get(key, missing)]


def _read_json(workdir: str, name: str) -> dict:
  path = os.path.join(workdir, name)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path} ({e}); pass --fresh to replace the run in {workdir}, '
                    'or choose another --workdir') from None


def _run_files(workdir: str) -> list[str]:
  names = [rundir.CONFIG_FILE, rundir.METRICS_FILE, rundir.SUMMARY_FILE, checkpoint.CHECKPOINT_DIR]
  found = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  return found + sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, EVENTS_GLOB)))


def existing_run(workdir: str, config, fresh: bool) -> str:
  """NEW, RESUME or COMPLETE: what running `config` in `workdir` means. Raises if the workdir
  holds a different run and `fresh` is not set. Reads only."""
  if fresh or not os.path.isdir(workdir):
    return NEW
  found = _run_files(workdir)
  if not found:
    return NEW
  if rundir.CONFIG_FILE not in found:
    raise UserError(f'workdir {workdir} holds run files ({", ".join(found)}) but no '
                    f'{rundir.CONFIG_FILE}; pass --fresh to replace them, or choose another '
                    '--workdir')
  saved = _read_json(workdir, rundir.CONFIG_FILE)
  differences = config_differences(saved.get('config', {}), config)
  if differences:
    shown = '; '.join(differences[:6]) + ('; ...' if len(differences) > 6 else '')
    raise UserError(f'workdir {workdir} holds a run with a different config ({shown}); pass '
                    '--fresh to replace it, or choose another --workdir')
  commit = rundir.git_commit()
  if saved.get('git_commit') and commit and saved['git_commit'] != commit:
    logging.warning('resuming a run started with code at %s; the code is now at %s',
                    saved['git_commit'], commit)
  return COMPLETE if rundir.is_complete(workdir) else RESUME


def prepare_workdir(workdir: str, config, fresh: bool):
  """Checks `workdir` against `config`, takes its lock and only then changes it.

  Returns `existing_run`'s status and the `lock.FolderLock` to release when the run ends (not
  taken for a finished run, which is only read, nor on the processes other than 0). In a
  multi-process run every process checks, and all get the same status or all stop: each reads the
  workdir before process 0, alone, locks, clears or writes it, and waits for it to finish.
  """
  with parallel.together('the workdir check'):
    status = existing_run(workdir, config, fresh)
  parallel.check_same((os.path.abspath(workdir), status),
                      f'the processes see different runs in --workdir {workdir}: a multi-process '
                      'run needs one --workdir, on a filesystem every process shares')
  run_lock = lock.FolderLock(workdir, 'workdir', 'another process is training this run: wait '
                             'for it to finish, stop it, or choose another --workdir')
  if status == COMPLETE:
    return status, run_lock
  with parallel.together('locking the workdir'):
    if parallel.is_primary():
      make_workdir(workdir)
      run_lock.acquire()
      try:
        # Read again under the lock: the process that held it may have changed the run.
        if existing_run(workdir, config, fresh) != status:
          raise UserError(f'the run in {workdir} changed while this process started; run the '
                          'same command again')
        if fresh and os.path.isdir(workdir):
          clear_run(workdir)
        if status == NEW:
          rundir.write_json_atomic(os.path.join(workdir, rundir.CONFIG_FILE),
                                   rundir.describe_run(config))
      except BaseException:
        run_lock.release()
        raise
  parallel.sync('prepare_workdir')
  return status, run_lock


def make_workdir(workdir: str) -> None:
  """Creates `workdir` (and its parents), or raises UserError saying why it cannot."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create workdir {workdir} ({e.strerror}); choose another '
                    '--workdir') from None


def read_summary(workdir: str) -> dict:
  return _read_json(workdir, rundir.SUMMARY_FILE)


def clear_run(workdir: str) -> None:
  """Deletes what a run writes (and only that) from `workdir`."""
  for name in _run_files(workdir):
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
  logging.info('--fresh: removed the previous run from %s', workdir)


def keep_metrics_through(workdir: str, step: int) -> int:
  """Rewrites metrics.jsonl (atomically) keeping its whole lines up to `step`, in step order, and
  stopping at the first damaged one; returns how many lines went.

  A line cut short by a crash is dropped too; it can only be the last one.
  """
  lines = rundir.metrics_lines(workdir)
  kept, last = [], 0
  for line in lines:
    record, _ = rundir.parse_metrics_line(line)
    if record is None or not last < record['step'] <= step:
      break
    kept.append(line)
    last = record['step']
  if len(kept) != len(lines):
    rundir.write_text_atomic(os.path.join(workdir, rundir.METRICS_FILE), ''.join(kept))
  return len(lines) - len(kept)


def first_damage(workdir: str, eval_steps: list[int]) -> tuple[int, str] | None:
  """The first metrics.jsonl line that is damaged, missing or out of place, as (the step whose
  line it should be, a description naming the file and line), or None when all are sound.

  `eval_steps` are the steps the run evaluates at, in order: line i belongs to step i.
  """
  for i, line in enumerate(rundir.metrics_lines(workdir)):
    record, problem = rundir.parse_metrics_line(line)
    expected = eval_steps[i] if i < len(eval_steps) else eval_steps[-1] + 1
    if record is not None and record['step'] != expected:
      problem = (f'it is the line of step {record["step"]} where the line of step {expected} '
                 'belongs' if i < len(eval_steps) else 'the run has no more evaluations')
    if problem:
      return expected, rundir.describe_line(workdir, i + 1, line, problem)
  return None


def check_finished_metrics(workdir: str, eval_steps: list[int]) -> None:
  """Raises UserError naming the first damaged metrics.jsonl line of a finished run."""
  damage = first_damage(workdir, eval_steps)
  if damage:
    raise UserError(f'{damage[1]}; the run is finished, so resuming cannot write it again: '
                    'repair the line, or pass --fresh to train the run again')


def empty_window() -> dict:
  """Sums of `train.train_steps` metrics since the last evaluation."""
  return {'loss': np.zeros((), np.float32), 'error': np.zeros((), np.float32),
          'nonfinite': np.zeros((), np.int32), 'first_nonfinite': np.array(NO_NONFINITE, np.int32)}


@jax.jit
def accumulate(window: dict, sums: dict) -> dict:
  return {k: jnp.minimum(window[k], v) if k == 'first_nonfinite' else window[k] + v
          for k, v in sums.items()}


class LoopState:
  """What the training loop carries besides the train state; all of it goes into checkpoints."""

  def __init__(self, window=None, window_steps=0, elapsed_s=0.0, skipped_steps=0):
    self.window = empty_window() if window is None else window
    self.window_steps = int(window_steps)      # steps summed in `window`
    self.elapsed_s = float(elapsed_s)          # training time before this process started
    self.skipped_steps = int(skipped_steps)    # on_nonfinite='skip': updates skipped so far

  def payload(self, state, elapsed_s: float) -> dict:
    """What a checkpoint holds, with `elapsed_s` the training time up to it."""
    return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state,
            'batch_stats': state.batch_stats, 'window': self.window,
            'window_steps': np.array(self.window_steps, np.int32),
            'skipped_steps': np.array(self.skipped_steps, np.int32),
            'elapsed_s': np.array(elapsed_s, np.float64)}


def choose_checkpoint(mngr, workdir: str, eval_steps: list[int]) -> int | None:
  """The step of the newest checkpoint in `mngr` that verifies against its checksums and comes
  before the first damaged metrics.jsonl line; None to start from scratch (there is none).

  Each checkpoint that fails verification gets one warning line; it and the checkpoints after the
  one chosen are deleted (by process 0), since the steps after that one are trained again. A
  damaged metrics line with a checkpoint after it makes the run go back to an older checkpoint and
  write the line again, with one warning. Raises UserError when checkpoints exist but none
  verifies, or none comes before the damaged line. Runs before the model is built, so that these
  errors come at once.
  """
  folder = str(mngr.directory)
  steps = sorted(mngr.all_steps(), reverse=True)
  damage = first_damage(workdir, eval_steps)
  before = damage[0] if damage else None
  if damage and steps and steps[0] >= before:
    if steps[-1] >= before:
      raise UserError(f'{damage[1]}; it comes before checkpoint {steps[-1]}, so resuming cannot '
                      f'write it again: repair the line, or delete {folder} to train the run '
                      'again from step 0 (or pass --fresh)')
    logging.warning('%s; resuming from a checkpoint before it to write it again', damage[1])
  usable = [s for s in steps if before is None or s < before]
  chosen = None
  for step in usable:
    problem = checkpoint.verify(folder, step)
    if problem is None:
      chosen = step
      break
    logging.warning('checkpoint %s fails verification (%s); falling back to an older one',
                    os.path.join(folder, str(step)), problem)
  if chosen is None and usable:
    raise UserError(f'no checkpoint in {folder} verifies (steps {", ".join(map(str, usable))}; '
                    'see the warnings above); delete the folder to train the run again from '
                    'step 0, or pass --fresh')
  if parallel.is_primary():
    with checkpoint.quiet():
      for step in steps:
        if chosen is None or step > chosen:
          mngr.delete(step)
  parallel.sync('choose_checkpoint: dropped checkpoints')
  return chosen


def restore(mngr, chosen: int | None, state):
  """(state, LoopState) from checkpoint `chosen` (see `choose_checkpoint`), or from scratch."""
  if chosen is None:
    return state, LoopState()
  folder = str(mngr.directory)
  try:
    saved = checkpoint.restore(mngr, chosen, LoopState().payload(state, 0.0))
  except Exception as e:  # orbax raises many types for a checkpoint that does not fit
    raise UserError(f'cannot restore the checkpoint {os.path.join(folder, str(chosen))} '
                    f'({type(e).__name__}: {str(e)[:200]}); pass --fresh to start the run '
                    'over') from None
  facts = checkpoint.read_manifest(os.path.join(folder, str(chosen)))
  if (int(saved['step']) != chosen
      or facts.get('window_loss') != float(jax.device_get(saved['window']['loss']))):
    raise UserError(f'checkpoint {os.path.join(folder, str(chosen))} restored other values than '
                    'were saved; pass --fresh to start the run over')
  state = state.replace(step=saved['step'], params=saved['params'],
                        opt_state=saved['opt_state'], batch_stats=saved['batch_stats'])
  return state, LoopState(saved['window'], saved['window_steps'], saved['elapsed_s'],
                          saved['skipped_steps'])


def metrics_differences(workdir_a: str, workdir_b: str) -> list[str]:
  """How two runs' metrics.jsonl differ, line by line, wall-clock fields aside."""
  def lines(workdir):
    return [json.dumps({k: v for k, v in record.items() if k not in WALL_CLOCK_KEYS})
            for record in rundir.read_metrics(workdir)]
  a, b = lines(workdir_a), lines(workdir_b)
  differences = [f'line {i + 1}: {x} != {y}' for i, (x, y) in enumerate(zip(a, b)) if x != y]
  if len(a) != len(b):
    differences.append(f'{len(a)} lines in {workdir_a}, {len(b)} in {workdir_b}')
  return differences


class StopRequest:
  """Set by SIGTERM or SIGINT (Ctrl-C) while `catch_stop_signals` is active."""

  def __init__(self):
    self.signum = None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  def __bool__(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def catch_stop_signals():
  """Turns SIGTERM and Ctrl-C into a request the training loop answers at its next step
  boundary (saving a checkpoint), instead of killing it mid-write. A second signal acts as usual."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request  # signal handlers can only be installed from the main thread
    return
  signums = (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in signums}

  def handler(signum, frame):
    del frame
    request.signum = signum
    for s in signums:
      signal.signal(s, previous[s])
    logging.warning('%s received: saving a checkpoint after the current steps, then stopping '
                    '(send it again to stop at once)', signal.Signals(signum).name)

  for s in signums:
    signal.signal(s, handler)
  try:
    yield request
  finally:
    for s in signums:
      signal.signal(s, previous[s])
