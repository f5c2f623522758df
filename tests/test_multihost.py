"""Multi-host: two processes of two CPU devices each train one run into one shared workdir.

Process 0 alone writes the run files, and the metrics are those of one process on four devices; a
second start finds the run complete and touches nothing; processes given different workdirs all
stop with one error line instead of waiting on each other.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ln_jax.training import checkpoint
from ln_jax.training import metrics_repair
from ln_jax.training import workdir as workdir_lib
from ln_jax.training import rundir

pytestmark = pytest.mark.slow  # processes joined into one job

REPO = pathlib.Path(__file__).resolve().parents[1]
# 320 training examples, batch 16: 20 steps, two evaluations, one compiled 10-step call and one
# compiled evaluation (the valid and test sets are both 100 examples).
CONFIG = ('--config=configs/pi_mnist.py:tiny,data.synthetic_train_size=420,'
          'data.synthetic_test_size=100,num_epochs=1.0,steps_per_call=10,num_devices=4')
TIMEOUT_S = 240  # a process that waits on a collective forever fails the test instead


def _gloo_available() -> bool:
  try:
    from jax._src.lib import _jax
  except ImportError:
    return False
  return hasattr(_jax, 'make_gloo_tcp_collectives')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _run(commands: list[tuple[list[str], dict]], logs: pathlib.Path) -> list[tuple[int, str]]:
  """Starts every (args, env) scripts/train.py at once; (returncode, stderr) of each. Kills them
  all if one is still running after TIMEOUT_S."""
  logs.mkdir(parents=True, exist_ok=True)
  procs, paths = [], []
  for i, (args, env) in enumerate(commands):
    paths.append(logs / f'{i}.stderr')
    with open(paths[-1], 'w') as stderr:
      procs.append(subprocess.Popen([sys.executable, 'scripts/train.py', *args], cwd=REPO,
                                    env=dict(os.environ, JAX_PLATFORMS='cpu', **env),
                                    stdout=subprocess.DEVNULL, stderr=stderr))
  deadline = time.time() + TIMEOUT_S
  try:
    for proc in procs:
      proc.wait(timeout=max(deadline - time.time(), 1))
  except subprocess.TimeoutExpired:
    pytest.fail(f'scripts/train.py still running after {TIMEOUT_S} s; stderr in {logs}')
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()  # SIGKILL: the run answers SIGTERM with a checkpoint save, itself a collective
        proc.wait()
  return [(proc.returncode, path.read_text()) for proc, path in zip(procs, paths)]


def _two_processes(workdirs: list[pathlib.Path], logs: pathlib.Path) -> list[tuple[int, str]]:
  env = {'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo',
         'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_COORDINATOR_ADDRESS': f'localhost:{_free_port()}', 'JAX_NUM_PROCESSES': '2'}
  return _run([(['--distributed', CONFIG, f'--workdir={workdir}'],
                dict(env, JAX_PROCESS_ID=str(i))) for i, workdir in enumerate(workdirs)], logs)


def _files(workdir: pathlib.Path) -> dict:
  """Every file under `workdir` with its bytes and modification time."""
  return {str(p.relative_to(workdir)): (p.read_bytes(), p.stat().st_mtime_ns)
          for p in sorted(workdir.rglob('*')) if p.is_file()}


def _metrics(workdir: pathlib.Path) -> list[dict]:
  return [{k: v for k, v in record.items() if k not in metrics_repair.WALL_CLOCK_KEYS}
          for record in rundir.read_metrics(str(workdir))]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  if not _gloo_available():
    pytest.skip('this jaxlib has no gloo CPU collectives: no multi-process run on CPU')
  root = tmp_path_factory.mktemp('multihost')
  shared = root / 'shared'
  out = {'shared': shared, 'single': root / 'single'}
  out['first'] = _two_processes([shared, shared], root / 'first')
  out['files'] = _files(shared)
  out['again'] = _two_processes([shared, shared], root / 'again')
  out['apart'] = _two_processes([shared, root / 'elsewhere'], root / 'apart')
  out['reference'] = _run([([CONFIG, f'--workdir={out["single"]}'],
                            {'XLA_FLAGS': '--xla_force_host_platform_device_count=4'})],
                          root / 'single_logs')
  return out


def test_two_processes_write_one_run(runs):
  assert [code for code, _ in runs['first']] == [0, 0], runs['first'][0][1][-3000:]
  shared = runs['shared']
  assert [r['step'] for r in rundir.read_metrics(str(shared))] == [10, 20]  # one line each
  assert rundir.is_complete(str(shared))
  config = json.loads((shared / rundir.CONFIG_FILE).read_text())
  assert config['device']['count'] == 4
  assert os.listdir(shared / checkpoint.CHECKPOINT_DIR) == ['20']
  assert len(list(shared.glob(workdir_lib.EVENTS_GLOB))) == 1


def test_only_process_0_logs_progress(runs):
  (_, first), (_, second) = runs['first']
  assert 'step 20 | epoch 1' in first
  assert 'step 20 | epoch 1' not in second


def test_two_processes_match_one_process_on_four_devices(runs):
  assert [code for code, _ in runs['reference']] == [0], runs['reference'][0][1][-3000:]
  multi, single = _metrics(runs['shared']), _metrics(runs['single'])
  assert [r['step'] for r in multi] == [r['step'] for r in single]
  for a, b in zip(multi, single):
    for key in a:
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=key)


def test_finished_run_is_left_alone(runs):
  assert [code for code, _ in runs['again']] == [0, 0], runs['again'][0][1][-3000:]
  assert all('nothing to do' in stderr for _, stderr in runs['again'])
  assert _files(runs['shared']) == runs['files']  # same bytes, same modification times


def test_processes_with_different_workdirs_all_stop_with_one_error(runs):
  for code, stderr in runs['apart']:
    assert code == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1 and 'one --workdir' in errors[0], stderr[-3000:]
  assert not (runs['shared'].parent / 'elsewhere').exists()  # process 1 writes nothing
