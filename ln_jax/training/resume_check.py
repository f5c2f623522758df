"""Interrupting a run and resuming it, next to an uninterrupted one, to compare their metrics.

`run_check(train_args, workdir, signals)` trains scripts/train.py with `train_args` into
<workdir>/uninterrupted and, meanwhile, into <workdir>/interrupted once per signal: each time, as
soon as that run has saved a checkpoint past the previous stop and written a metrics line past that
checkpoint (so the stop lands mid-run, between checkpoints, and the resume must drop lines), it
sends the signal; a last run goes to the end. The two metrics.jsonl files must then be identical
apart from the wall-clock fields. scripts/check_resume.py is its command line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

from ln_jax.training import checkpoint
from ln_jax.training import metrics_repair
from ln_jax.training import rundir
from ln_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(REPO_ROOT, 'scripts', 'train.py')
SIGNALS = ('KILL', 'TERM', 'INT')
PARTS = ('uninterrupted', 'interrupted')


def start(train_args: list[str], workdir: str) -> subprocess.Popen:
  """scripts/train.py into `workdir`, its stderr kept in <workdir>.stderr."""
  with open(f'{workdir}.stderr', 'w') as stderr:  # the child keeps its own copy
    return subprocess.Popen([sys.executable, TRAIN, f'--workdir={workdir}', *train_args],
                            stdout=subprocess.DEVNULL, stderr=stderr)


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the finished checkpoints (orbax renames a save into place when it is complete)."""
  folder = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  if not os.path.isdir(folder):
    return []
  return sorted(int(name) for name in os.listdir(folder) if name.isdigit())


def metrics_steps(workdir: str) -> list[int]:
  """Steps of the complete lines of metrics.jsonl (the file may be mid-write or mid-rewrite)."""
  try:
    with open(os.path.join(workdir, rundir.METRICS_FILE)) as f:
      lines = f.read().splitlines(keepends=True)
  except OSError:
    return []
  return [json.loads(line)['step'] for line in lines if line.endswith('\n')]


def interrupt(proc: subprocess.Popen, workdir: str, after_step: int, signum: int,
              timeout: float) -> dict:
  """Sends `signum` once `workdir` holds a checkpoint past `after_step` and a metrics line past
  that checkpoint; returns what the run left behind."""
  deadline = time.time() + timeout
  while proc.poll() is None and time.time() < deadline:
    saved = [s for s in checkpoint_steps(workdir) if s > after_step]
    if saved and any(s > saved[-1] for s in metrics_steps(workdir)):
      proc.send_signal(signum)
      break
    time.sleep(0.01)
  else:
    proc.kill()
    proc.wait()
    raise UserError(f'the run in {workdir} ended (status {proc.returncode}) or timed out before '
                    'it could be interrupted; give it more steps or checkpoints')
  returncode = proc.wait(timeout)
  with open(f'{workdir}.stderr') as f:
    stderr = f.read()
  return {'signal': signal.Signals(signum).name, 'returncode': returncode, 'stderr': stderr,
          'checkpoints': checkpoint_steps(workdir), 'metrics_steps': metrics_steps(workdir),
          'complete': rundir.is_complete(workdir)}


def _prepare(workdir: str) -> None:
  """An empty `workdir`, replacing only what an earlier check left there."""
  if os.path.isdir(workdir):
    ours = set(PARTS) | {f'{part}.stderr' for part in PARTS}
    others = sorted(set(os.listdir(workdir)) - ours)
    if others:
      raise UserError(f'{workdir} holds files a check did not write ({", ".join(others[:3])}); '
                      'choose another --workdir')
    shutil.rmtree(workdir)
  os.makedirs(workdir)


def run_check(train_args: list[str], workdir: str, signals: list[str],
              timeout: float = 3600.0) -> dict:
  """The uninterrupted and the interrupted run, side by side; see the module docstring.

  Returns {'stages': what each interrupted process left (see `interrupt`), 'returncodes': of the
  last interrupted run and the uninterrupted one, 'differences': between their metrics.jsonl,
  'reference_steps' and 'resumed_steps': the steps of their lines}.
  """
  unknown = [s for s in signals if s.upper().removeprefix('SIG') not in SIGNALS]
  if unknown:
    raise UserError(f'unknown signal {", ".join(unknown)}; use {", ".join(SIGNALS)}')
  _prepare(workdir)
  reference_dir, interrupted_dir = (os.path.join(workdir, part) for part in PARTS)
  reference = start(train_args, reference_dir)
  try:
    stages, after_step = [], 0
    for name in signals:
      signum = signal.Signals[f'SIG{name.upper().removeprefix("SIG")}']
      stage = interrupt(start(train_args, interrupted_dir), interrupted_dir, after_step, signum,
                        timeout)
      stages.append(stage)
      after_step = max(stage['checkpoints'] + [after_step])
    final = start(train_args, interrupted_dir)
    statuses = (final.wait(timeout), reference.wait(timeout))
  finally:
    if reference.poll() is None:  # a stage failed: do not leave the reference running
      reference.kill()
      reference.wait()
  return {'stages': stages, 'returncodes': statuses,
          'differences': metrics_repair.metrics_differences(reference_dir, interrupted_dir),
          'reference_steps': metrics_steps(reference_dir),
          'resumed_steps': metrics_steps(interrupted_dir)}
