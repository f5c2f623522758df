"""metrics.jsonl after a crash: keeping its sound lines, finding the first damaged one, and
comparing two runs' lines.

When a run resumes from a checkpoint, the lines after the checkpoint's step are dropped, so that
the replayed steps write them again exactly once.
"""

from __future__ import annotations

import json
import os

from ln_jax.training import rundir
from ln_jax.errors import UserError

WALL_CLOCK_KEYS = ('elapsed_s', 'steps_per_s')  # metrics that differ between identical runs


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


def check_finished_metrics(workdir: str, eval_steps: list[int], *older: list[int]) -> None:
  """Raises UserError naming the first damaged metrics.jsonl line of a finished run; `older`:
  the evaluation steps earlier versions gave the same config, also accepted."""
  damage = first_damage(workdir, eval_steps)
  if damage and not any(first_damage(workdir, steps) is None for steps in older):
    raise UserError(f'{damage[1]}; the run is finished, so resuming cannot write it again: '
                    'repair the line, or pass --fresh to train the run again')


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
