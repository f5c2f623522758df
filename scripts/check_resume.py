"""Checks that a run interrupted and resumed ends with the same metrics.jsonl as an uninterrupted one.

  python scripts/check_resume.py --workdir=/tmp/resume_check --signals=KILL -- \
      --config=configs/pi_mnist.py:tiny,num_epochs=12,checkpoint_every_epochs=0.6

The flags after `--` go to scripts/train.py. It trains into <workdir>/uninterrupted and, meanwhile,
into <workdir>/interrupted once per signal in --signals: each time, as soon as that run has saved a
checkpoint past the previous stop and written a metrics line past that checkpoint (so the stop
lands mid-run, between checkpoints), it sends the signal; a last run goes to the end. The two
metrics.jsonl files must then be identical apart from the wall-clock fields (elapsed_s,
steps_per_s). Exit status 0 when they are, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from ln_jax import checkpoint
from ln_jax import cli
from ln_jax import resume
from ln_jax import rundir
from ln_jax.errors import UserError

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the two runs (replaced if present).')
_SIGNALS = flags.DEFINE_list('signals', ['KILL'], 'Signals to interrupt the run with, in order: '
                             'KILL, TERM or INT (Ctrl-C).')
_TIMEOUT = flags.DEFINE_float('timeout', 3600.0, 'Seconds to wait for any one stage.')
flags.mark_flags_as_required(['workdir'])

TRAIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train.py')


def start(train_args: list[str], workdir: str) -> subprocess.Popen:
  """scripts/train.py into `workdir`, its stderr kept in <workdir>.stderr."""
  stderr = open(f'{workdir}.stderr', 'w')
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
    raise RuntimeError(f'the run in {workdir} ended (status {proc.returncode}) or timed out before '
                       'it could be interrupted; give it more steps')
  returncode = proc.wait(timeout)
  with open(f'{workdir}.stderr') as f:
    stderr = f.read()
  return {'signal': signal.Signals(signum).name, 'returncode': returncode, 'stderr': stderr,
          'checkpoints': checkpoint_steps(workdir), 'metrics_steps': metrics_steps(workdir),
          'complete': rundir.is_complete(workdir)}


def run_check(train_args: list[str], workdir: str, signals: list[str],
              timeout: float = 3600.0) -> dict:
  """The uninterrupted and the interrupted run, side by side; see the module docstring."""
  if os.path.exists(workdir):
    shutil.rmtree(workdir)
  os.makedirs(workdir)
  reference_dir, interrupted_dir = (os.path.join(workdir, name)
                                    for name in ('uninterrupted', 'interrupted'))
  reference = start(train_args, reference_dir)
  stages, after_step = [], 0
  for name in signals:
    signum = signal.Signals[f'SIG{name.upper().removeprefix("SIG")}']
    stage = interrupt(start(train_args, interrupted_dir), interrupted_dir, after_step, signum,
                      timeout)
    stages.append(stage)
    after_step = max(stage['checkpoints'] + [after_step])
  final = start(train_args, interrupted_dir)
  statuses = (final.wait(timeout), reference.wait(timeout))
  return {'stages': stages, 'returncodes': statuses,
          'differences': resume.metrics_differences(reference_dir, interrupted_dir),
          'reference_steps': metrics_steps(reference_dir),
          'resumed_steps': metrics_steps(interrupted_dir)}


def main(argv):
  unknown = [s for s in _SIGNALS.value if s.upper().removeprefix('SIG') not in ('KILL', 'TERM',
                                                                                 'INT')]
  if unknown:
    raise UserError(f'--signals: unknown {", ".join(unknown)}; use KILL, TERM or INT')
  result = run_check(argv[1:], _WORKDIR.value, _SIGNALS.value, _TIMEOUT.value)
  for stage in result['stages']:
    print(f'SIG{stage["signal"].removeprefix("SIG")}: exit status {stage["returncode"]}, '
          f'checkpoints {stage["checkpoints"]}, metrics lines up to step '
          f'{max(stage["metrics_steps"] or [0])}')
  if result['returncodes'] != (0, 0):
    print(f'a run failed (exit statuses {result["returncodes"]}); see {_WORKDIR.value}/*.stderr')
    return 1
  if result['differences']:
    print('metrics.jsonl differ:\n  ' + '\n  '.join(result['differences']))
    return 1
  print(f'identical: {len(result["reference_steps"])} metrics lines (wall-clock fields '
        f'{", ".join(resume.WALL_CLOCK_KEYS)} aside)')
  return 0


if __name__ == '__main__':
  cli.run(main)
