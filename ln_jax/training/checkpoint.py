"""Orbax checkpoints of the training state under <workdir>/checkpoints/<step>.

Orbax is imported on first use: a run that stops at a config or data error does not wait for it.
"""

from __future__ import annotations

import contextlib
import os

from absl import logging

CHECKPOINT_DIR = 'checkpoints'


@contextlib.contextmanager
def _quiet():
  """Orbax logs every phase of its work at INFO; keep the terminal for training progress."""
  verbosity = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    yield
  finally:
    logging.set_verbosity(verbosity)


def manager(workdir: str, keep: int):
  """An orbax CheckpointManager for <workdir>/checkpoints keeping the newest `keep` steps."""
  import orbax.checkpoint as ocp
  # Orbax writes each step to a temporary folder and renames it when complete, so a crash during
  # a save leaves the previous checkpoint intact; the next run deletes such leftovers.
  with _quiet():
    return ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             cleanup_tmp_directories=True))


def save(mngr, step: int, state) -> None:
  import orbax.checkpoint as ocp
  with _quiet():
    mngr.save(step, args=ocp.args.StandardSave(state), force=True)
    mngr.wait_until_finished()


def restore_latest(mngr, target):
  """The latest checkpoint restored into the structure of `target`, or None when there is none."""
  import orbax.checkpoint as ocp
  step = mngr.latest_step()
  if step is None:
    return None
  with _quiet():
    return mngr.restore(step, args=ocp.args.StandardRestore(target))
