"""Running a sweep: skip finished members, train the rest here or in `--parallel` subprocesses,
report members done / running / left with an ETA, and name the ones that failed."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import signal
import subprocess
import sys
import time

from absl import logging

from ln_jax import cli
from ln_jax.training import config_checks
from ln_jax.training import lock
from ln_jax.training import workdir as workdir_lib
from ln_jax.training import rundir
from ln_jax.sweeps import launchers
from ln_jax.sweeps import sweep
from ln_jax.errors import UserError


# Whether members that differ only in seed train as one vmapped program by default, per backend,
# as measured (docs/sweeps.md): on CPU a 4-seed vmap trained at about 0.7x the steady-state
# throughput of the same seeds run one after another; the quick Figure-6 sweep finished 1.07x
# sooner vmapped (fewer process starts and compilations), within run-to-run noise, so separate
# runs stay the default. `--parallel=2`
# was 0.92x `--parallel=1` there (two processes on two cores). Backends not measured yet keep
# separate runs.
VMAP_SEEDS_BY_BACKEND = {'cpu': False}
PR_SET_PDEATHSIG = 1  # prctl(2)


def vmap_seeds_default(backend: str) -> bool:
  return VMAP_SEEDS_BY_BACKEND.get(backend, False)


def _duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class SweepProgress:
  """Members done / running / left, and an ETA from the steps left.

  A unit's time is its steps over the steps/s measured on the finished units of the same batch
  size (and number of vmapped seeds). Units of a batch size not measured yet are left out of the
  ETA and counted beside it: neither the time per step nor the time per example of another batch
  size predicts theirs (a short batch-128 run is mostly start-up and evaluation, and would put an
  hour on a sweep of minutes).
  """

  def __init__(self, total: int, done: int, parallel: int, unit_steps=None,
               budget_s: float | None = None):
    """`unit_steps(unit) -> (kind, steps)`: what a unit's speed depends on, and its steps.
    `budget_s`: the sweep's time budget (`may_start`)."""
    self.total, self.done, self.failed, self.parallel = total, done, 0, parallel
    self.budget_s, self.not_started = budget_s, 0
    self._start = time.time()
    self._unit_steps = unit_steps or (lambda unit: (None, 1))
    self._measured = {}  # kind -> [steps, seconds] of the finished units

  def finished(self, unit, ok: int, seconds: float) -> None:
    self.done += ok
    self.failed += len(unit) - ok
    kind, steps = self._unit_steps(unit)
    totals = self._measured.setdefault(kind, [0, 0.0])
    totals[0] += steps
    totals[1] += seconds

  def may_start(self, units_left) -> bool:
    """Whether the first of `units_left` fits in what is left of the time budget: its expected
    time where its kind was timed, else only whether time is left. When it does not, none of
    them starts, and they are counted in `not_started`."""
    if self.budget_s is None:
      return True
    expected = self.unit_seconds(units_left[0]) or 0.0
    if time.time() - self._start + expected <= self.budget_s:
      return True
    self.not_started += sum(len(unit) for unit in units_left)
    return False

  def unit_seconds(self, unit) -> float | None:
    """The expected time of `unit`, or None while no unit of its kind has finished."""
    kind, steps = self._unit_steps(unit)
    measured = self._measured.get(kind)
    if measured is None:
      return None
    return steps * measured[1] / max(measured[0], 1)

  def line(self, running=(), pending=()) -> str:
    """`running`: (unit, seconds it has been going) pairs; `pending`: the units not started."""
    running_members = sum(len(unit) for unit, _ in running)
    left = self.total - self.done - self.failed - running_members
    text = (f'sweep: {self.done}/{self.total} done, {running_members} running, {left} left'
            + (f', {self.failed} failed' if self.failed else '')
            + f' | elapsed {_duration(time.time() - self._start)}')
    if self._measured and (running or pending):
      work, untimed = 0.0, 0
      for unit, seconds in [*running, *((u, 0.0) for u in pending)]:
        expected = self.unit_seconds(unit)
        if expected is None:
          untimed += len(unit)
        else:
          work += max(expected - seconds, 0.0)
      if untimed and not work:
        text += f' | ETA when a batch size of the {untimed} member(s) left is timed'
      else:
        text += f' | ETA ~{_duration(work / min(self.parallel, len(running) + len(pending)))}'
        if untimed:
          text += f' + {untimed} member(s) of a batch size not timed yet'
    return text


