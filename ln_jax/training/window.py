"""The training metrics summed inside the compiled steps between two evaluations (the "window"),
and the loop's other state that goes into every checkpoint (`LoopState`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NO_NONFINITE = np.iinfo(np.int32).max  # 'first_nonfinite' of steps whose losses were all finite


def empty_window(metric_names) -> dict:
  """Sums of `step.train_steps` metrics since the last evaluation: one per task metric, the count
  of non-finite steps and the first of them."""
  window = {name: np.zeros((), np.float32) for name in metric_names}
  window.update(nonfinite=np.zeros((), np.int32),
                first_nonfinite=np.array(NO_NONFINITE, np.int32))
  return window


@jax.jit
def accumulate(window: dict, sums: dict) -> dict:
  return {k: jnp.minimum(window[k], v) if k == 'first_nonfinite' else window[k] + v
          for k, v in sums.items()}


class LoopState:
  """What the training loop carries besides the train state; all of it goes into checkpoints."""

  def __init__(self, window, window_steps=0, elapsed_s=0.0, skipped_steps=0):
    self.window = window
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
