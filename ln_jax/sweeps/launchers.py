"""Sweep members as scheduler jobs through submitit: `local` (processes on this machine, through
submitit's local executor) or `slurm` (one array task per member).

Each job runs `scripts/sweep.py --only=<member>` into the same sweep folder, so a job is an
ordinary sweep process: it skips a finished member, resumes an interrupted one from its
checkpoint, and writes nothing but its member's run directory and sweep.json. The launching
process waits for the jobs, logs the sweep's progress and, when interrupted, cancels the jobs it
submitted; running the same command again submits only the members that have not finished.
Job logs go to DIR/logs/submitit/.
"""

from __future__ import annotations

import os
import time

from absl import logging

from ln_jax.training import rundir
from ln_jax.errors import UserError

LAUNCHERS = ('inprocess', 'local', 'slurm')
# SLURM options a sweep passes on (flag name -> submitit's SlurmExecutor parameter), and their
# defaults: unset leaves the cluster's own default.
SLURM_OPTIONS = {'slurm_partition': 'partition', 'slurm_time': 'time',
                 'slurm_gpus_per_task': 'gpus_per_task',
                 'slurm_array_parallelism': 'array_parallelism'}
POLL_SECONDS = 1.0


def check_launcher(launcher: str) -> None:
  if launcher not in LAUNCHERS:
    raise UserError(f'--launcher={launcher!r} is not one of {", ".join(LAUNCHERS)}')


def job_folder(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'logs', 'submitit')


def duration_seconds(text: str) -> int:
  """SLURM's time forms ('90' minutes, '1:30:00', '2-00:00:00', 'MM:SS') as seconds."""
  days, _, rest = text.rpartition('-') if '-' in text else ('0', '', text)
  parts = [int(p) for p in rest.split(':')] if rest else []
  if not parts or len(parts) > 3 or not days.isdigit():
    raise ValueError(text)
  hours, minutes, seconds = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
  return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds


def slurm_time_minutes(text: str) -> int:
  """SLURM's time forms ('90', '1:30:00', '2-00:00:00', 'MM:SS') as whole minutes."""
  return -(-duration_seconds(text) // 60)


def make_executor(launcher: str, workdir: str, slurm: dict):
  """submitit's executor for `launcher`, with the `slurm` options (keys of SLURM_OPTIONS)."""
  try:
    import submitit  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'--launcher={launcher} needs submitit; pip install submitit (or '
                    "pip install -e '.[cluster]')") from None
  if launcher == 'local':
    executor = submitit.LocalExecutor(folder=job_folder(workdir))
    executor.update_parameters(timeout_min=7 * 24 * 60)
    return executor
  options = {SLURM_OPTIONS[k]: v for k, v in slurm.items() if v not in (None, '')}
  if 'time' in options:
    try:
      options['time'] = slurm_time_minutes(str(options['time']))
    except ValueError:
      raise UserError(f'--slurm_time={options["time"]!r} is not a SLURM time; write minutes, '
                      'H:MM:SS or D-HH:MM:SS') from None
  unknown = set(slurm) - set(SLURM_OPTIONS)
  if unknown:
    raise UserError(f'unknown SLURM option(s) {", ".join(sorted(unknown))}; use '
                    f'{", ".join(SLURM_OPTIONS)}')
  try:
    executor = submitit.SlurmExecutor(folder=job_folder(workdir))
  except RuntimeError as e:  # no srun on PATH
    raise UserError(f'--launcher=slurm found no SLURM here ({e}); run the command on a login '
                    'node of the cluster, or use --launcher=local') from None
  executor.update_parameters(job_name='ln_jax_sweep', ntasks_per_node=1, **options)
  return executor


def submit(executor, commands, env=None):
  """Submits one job per (unit, command line); SLURM gets them as one job array."""
  import submitit  # pylint: disable=g-import-not-at-top
  functions = [submitit.helpers.CommandFunction(command, verbose=True, cwd=os.getcwd(), env=env)
               for _, command in commands]
  if isinstance(executor, submitit.SlurmExecutor):
    with executor.batch():
      jobs = [executor.submit(f) for f in functions]
  else:
    jobs = [executor.submit(f) for f in functions]
  return jobs


def _job_env(parallel: int) -> dict[str, str]:
  """Jobs sharing this machine: one compute thread each on CPU, a share of a GPU's memory."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false').strip()
  env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / parallel:.2f}'
  return env


def _done(job) -> bool:
  try:
    return job.done()
  except Exception:  # pylint: disable=broad-except  (a scheduler query failed: ask again)
    return False


def run_jobs(launcher: str, commands, workdir: str, progress, *, parallel: int, slurm: dict,
             log_every_s: float) -> list[str]:
  """Runs each (unit, command line) as a job and waits for all; returns the failed members.

  `local` keeps `parallel` jobs running at once; `slurm` submits one array and leaves the
  scheduling to SLURM (`slurm_array_parallelism` caps the tasks running at once).
  """
  if not commands:
    return []
  executor = make_executor(launcher, workdir, slurm)
  if launcher == 'local':
    pending, env = list(commands), _job_env(parallel)
  else:
    pending, env = [], None
    jobs = submit(executor, commands)
    logging.info('submitted %d SLURM array tasks (job %s); logs in %s', len(jobs),
                 jobs[0].job_id.split('_')[0] if jobs else '-', job_folder(workdir))
  running = {} if launcher == 'local' else {
      job: (unit, time.time()) for job, (unit, _) in zip(jobs, commands)}
  failed, last_log = [], 0.0
  try:
    while pending or running:
      while pending and len(running) < parallel:
        if not progress.may_start([unit for unit, _ in pending]):
          pending = []
          break
        unit, command = pending.pop(0)
        job = submit(executor, [(unit, command)], env)[0]
        running[job] = (unit, time.time())
        logging.info('started %s as job %s', ','.join(m.name for m in unit), job.job_id)
      for job in [j for j in running if _done(j)]:
        unit, start = running.pop(job)
        ok = [m.name for m in unit if rundir.is_complete(os.path.join(workdir, m.name))]
        failed += [m.name for m in unit if m.name not in ok]
        progress.finished(unit, len(ok), time.time() - start)
        if len(ok) < len(unit):
          logging.error('%s failed (job %s); its log: %s', ','.join(m.name for m in unit),
                        job.job_id, job.paths.stderr)
        last_log = 0.0  # report every change at once
      if (pending or running) and time.time() - last_log >= log_every_s:
        now = time.time()
        logging.info(progress.line([(u, now - s) for u, s in running.values()],
                                   [u for u, _ in pending]))
        last_log = time.time()
      time.sleep(POLL_SECONDS)
  finally:
    for job in running:  # interrupted: cancel the jobs this sweep submitted
      job.cancel(check=False)
  return failed
