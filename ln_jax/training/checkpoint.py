"""Orbax checkpoints of the training state under <workdir>/checkpoints/<step>.

This is the one module of ln_jax that imports orbax (`_orbax`; the loop, resume, the scripts and
the tests all go through the functions here), so moving to orbax's coming v1 API
(`orbax.checkpoint.v1`) changes this file alone; `.ci/run` checks that no other file imports it.
Orbax is imported on first use: a run that stops at a config or data error does not wait for it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging as pylogging
import os
import shutil
import sys

from absl import logging
import jax

from ln_jax.errors import UserError
from ln_jax.training import rundir

CHECKPOINT_DIR = 'checkpoints'
_QUIET_LOOP_ERRORS = False  # see _ignore_closed_event_loop
MANIFEST_FILE = 'sha256sums.json'  # checksums of a checkpoint's files, written after them


def _orbax():
  """`orbax.checkpoint`, imported on first use."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  return ocp


@contextlib.contextmanager
def quiet(level=logging.WARNING):
  """Orbax logs every phase of its work at INFO; keep the terminal for training progress."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(level)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


class Checkpoints:
  """The checkpoints of one run directory: orbax's CheckpointManager behind the few methods the
  loop and resume use, so that no other module holds an orbax object."""

  def __init__(self, orbax_manager):
    self._orbax = orbax_manager

  @property
  def directory(self):
    return self._orbax.directory

  def all_steps(self) -> list[int]:
    return list(self._orbax.all_steps())

  def latest_step(self) -> int | None:
    return self._orbax.latest_step()

  def delete(self, step: int) -> None:
    self._orbax.delete(step)


def manager(workdir: str, keep: int) -> Checkpoints:
  """The `Checkpoints` of <workdir>/checkpoints.

  Orbax keeps one checkpoint more than `keep`: `save` deletes the oldest only once the new one and
  its checksums are on disk, so a save that fails (a full disk) leaves the previous one usable.
  """
  ocp = _orbax()
  # Orbax writes each step to a temporary folder and renames it when complete, so a crash during
  # a save leaves the previous checkpoint intact; the next run deletes such leftovers.
  with quiet():
    return Checkpoints(ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep + 1, create=True,
                                             cleanup_tmp_directories=True)))


def step_dir(mngr, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


def save(mngr, step: int, state, keep: int | None = None, facts: dict | None = None) -> None:
  """Saves `state` as checkpoint `step`, then its checksums (with `facts`, e.g. the loss) in
  <step>/sha256sums.json, then deletes the checkpoints beyond the newest `keep`.

  A full disk raises DiskFull (a UserError) after removing the half-written checkpoint.
  """
  ocp = _orbax()
  global _QUIET_LOOP_ERRORS
  if not _QUIET_LOOP_ERRORS:
    _ignore_closed_event_loop()
    _QUIET_LOOP_ERRORS = True
  try:
    with quiet(logging.FATAL):  # orbax logs each failed write thread before raising
      mngr._orbax.save(step, args=ocp.args.StandardSave(state), force=True)
      mngr._orbax.wait_until_finished()
    if jax.process_index() == 0:
      write_manifest(step_dir(mngr, step), {'step': step, **(facts or {})})
  except Exception as e:  # orbax wraps the OSError in ValueErrors of its threads
    if not _is_disk_full(e):
      raise
    # The writes that failed along with the one orbax raised are logged by asyncio when their
    # tasks are collected, each with its traceback: the error below says it once.
    pylogging.getLogger('asyncio').setLevel(pylogging.CRITICAL)
    raise _disk_full(mngr, step, state) from None
  if keep is not None and jax.process_index() == 0:
    with quiet():
      for old in sorted(mngr.all_steps())[:-keep]:
        mngr.delete(old)


class DiskFull(UserError):
  """No space left for a checkpoint (or another run file)."""


def _ignore_closed_event_loop() -> None:
  """When a save fails, TensorStore's late callbacks into orbax's closed asyncio loop print
  'RuntimeError: Event loop is closed' tracebacks of their own; the failure itself is reported
  once, by `save`. Installed for the rest of the process (other errors still print)."""
  def closed_loop(value) -> bool:
    return isinstance(value, RuntimeError) and 'Event loop is closed' in str(value)

  previous_hook, previous_unraisable = sys.excepthook, sys.unraisablehook
  sys.excepthook = lambda kind, value, trace: (
      None if closed_loop(value) else previous_hook(kind, value, trace))
  sys.unraisablehook = lambda unraisable: (
      None if closed_loop(unraisable.exc_value) else previous_unraisable(unraisable))


def _is_disk_full(error: BaseException) -> bool:
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if 'No space left on device' in text or 'Disk quota exceeded' in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def _folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _disk_full(mngr, step: int, state) -> DiskFull:
  folder = str(mngr.directory)
  for name in os.listdir(folder):  # the half-written checkpoint: free its space
    if name.startswith(f'{step}.') or (name == str(step) and verify(folder, step) is not None):
      shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
  done = [s for s in mngr.all_steps() if s != step]
  if done:
    needed = _folder_bytes(step_dir(mngr, max(done)))
  else:
    needed = sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves(state))
  free = shutil.disk_usage(folder).free
  kept = f'checkpoint {max(done)} is kept' if done else 'no earlier checkpoint exists'
  return DiskFull(f'the disk holding {folder} is full (no space left while saving checkpoint '
                  f'{step}; {_mib(free)} free, a checkpoint needs about {_mib(needed)}); '
                  f'{kept}; free space there and run the same command again to resume')


def _mib(num_bytes: int) -> str:
  return f'{num_bytes / 2**20:.1f} MiB'


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def _files(folder: str) -> list[str]:
  paths = [os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder)
           for f in files]
  return sorted(p for p in paths if p != MANIFEST_FILE)


def write_manifest(folder: str, facts: dict) -> None:
  """<folder>/sha256sums.json: size and SHA-256 of every file of the checkpoint, and `facts`."""
  files = {p: {'bytes': os.path.getsize(os.path.join(folder, p)),
               'sha256': _sha256(os.path.join(folder, p))} for p in _files(folder)}
  rundir.write_json_atomic(os.path.join(folder, MANIFEST_FILE), {**facts, 'files': files})


def read_manifest(folder: str) -> dict:
  with open(os.path.join(folder, MANIFEST_FILE)) as f:
    return json.load(f)


def verify(checkpoints: str, step: int) -> str | None:
  """None when checkpoint `step` in the folder `checkpoints` matches its sha256sums.json, else
  what is wrong with it (the first problem found)."""
  folder = os.path.join(checkpoints, str(step))
  try:
    manifest = read_manifest(folder)
    files = manifest['files']
  except FileNotFoundError:
    return f'{MANIFEST_FILE} is missing'
  except (OSError, ValueError, KeyError, TypeError) as e:
    return f'{MANIFEST_FILE} is unreadable ({e})'
  if manifest.get('step') != step:
    return f'{MANIFEST_FILE} is that of step {manifest.get("step")}'
  for name in sorted(set(files) | set(_files(folder))):
    path = os.path.join(folder, name)
    if name not in files:
      return f'{name} is not part of it'
    if not os.path.isfile(path):
      return f'{name} is missing'
    size = os.path.getsize(path)
    if size != files[name]['bytes']:
      return f'{name} has {size} bytes, not {files[name]["bytes"]}'
    if _sha256(path) != files[name]['sha256']:
      return f'{name} has other bytes than were saved (checksum mismatch)'
  return None


def restore(mngr, step: int, target):
  """Checkpoint `step` restored into the structure of `target`."""
  ocp = _orbax()
  with quiet():
    return mngr._orbax.restore(step, args=ocp.args.StandardRestore(target))
