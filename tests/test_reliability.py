"""Faults a run survives: a second writer, a killed sweep, damaged checkpoints, a full disk and a
damaged metrics.jsonl, each with real processes and real files."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ln_jax.analysis import compare
from ln_jax.errors import UserError
from ln_jax.training import checkpoint
from ln_jax.training import lock
from ln_jax.training import metrics_repair
from ln_jax.training import rundir
from ln_jax.training import train
from conftest import load_config

pytestmark = pytest.mark.slow  # trained runs, damaged on purpose

REPO = pathlib.Path(__file__).resolve().parents[1]
# 20 steps per epoch, 60 in all; evaluations every 10 steps, checkpoints every 15 (45 and 60 kept
# besides 30), fused calls of 5 steps.
VARIANT = ('tiny,data.valid_size=200,batch_size=20,num_epochs=3,steps_per_call=5,'
           'eval_every_epochs=0.5,checkpoint_every_epochs=0.75,checkpoint_keep=3')


def _config():
  return load_config('configs/pi_mnist.py', VARIANT)


def _tree(root: pathlib.Path) -> dict:
  """Every file under `root` with its bytes, but the lock file, whose text names its holder."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
          if p.is_file() and p.name != lock.LOCK_FILE}


def _hold_lock(folder: pathlib.Path) -> int:
  """A forked process that takes the lock of `folder` and sleeps; returns its pid once it holds
  the lock. (Forked, not started afresh: it needs nothing but the lock module, already loaded.)"""
  read_end, write_end = os.pipe()
  pid = os.fork()
  if pid == 0:
    try:
      lock.FolderLock(str(folder)).acquire()
      os.write(write_end, b'held')
      time.sleep(300)
    finally:
      os._exit(0)
  os.close(write_end)
  assert os.read(read_end, 4) == b'held'
  os.close(read_end)
  return pid


def _end(pid: int) -> None:
  os.kill(pid, signal.SIGKILL)
  os.waitpid(pid, 0)


def _error_line(stderr: str) -> str:
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert 'Traceback' not in stderr
  assert [line for line in lines if line.startswith('error:')] == [lines[-1]], lines[-5:]
  return lines[-1]


