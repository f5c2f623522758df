"""Running a sweep: skip finished members, train the rest here or in `--parallel` subprocesses,
report members done / running / left with an ETA, and name the ones that failed."""

from __future__ import annotations

import ctypes
import datetime
import os
import signal
import subprocess
import sys
import time

from absl import logging

from ln_jax.training import config_checks
from ln_jax.training import lock
from ln_jax.training import resume
from ln_jax.training import rundir
from ln_jax.sweeps import sweep
from ln_jax.errors import UserError


# Whether members that differ only in seed train as one vmapped program by default, per backend,
# as measured (docs/sweeps.md): on CPU a 4-seed vmap trained at about 0.7x the throughput of the
# same seeds run one after another. Backends not measured yet keep separate runs.
VMAP_SEEDS_BY_BACKEND = {'cpu': False}
PR_SET_PDEATHSIG = 1  # prctl(2)


def vmap_seeds_default(backend: str) -> bool:
  return VMAP_SEEDS_BY_BACKEND.get(backend, False)


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class SweepProgress:
  """Members done / running / left, and an ETA from the units finished so far."""

  def __init__(self, total: int, done: int, parallel: int):
    self.total, self.done, self.failed, self.parallel = total, done, 0, parallel
    self._start = time.time()
    self._unit_seconds = []

  def finished(self, num_members: int, ok: int, seconds: float) -> None:
    self.done += ok
    self.failed += num_members - ok
    self._unit_seconds.append(seconds)

  def line(self, running_members: int, units_left: int, running_seconds=()) -> str:
    """`running_seconds`: how long each running unit has been going."""
    left = self.total - self.done - self.failed - running_members
    text = (f'sweep: {self.done}/{self.total} done, {running_members} running, {left} left'
            + (f', {self.failed} failed' if self.failed else '')
            + f' | elapsed {_duration(time.time() - self._start)}')
    if self._unit_seconds and (units_left or running_seconds):
      mean = sum(self._unit_seconds) / len(self._unit_seconds)
      work = mean * units_left + sum(max(mean - s, 0.0) for s in running_seconds)
      text += f' | ETA ~{_duration(work / self.parallel)}'
    return text


def child_command(experiment: sweep.Experiment, workdir: str, unit, common: dict[str, str],
                  vmap_seeds: bool) -> list[str]:
  """The scripts/sweep.py command line that runs one unit of this sweep in its own process."""
  return [sys.executable, os.path.join(sweep.REPO_ROOT, 'scripts', 'sweep.py'),
          f'--experiment={experiment.spec}', f'--workdir={workdir}',
          f'--only={",".join(m.name for m in unit)}',
          '--vmap_seeds' if vmap_seeds else '--novmap_seeds',
          *[f'--config.{k}={v}' for k, v in common.items()]]


def _child_env(parallel: int) -> dict[str, str]:
  env = dict(os.environ)
  # Processes sharing the machine: one compute thread each on CPU, so that N processes do not
  # oversubscribe the cores, and an even share of the memory on a GPU.
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_multi_thread_eigen=false').strip()
  env['XLA_PYTHON_CLIENT_MEM_FRACTION'] = f'{0.9 / parallel:.2f}'
  return env


def _die_with_parent(parent_pid: int):
  """A Popen preexec_fn: the kernel sends the child SIGTERM (which makes a run save a checkpoint
  and stop) when this process dies, however it dies, SIGKILL included. Linux only; elsewhere the
  children of a killed sweep finish their runs (the run directory's lock keeps a re-run out)."""
  def preexec():
    if sys.platform.startswith('linux'):
      ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
      if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
  return preexec


def _unit_name(unit) -> str:
  return unit[0].name + (f'+{len(unit) - 1}seeds' if len(unit) > 1 else '')


def _train_unit(unit, configs, workdir: str) -> None:
  from ln_jax.training import train  # heavy imports only when training
  dirs = [os.path.join(workdir, m.name) for m in unit]
  for d in dirs:
    resume.make_workdir(d)
  if len(unit) == 1:
    train.train_and_evaluate(configs[unit[0].name], dirs[0])
  else:
    from ln_jax.sweeps import vmap_seeds
    vmap_seeds.train_seeds([configs[m.name] for m in unit], dirs)