def child_command(experiment: sweep.Experiment, workdir: str, unit, common: dict[str, str],
                  vmap_seeds: bool) -> list[str]:
  """The scripts/sweep.py command line that runs one unit of this sweep in its own process
  (paths made absolute, so it runs the same from any working directory)."""
  path, _, arg = experiment.spec.partition(':')
  spec = os.path.abspath(path) + (f':{arg}' if arg else '') if os.path.isfile(path) else (
      experiment.spec)
  return [sys.executable, os.path.join(sweep.REPO_ROOT, 'scripts', 'sweep.py'),
          f'--experiment={spec}', f'--workdir={os.path.abspath(workdir)}',
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
  if len(unit) == 1:
    train.train_and_evaluate(configs[unit[0].name], dirs[0])  # creates its folder once checked
  else:
    train.train_seeds([configs[m.name] for m in unit], dirs)


def check_shared_inputs(configs: dict) -> dict[str, int]:
  """Loads each distinct data config once and checks every member's config against its data, so
  that a failure all members share (data missing offline, an impossible value) stops the sweep
  before the first member starts, with one line. Returns each member's number of steps."""
  from ln_jax import tasks  # pylint: disable=g-import-not-at-top
  from ln_jax.training.schedule import Schedule  # pylint: disable=g-import-not-at-top
  num_train, steps = {}, {}
  for name, config in configs.items():
    task = tasks.load_task(config)
    # The task's data depends on what its config says of data, and (synthetic data) the seed.
    key = json.dumps([config.task, config.get('data', {}) and config.data.to_dict(),
                      config.seed], sort_keys=True, default=repr)
    if key not in num_train:
      train_split = task.load_splits(config)['train']
      num_train[key] = config_checks.num_examples(train_split, 'train', task)
    try:
      config_checks.check_config(config, task, num_train=num_train[key])
    except UserError as e:
      raise UserError(f'member {name}: {e}') from None
    steps[name] = Schedule(config, num_train[key]).total_steps
  return steps


def run_sweep(experiment: sweep.Experiment, workdir: str, common: dict[str, str], *,
              parallel: int = 1, shard: tuple[int, int] = (0, 1), only: list[str] | None = None,
              vmap_seeds: bool | None = False, log_every_s: float = 60.0,
              launcher: str = 'inprocess', slurm: dict | None = None,
              time_budget_s: float | None = None) -> None:
  """Trains the members this process owns that have not finished; skips the finished ones.

  `time_budget_s`: start no unit (a run, or a vmapped seed group) that would end past this many
  seconds after the start, by the time measured on the finished units of its batch size; the
  members not started stay for the same command to run later.

  `launcher`: 'inprocess' (here, or `parallel` subprocesses), 'local' or 'slurm' (submitit jobs,
  see `launchers`; `slurm` holds their options). `vmap_seeds=None` follows the backend's
  measured default. Every check that all members share runs before anything is created. Raises
  UserError naming the members that failed, after the others have run.
  """
  if parallel < 1:
    raise UserError(f'--parallel={parallel} must be at least 1')
  launchers.check_launcher(launcher)
  workdir_lib.check_workdir(workdir)
  base = sweep.load_base_config(experiment.base_config)
  configs = {m.name: sweep.member_config(base, m, common) for m in experiment.members}
  import jax  # pylint: disable=g-import-not-at-top  (after the cheap checks: a typo fails fast)
  if vmap_seeds is None:
    vmap_seeds = vmap_seeds_default(jax.default_backend())
  from ln_jax import tasks  # pylint: disable=g-import-not-at-top
  for name, config in configs.items():
    try:
      config_checks.check_config(config, tasks.load_task(config))
    except UserError as e:
      raise UserError(f'member {name}: {e}') from None
  sweep.check_sweep_file(workdir, configs, common)
  chosen = sweep.select(experiment.members, shard, only)
  steps = check_shared_inputs({m.name: configs[m.name] for m in chosen
                               if not rundir.is_complete(os.path.join(workdir, m.name))})
  # Everything is checked: only now the folder is made. Its lock keeps a second run of the same
  # sweep (or shard) out; --only runs (the --parallel children) rely on the members' own locks.
  cli.prepare_workdir(workdir)
  if only:
    sweep_lock = lock.FolderLock(workdir)
  else:
    name = lock.LOCK_FILE + ('' if shard == (0, 1) else f'.shard-{shard[0]}-of-{shard[1]}')
    sweep_lock = lock.FolderLock(workdir, 'sweep folder', 'another run of this sweep is going: '
                                 'wait for it to finish, stop it, or choose another --workdir',
                                 name=name).acquire()
  try:
    sweep.write_sweep_file(workdir, experiment, common, configs)
    _train_members(experiment, workdir, common, chosen, configs, steps, parallel, vmap_seeds,
                   log_every_s, launcher, slurm, time_budget_s)
  finally:
    sweep_lock.release()


def _train_members(experiment, workdir, common, chosen, configs, steps, parallel, vmap_seeds,
                   log_every_s, launcher, slurm, time_budget_s=None) -> None:
  todo = [m for m in chosen if not rundir.is_complete(os.path.join(workdir, m.name))]
  units = sweep.seed_groups(todo) if vmap_seeds else [[m] for m in todo]
  # A unit's speed depends on its batch size, seed count and model (28- and 112-step sequences
  # at the same batch size differ 3x), not on its learning rate or seed.
  unit_steps = lambda unit: ((configs[unit[0].name].batch_size, len(unit),
                              str(configs[unit[0].name].get('model'))), steps[unit[0].name])
  at_once = parallel if launcher != 'slurm' else (
      (slurm or {}).get('slurm_array_parallelism') or max(len(units), 1))
  progress = SweepProgress(len(chosen), len(chosen) - len(todo), at_once, unit_steps,
                           time_budget_s)
  logging.info('%s: %d members here (%d finished already), %d to train as %d %s%s',
               experiment.spec, len(chosen), len(chosen) - len(todo), len(todo), len(units),
               'vmapped groups' if vmap_seeds else 'runs',
               '' if time_budget_s is None else f'; time budget {_duration(time_budget_s)}')
  causes = []
  if launcher != 'inprocess':
    commands = [(unit, child_command(experiment, workdir, unit, common, vmap_seeds))
                for unit in units]
    failed = launchers.run_jobs(launcher, commands, workdir, progress, parallel=parallel,
                                slurm=slurm or {}, log_every_s=log_every_s)
    where = f'the job logs in {launchers.job_folder(workdir)}'
  elif parallel == 1:
    failed = _run_here(units, configs, workdir, progress, causes)
    where = 'the log above'
  else:
    failed = _run_children(experiment, units, workdir, common, vmap_seeds, parallel, progress,
                           log_every_s)
    where = f'the logs in {os.path.join(workdir, "logs")}'
  logging.info(progress.line())
  if progress.not_started:
    logging.warning('time budget %s reached: %d member(s) not started; run the same command '
                    'again to train them', _duration(time_budget_s), progress.not_started)
  if failed:
    cause = f': {causes[0]}' if causes and len(set(causes)) == 1 else f'; see {where}'
    raise UserError(f'{len(failed)} of {len(chosen)} members failed ({", ".join(failed)})'
                    f'{cause}; fix the cause and run the same command again to retry them')


def _finished_ok(unit, workdir: str) -> list[str]:
  return [m.name for m in unit if rundir.is_complete(os.path.join(workdir, m.name))]


def _run_here(units, configs, workdir: str, progress: SweepProgress,
              causes: list[str]) -> list[str]:
  """Trains the units one after another; appends each failure's message to `causes`."""
  failed = []
  for i, unit in enumerate(units):
    if not progress.may_start(units[i:]):
      break
    logging.info('%s | starting %s', progress.line([(unit, 0.0)], units[i + 1:]),
                 _unit_name(unit))
    start = time.time()
    try:
      _train_unit(unit, configs, workdir)
    except UserError as e:
      logging.error('%s failed: %s', _unit_name(unit), e)
      causes.append(str(e))
    ok = _finished_ok(unit, workdir)
    failed += [m.name for m in unit if m.name not in ok]
    progress.finished(unit, len(ok), time.time() - start)
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
        if not progress.may_start(pending):
          pending = []
          break
        unit = pending.pop(0)
        log_path = os.path.join(log_dir, _unit_name(unit) + '.log')
        with open(log_path, 'a') as log:
          process = subprocess.Popen(
              child_command(experiment, workdir, unit, common, vmap_seeds),
              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
              env=_child_env(parallel), cwd=os.getcwd(),
              preexec_fn=_die_with_parent(os.getpid()))
        running[process] = (unit, time.time(), log_path)
        logging.info('started %s (pid %d, log: %s)', _unit_name(unit), process.pid, log_path)
      for process in [p for p in running if p.poll() is not None]:
        unit, start, log_path = running.pop(process)
        ok = _finished_ok(unit, workdir)
        failed += [m.name for m in unit if m.name not in ok]
        progress.finished(unit, len(ok), time.time() - start)
        if len(ok) < len(unit):
          logging.error('%s failed (exit status %d): %s', _unit_name(unit), process.returncode,
                        _last_line(log_path))
        last_log = 0.0  # report every change at once
      if (pending or running) and time.time() - last_log >= log_every_s:
        now = time.time()
        logging.info(progress.line([(u, now - start) for u, start, _ in running.values()],
                                   pending))
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