def test_second_process_on_a_workdir_gets_one_line_naming_the_holder(tmp_path):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  holder = _hold_lock(workdir)
  try:
    before = _tree(workdir)
    second = subprocess.run(
        [sys.executable, 'scripts/train.py', f'--config=configs/pi_mnist.py:{VARIANT}',
         f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    line = _error_line(second.stderr)
    assert f'workdir {workdir} is in use by process {holder} on host ' in line
    assert _tree(workdir) == before  # nothing written
  finally:
    _end(holder)


def test_a_lock_left_by_a_killed_process_is_taken_over_by_exactly_one(tmp_path):
  _end(_hold_lock(tmp_path))  # SIGKILL: it leaves its lock file, naming it, behind
  start_at = time.time() + 0.5
  contenders = []
  for _ in range(4):  # four processes try to take the stale lock at the same moment
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
      try:
        time.sleep(max(0.0, start_at - time.time()))
        try:
          lock.FolderLock(str(tmp_path)).acquire()
          os.write(write_end, b'took')
          time.sleep(2)
        except UserError as e:
          os.write(write_end, f'refused: {e}'.encode())
      finally:
        os._exit(0)
    os.close(write_end)
    contenders.append((pid, read_end))
  outcomes = {}
  for pid, read_end in contenders:
    outcomes[pid] = os.read(read_end, 4096).decode()
    os.close(read_end)
  for pid, _ in contenders:
    os.waitpid(pid, 0)
  assert sorted(o.split(':')[0] for o in outcomes.values()) == ['refused'] * 3 + ['took']
  winner = [pid for pid, o in outcomes.items() if o == 'took'][0]
  assert all('is in use by' in o for o in outcomes.values() if o != 'took')
  assert json.loads((tmp_path / lock.LOCK_FILE).read_text())['pid'] == winner
  lock.FolderLock(str(tmp_path)).acquire().release()  # free again once the winner is gone


def _children(pid: int) -> list[int]:
  found = []
  for entry in os.listdir('/proc'):
    if entry.isdigit():
      try:
        stat = pathlib.Path(f'/proc/{entry}/stat').read_text()
      except OSError:
        continue
      if int(stat.rsplit(')', 1)[1].split()[1]) == pid:
        found.append(int(entry))
  return found


def _alive(pid: int) -> bool:
  try:
    state = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0]
  except OSError:
    return False
  return state != 'Z'


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='needs /proc and prctl')
def test_sigkill_of_a_parallel_sweep_takes_its_children_with_it(tmp_path):
  experiment = tmp_path / 'long_experiment.py'
  experiment.write_text(textwrap.dedent('''
      BASE_CONFIG = 'configs/pi_mnist.py:tiny'
      def members(arg=None):
        return [{'seed': seed, 'num_epochs': 1000.0} for seed in (0, 1)]
      '''))
  sweep = subprocess.Popen(
      [sys.executable, 'scripts/sweep.py', f'--experiment={experiment}',
       f'--workdir={tmp_path / "sweep"}', '--parallel=2'], cwd=REPO,
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 120
  children = []
  while len(children) < 2 and time.time() < deadline and sweep.poll() is None:
    time.sleep(0.2)
    children = _children(sweep.pid)
  assert len(children) == 2, 'the sweep did not start its two children'
  sweep.send_signal(signal.SIGKILL)
  sweep.wait()
  deadline = time.time() + 30  # a child in training saves a checkpoint first
  while any(_alive(c) for c in children) and time.time() < deadline:
    time.sleep(0.2)
  left = [c for c in children if _alive(c)]
  for pid in left:
    os.kill(pid, signal.SIGKILL)
  assert not left, 'children outlived the killed sweep'


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> pathlib.Path:
  """An uninterrupted run, with checkpoints at steps 30, 45 and 60."""
  workdir = tmp_path_factory.mktemp('reliability') / 'reference'
  train.train_and_evaluate(_config(), str(workdir))
  assert checkpoint.manager(str(workdir), 3).all_steps() == [30, 45, 60]
  return workdir


def _unfinished_copy(reference: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
  """The reference run as it stood before summary.json: resuming it redoes nothing by itself."""
  shutil.copytree(reference, workdir)
  (workdir / rundir.SUMMARY_FILE).unlink()
  return workdir


def _largest_file(workdir: pathlib.Path, step: int) -> pathlib.Path:
  files = [p for p in (workdir / 'checkpoints' / str(step)).rglob('*') if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


def _damage(path: pathlib.Path, how: str) -> None:
  raw = path.read_bytes()
  if how == 'truncated':
    path.write_bytes(raw[:len(raw) // 2])
  elif how == 'emptied':
    path.write_bytes(b'')
  elif how == 'deleted':
    path.unlink()
  elif how == 'bit_flipped':
    middle = len(raw) // 2
    path.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0x10]) + raw[middle + 1:])


def _warnings(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize('how', ['truncated', 'emptied', 'deleted', 'bit_flipped'])
def test_each_kind_of_damage_fails_verification(reference, tmp_path, how):
  folder = shutil.copytree(reference / 'checkpoints', tmp_path / 'checkpoints')
  assert checkpoint.verify(str(folder), 60) is None
  damaged = _largest_file(tmp_path, 60)
  _damage(damaged, how)
  problem = checkpoint.verify(str(folder), 60)
  assert problem and str(damaged.relative_to(folder / '60')) in problem
  assert checkpoint.verify(str(folder), 45) is None


def test_damaged_checkpoints_fall_back_to_one_that_verifies_and_metrics_match(reference, tmp_path,
                                                                            caplog):
  workdir = _unfinished_copy(reference, tmp_path / 'run')
  _damage(_largest_file(workdir, 60), 'bit_flipped')  # restored without complaint, before
  _damage(_largest_file(workdir, 45), 'truncated')
  train.train_and_evaluate(_config(), str(workdir))
  warnings = [w for w in _warnings(caplog) if 'fails verification' in w]
  assert len(warnings) == 2
  assert f'checkpoint {workdir}/checkpoints/60 ' in warnings[0]
  assert f'checkpoint {workdir}/checkpoints/45 ' in warnings[1]
  assert metrics_repair.metrics_differences(str(reference), str(workdir)) == []  # replayed from 30
  assert rundir.is_complete(str(workdir))
  assert checkpoint.verify(str(workdir / 'checkpoints'), 60) is None  # saved again, sound


def test_no_checkpoint_that_verifies_is_one_error(reference, tmp_path):
  workdir = _unfinished_copy(reference, tmp_path / 'run')
  for step in (30, 45, 60):
    _damage(_largest_file(workdir, step), 'truncated')
  with pytest.raises(UserError, match=f'no checkpoint in {workdir}/checkpoints verifies'):
    train.train_and_evaluate(_config(), str(workdir))


def _garble(workdir: pathlib.Path, step: int) -> int:
  """Cuts the metrics.jsonl line of `step` in the middle; returns its line number."""
  lines = (workdir / rundir.METRICS_FILE).read_text().splitlines(keepends=True)
  number = [json.loads(line)['step'] for line in lines].index(step)
  lines[number] = lines[number][:25] + '\n'
  (workdir / rundir.METRICS_FILE).write_text(''.join(lines))
  return number + 1


def test_damaged_lines_after_the_checkpoint_are_dropped_to_be_written_again(tmp_path):
  lines = [json.dumps({'step': s, 'train_loss': 1.0 / s}) + '\n' for s in (10, 20, 30, 40)]
  lines[2] = lines[2][:12] + '\n'  # step 30: garbled
  (tmp_path / rundir.METRICS_FILE).write_text(''.join(lines))
  eval_steps = [10, 20, 30, 40, 50]
  damage = metrics_repair.first_damage(str(tmp_path), eval_steps)
  assert damage[0] == 30 and 'metrics.jsonl line 3 is damaged (it is not JSON' in damage[1]
  assert metrics_repair.keep_metrics_through(str(tmp_path), 20) == 2
  assert (tmp_path / rundir.METRICS_FILE).read_text() == ''.join(lines[:2])
  # A repeated line (two writers) is out of place as well.
  (tmp_path / rundir.METRICS_FILE).write_text(lines[0] + lines[1] + lines[0])
  assert metrics_repair.first_damage(str(tmp_path), eval_steps)[0] == 30


def test_damaged_metrics_line_before_the_checkpoint_goes_back_to_an_older_one(reference, tmp_path,
                                                                             caplog):
  workdir = _unfinished_copy(reference, tmp_path / 'run')
  number = _garble(workdir, 40)  # before checkpoints 45 and 60, after 30
  train.train_and_evaluate(_config(), str(workdir))
  warnings = [w for w in _warnings(caplog) if 'damaged' in w]
  assert len(warnings) == 1 and f'metrics.jsonl line {number} is damaged' in warnings[0]
  assert metrics_repair.metrics_differences(str(reference), str(workdir)) == []


def test_damaged_metrics_line_before_every_checkpoint_is_one_error(reference, tmp_path):
  workdir = _unfinished_copy(reference, tmp_path / 'run')
  number = _garble(workdir, 20)
  before = _tree(workdir)
  with pytest.raises(UserError, match=f'metrics.jsonl line {number} is damaged .*it comes before '
                     'checkpoint 30.*repair the line, or delete'):
    train.train_and_evaluate(_config(), str(workdir))
  assert _tree(workdir) == before


def test_finished_run_with_a_damaged_line_is_reported(reference, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  number = _garble(workdir, 30)
  with pytest.raises(UserError, match=f'line {number} is damaged .*the run is finished'):
    train.train_and_evaluate(_config(), str(workdir))


def test_compare_skips_unreadable_runs_with_one_warning_each(reference, tmp_path, caplog):
  shutil.copytree(reference, tmp_path / 'good')
  _garble(shutil.copytree(reference, tmp_path / 'bad_metrics'), 30)
  shutil.copytree(reference, tmp_path / 'bad_config')
  (tmp_path / 'bad_config' / rundir.CONFIG_FILE).write_text('{"config": {"norm": ')
  runs = compare.find_runs(str(tmp_path))
  assert [r.path for r in runs] == ['good']
  skipped = [w for w in _warnings(caplog) if w.startswith('skipping')]
  assert len(skipped) == 2
  assert any('bad_metrics/metrics.jsonl line 3 is damaged' in w for w in skipped)
  assert any('bad_config/config.json' in w for w in skipped)


@pytest.fixture
def small_disk(tmp_path):
  """A 600 KiB tmpfs: room for one checkpoint of the tiny model and the run's files, not two."""
  mount_point = tmp_path / 'disk'
  mount_point.mkdir()
  if os.geteuid() != 0 or not shutil.which('mount'):
    pytest.skip('mounting a small tmpfs needs root and mount(8)')
  mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=600k', 'tmpfs', str(mount_point)],
                           capture_output=True, text=True)
  if mounted.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {mounted.stderr.strip()}')
  yield mount_point
  subprocess.run(['umount', str(mount_point)], check=False)


def test_disk_full_during_a_save_is_one_line_and_resumes_once_freed(small_disk, reference):
  workdir = small_disk / 'run'
  full = subprocess.run([sys.executable, 'scripts/train.py', f'--config=configs/pi_mnist.py:'
                         f'{VARIANT}', f'--workdir={workdir}'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)
  assert full.returncode == 2, full.stderr[-3000:]
  line = _error_line(full.stderr)
  assert f'the disk holding {workdir}/checkpoints is full' in line
  assert 'a checkpoint needs about' in line and 'checkpoint 15 is kept' in line
  assert checkpoint.manager(str(workdir), 3).all_steps() == [15]
  assert checkpoint.verify(str(workdir / 'checkpoints'), 15) is None

  subprocess.run(['mount', '-o', 'remount,size=8m', str(small_disk)], check=True)
  train.train_and_evaluate(_config(), str(workdir))
  assert metrics_repair.metrics_differences(str(reference), str(workdir)) == []