def run_sweep(experiment: sweep.Experiment, workdir: str, common: dict[str, str], *,
              parallel: int = 1, shard: tuple[int, int] = (0, 1), only: list[str] | None = None,
              vmap_seeds: bool | None = False, log_every_s: float = 60.0) -> None:
  """Trains the members this process owns that have not finished; skips the finished ones.

  `vmap_seeds=None` follows the backend's measured default. Raises UserError naming the members
  that failed, after the others have run.
  """
  if parallel < 1:
    raise UserError(f'--parallel={parallel} must be at least 1')
  base = sweep.load_base_config(experiment.base_config)
  configs = {m.name: sweep.member_config(base, m, common) for m in experiment.members}
  import jax  # pylint: disable=g-import-not-at-top  (after the cheap checks: a typo fails fast)
  if vmap_seeds is None:
    vmap_seeds = vmap_seeds_default(jax.default_backend())
  for name, config in configs.items():
    try:
      config_checks.check_config(config)
    except UserError as e:
      raise UserError(f'member {name}: {e}') from None
  chosen = sweep.select(experiment.members, shard, only)
  # Everything is checked: only now the folder is made. Its lock keeps a second run of the same
  # sweep (or shard) out; --only runs (the --parallel children) rely on the members' own locks.
  resume.make_workdir(workdir)
  if only:
    sweep_lock = lock.FolderLock(workdir)
  else:
    name = lock.LOCK_FILE + ('' if shard == (0, 1) else f'.shard-{shard[0]}-of-{shard[1]}')
    sweep_lock = lock.FolderLock(workdir, 'sweep folder', 'another run of this sweep is going: '
                                 'wait for it to finish, stop it, or choose another --workdir',
                                 name=name).acquire()
  try:
    sweep.write_sweep_file(workdir, experiment, common)
    _train_members(experiment, workdir, common, chosen, configs, parallel, vmap_seeds,
                   log_every_s)
  finally:
    sweep_lock.release()


def _train_members(experiment, workdir, common, chosen, configs, parallel, vmap_seeds,
                   log_every_s) -> None:
  todo = [m for m in chosen if not rundir.is_complete(os.path.join(workdir, m.name))]
  units = sweep.seed_groups(todo) if vmap_seeds else [[m] for m in todo]
  progress = SweepProgress(len(chosen), len(chosen) - len(todo), parallel)
  logging.info('%s: %d members here (%d finished already), %d to train as %d %s',
               experiment.spec, len(chosen), len(chosen) - len(todo), len(todo), len(units),
               'vmapped groups' if vmap_seeds else 'runs')
  if parallel == 1:
    failed = _run_here(units, configs, workdir, progress)
  else:
    failed = _run_children(experiment, units, workdir, common, vmap_seeds, parallel, progress,
                           log_every_s)
  logging.info(progress.line(0, 0))
  if failed:
    raise UserError(f'{len(failed)} of {len(chosen)} members failed ({", ".join(failed)}); '
                    'see the log above or in the logs/ folder, fix the cause and run the same '
                    'command again to retry them')


def _finished_ok(unit, workdir: str) -> list[str]:
  return [m.name for m in unit if rundir.is_complete(os.path.join(workdir, m.name))]


def _run_here(units, configs, workdir: str, progress: SweepProgress) -> list[str]:
  failed = []
  for i, unit in enumerate(units):
    logging.info('%s | starting %s', progress.line(len(unit), len(units) - i - 1, [0.0]),
                 _unit_name(unit))
    start = time.time()
    try:
      _train_unit(unit, configs, workdir)
    except UserError as e:
      logging.error('%s failed: %s', _unit_name(unit), e)
    ok = _finished_ok(unit, workdir)
    failed += [m.name for m in unit if m.name not in ok]
    progress.finished(len(unit), len(ok), time.time() - start)
  return failed


def _run_children(experiment, units, workdir, common, vmap_seeds, parallel, progress,
                  log_every_s) -> list[str]:
  """Runs units as subprocesses of scripts/sweep.py, `parallel` at a time."""
  log_dir = os.path.join(workdir, 'logs')
  os.makedirs(log_dir, exist_ok=True)
  pending, running, failed = list(units), {}, []
  last_log = 0.0
  try:
    while pending or running:
      while pending and len(running) < parallel:
        unit = pending.pop(0)
        log_path = os.path.join(log_dir, _unit_name(unit) + '.log')
        with open(log_path, 'a') as log:
          process = subprocess.Popen(
              child_command(experiment, workdir, unit, common, vmap_seeds),
              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
              env=_child_env(parallel), cwd=sweep.REPO_ROOT,
              preexec_fn=_die_with_parent(os.getpid()))
        running[process] = (unit, time.time(), log_path)
        logging.info('started %s (pid %d, log: %s)', _unit_name(unit), process.pid, log_path)
      for process in [p for p in running if p.poll() is not None]:
        unit, start, log_path = running.pop(process)
        ok = _finished_ok(unit, workdir)
        failed += [m.name for m in unit if m.name not in ok]
        progress.finished(len(unit), len(ok), time.time() - start)
        if len(ok) < len(unit):
          logging.error('%s failed (exit status %d): %s', _unit_name(unit), process.returncode,
                        _last_line(log_path))
        last_log = 0.0  # report every change at once
      if (pending or running) and time.time() - last_log >= log_every_s:
        now = time.time()
        logging.info(progress.line(sum(len(u) for u, _, _ in running.values()), len(pending),
                                   [now - start for _, start, _ in running.values()]))
        last_log = time.time()
      time.sleep(0.2)
  finally:
    for process in running:  # interrupted: stop the runs this sweep started
      process.terminate()
  return failed


def _last_line(path: str) -> str:
  with open(path, errors='replace') as f:
    lines = [line.strip() for line in f if line.strip()]
  return lines[-1] if lines else '(empty log)'
