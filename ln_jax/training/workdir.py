"""The run's folder: whether a run can be written there, what it already holds, its lock.

Re-running the same command on a workdir resumes its run; nothing is written or deleted until every
check has passed, and then only by process 0 of a multi-process run (see `prepare_workdir`). A
workdir whose config.json differs from the requested config (in any key but `IGNORED_KEYS`) is
refused unless `--fresh` asks to replace it.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

from absl import logging

from ln_jax.training import checkpoint
from ln_jax.training import lock
from ln_jax.training import parallel
from ln_jax.training import rundir
from ln_jax.errors import UserError

# Keys that change neither the numbers a run produces nor where they are written.
IGNORED_KEYS = ('log_every_seconds', 'checkpoint_every_epochs', 'checkpoint_keep')
EVENTS_GLOB = 'events.out.tfevents.*'

NEW, RESUME, COMPLETE = 'new', 'resume', 'complete'


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


def prepare_workdir(workdir: str, config, fresh: bool, task):
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
                                   rundir.describe_run(config, task))
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
