"""Step arithmetic for a run: epochs, evaluation points, checkpoints and the size of each call."""

from __future__ import annotations


class Schedule:
  """When a run of `config` on `num_train` examples evaluates, saves and ends."""

  def __init__(self, config, num_train: int):
    self.steps_per_epoch = num_train // config.batch_size
    self.total_steps = max(1, round(config.num_epochs * self.steps_per_epoch))
    if config.eval_every_epochs is not None:
      self.eval_every = max(1, round(config.eval_every_epochs * self.steps_per_epoch))
    else:  # a fixed number per run, so a small-batch run shows metrics as early as a large one
      self.eval_every = max(1, -(-self.total_steps // config.num_evals))
    self.steps_per_call = config.steps_per_call
    self.checkpoint_every = max(1, round(config.checkpoint_every_epochs * self.steps_per_epoch))

  def next_chunk(self, step: int) -> int:
    """Steps to fuse from `step`: stop at an evaluation, an epoch end or the run's end."""
    next_eval = (step // self.eval_every + 1) * self.eval_every
    epoch_end = (step // self.steps_per_epoch + 1) * self.steps_per_epoch
    return min(self.steps_per_call, next_eval - step, epoch_end - step, self.total_steps - step)

  def is_eval_step(self, step: int) -> bool:
    """Every `eval_every` steps and at the end; an evaluation less than half an interval before
    the end is left out (the end's own evaluation follows), so that the last record's training
    metrics average over at least half an interval of steps, not one or two batches."""
    if step == self.total_steps:
      return True
    return step % self.eval_every == 0 and 2 * (self.total_steps - step) >= self.eval_every

  def eval_steps(self) -> list[int]:
    """The steps the run evaluates at (and writes a metrics.jsonl line for), in order."""
    return [step for step in range(self.eval_every, self.total_steps, self.eval_every)
            if self.is_eval_step(step)] + [self.total_steps]

  def eval_steps_up_to_0_2(self) -> list[int]:
    """The evaluation steps of ln_jax 0.2 and earlier, which also evaluated just before the end: a
    run they finished is sound."""
    steps = list(range(self.eval_every, self.total_steps + 1, self.eval_every))
    return steps + [self.total_steps] if steps[-1:] != [self.total_steps] else steps

  def is_checkpoint_step(self, start: int, step: int) -> bool:
    """Whether the chunk from `start` to `step` crossed a checkpoint point or ended the run.

    Checkpoints go at chunk ends (which `next_chunk` fixes whatever `checkpoint_every` is), so
    where they go never changes how steps are grouped, nor any number the run reports.
    """
    return step // self.checkpoint_every > start // self.checkpoint_every or (
        step == self.total_steps)
