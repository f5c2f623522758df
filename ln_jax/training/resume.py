"""Resuming a run from its checkpoints: which one to trust, and what it restores.

Each checkpoint holds the state and the loop's `window.LoopState`: the partial sums of the
training metrics since the last evaluation (so a run stopped between two evaluations reports the
same train_loss once resumed), the skipped steps and the elapsed time.
"""

from __future__ import annotations

import os

from absl import logging
import jax

from ln_jax.training import checkpoint
from ln_jax.training import metrics_repair
from ln_jax.training import parallel
from ln_jax.training.window import LoopState
from ln_jax.errors import UserError


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
  damage = metrics_repair.first_damage(workdir, eval_steps)
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


def restore(mngr, chosen: int | None, state, window):
  """(state, LoopState) from checkpoint `chosen` (see `choose_checkpoint`), or from scratch;
  `window` is the empty metric window of the run's task (`window.empty_window`)."""
  if chosen is None:
    return state, LoopState(window)
  folder = str(mngr.directory)
  try:
    saved = checkpoint.restore(mngr, chosen, LoopState(window).payload(state, 0.0))
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
