"""Resuming: a run killed or stopped anywhere and re-run ends with the metrics of an uninterrupted
one; a finished run is left alone; the same config and seed give the same metrics."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import shutil
import signal

import pytest

from ln_jax.training import checkpoint
from ln_jax.training import metrics_repair
from ln_jax.training import resume_check
from ln_jax.training import rundir
from ln_jax.training import step as step_lib
from ln_jax.training import train
from ln_jax.training import workdir as workdir_lib
from ln_jax.errors import Interrupted

pytestmark = pytest.mark.slow  # interrupted and resumed subprocess runs

REPO = pathlib.Path(__file__).resolve().parents[1]
# 20 steps per epoch, 120 in all; evaluations every 10 steps, checkpoints every 15 and fused calls
# of 5 steps, so checkpoints and stops fall inside evaluation windows.
VARIANT = ('tiny,data.valid_size=200,batch_size=20,num_epochs=6,steps_per_call=5,'
           'eval_every_epochs=0.5,checkpoint_every_epochs=0.75,checkpoint_keep=3')
TOTAL_STEPS = 120


def _load(path: pathlib.Path, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _config(variant: str = ''):
  module = _load(REPO / 'configs' / 'pi_mnist.py', 'pi_mnist_config')
  return module.get_config(','.join(v for v in (VARIANT, variant) if v))


def _tree(root: pathlib.Path) -> dict:
  """Every file under `root` with its bytes: equal trees mean nothing was touched."""
  return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*'))
          if p.is_file()}


@pytest.fixture(scope='module')
def killed_and_resumed(tmp_path_factory) -> tuple[pathlib.Path, dict]:
  """resume_check's subprocesses of scripts/train.py: one uninterrupted run, one killed with SIGKILL,
  resumed, stopped with SIGTERM and resumed to the end."""
  workdir = tmp_path_factory.mktemp('check_resume')
  with pytest.MonkeyPatch.context() as env:
    # Compile once for the four processes: the executables, and so the numbers, are the same.
    env.setenv('JAX_COMPILATION_CACHE_DIR', str(workdir / 'jax_cache'))
    env.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
    env.setenv('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
    result = resume_check.run_check([f'--config=configs/pi_mnist.py:{VARIANT}'], str(workdir / 'runs'),
                             signals=['KILL', 'TERM'], timeout=300)
  return workdir / 'runs', result


@pytest.fixture(scope='module')
def reference(killed_and_resumed) -> pathlib.Path:
  """The uninterrupted run from `killed_and_resumed`."""
  return killed_and_resumed[0] / 'uninterrupted'


def test_sigkill_mid_run_then_resume_gives_identical_metrics(killed_and_resumed):
  _, result = killed_and_resumed
  killed = result['stages'][0]
  assert killed['returncode'] == -signal.SIGKILL
  assert not killed['complete']
  assert max(killed['metrics_steps']) > max(killed['checkpoints'])  # lines the resume drops
  assert result['returncodes'] == (0, 0)
  assert result['differences'] == []
  assert result['resumed_steps'] == list(range(10, TOTAL_STEPS + 1, 10))  # none lost or repeated


def test_sigterm_saves_a_checkpoint_and_exits_with_one_line(killed_and_resumed):
  _, result = killed_and_resumed
  stopped = result['stages'][1]
  assert stopped['returncode'] == 128 + signal.SIGTERM
  step = max(stopped['checkpoints'])
  assert step > max(result['stages'][0]['checkpoints'])
  last_line = stopped['stderr'].strip().splitlines()[-1]
  assert last_line.startswith(f'stopped: SIGTERM at step {step}/{TOTAL_STEPS}; checkpoint in ')
  assert 'Traceback' not in stopped['stderr']
  assert not stopped['complete']


def test_ctrl_c_saves_mid_window_and_resume_matches(reference, tmp_path, monkeypatch):
  calls = []
  real_train_steps = step_lib.train_steps

  def train_steps_then_ctrl_c(*args, **kwargs):
    calls.append(kwargs['num_steps'])
    out = real_train_steps(*args, **kwargs)
    if len(calls) == 5:  # step 25: past the checkpoint at 15 and the evaluation at 20
      os.kill(os.getpid(), signal.SIGINT)
    return out

  monkeypatch.setattr(step_lib, 'train_steps', train_steps_then_ctrl_c)
  # Python's own SIGINT handler whatever the process inherited (a shell running it in the
  # background hands it SIGINT ignored), put back afterwards.
  inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    with pytest.raises(Interrupted, match=f'SIGINT at step 25/{TOTAL_STEPS}') as stopped:
      train.train_and_evaluate(_config(), str(tmp_path))
    restored = signal.getsignal(signal.SIGINT)
  finally:
    signal.signal(signal.SIGINT, inherited)
  assert stopped.value.signum == signal.SIGINT
  assert restored is signal.default_int_handler  # handlers restored
  mngr = checkpoint.manager(str(tmp_path), 3)
  assert mngr.latest_step() == 25
  assert [r['step'] for r in rundir.read_metrics(str(tmp_path))] == [10, 20]

  monkeypatch.undo()
  train.train_and_evaluate(_config(), str(tmp_path))
  assert metrics_repair.metrics_differences(str(reference), str(tmp_path)) == []
  assert rundir.is_complete(str(tmp_path))


def test_rerunning_a_finished_run_changes_nothing(reference):
  before = _tree(reference)
  final = train.train_and_evaluate(_config(), str(reference))
  assert final == rundir.read_metrics(str(reference))[-1]
  assert _tree(reference) == before


def test_fresh_replaces_a_run_and_same_config_and_seed_give_identical_metrics(reference,
                                                                             tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  described = json.loads((workdir / rundir.CONFIG_FILE).read_text())
  described['config']['seed'] = 5  # as if a run with another config had been there
  rundir.write_json_atomic(str(workdir / rundir.CONFIG_FILE), described)
  (workdir / 'notes.txt').write_text('kept')

  train.train_and_evaluate(_config(), str(workdir), fresh=True)
  # The same config and seed as `reference`, run in another process: the same metrics.
  assert metrics_repair.metrics_differences(str(reference), str(workdir)) == []
  described = json.loads((workdir / rundir.CONFIG_FILE).read_text())
  assert described['config']['seed'] == 0
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint'} <= set(described['versions'])
  assert described['device']['backend'] == 'cpu'
  if shutil.which('git'):
    assert described['git_commit'] and len(described['git_commit'].split('-')[0]) == 40
  assert len(list(workdir.glob(workdir_lib.EVENTS_GLOB))) == 1  # the old run's events are gone
  assert (workdir / 'notes.txt').read_text() == 'kept'  # only the run's own files go


def test_keep_metrics_through_drops_later_and_torn_lines(tmp_path):
  lines = [json.dumps({'step': s, 'train_loss': 1.0 / s}) + '\n' for s in (10, 20, 30)]
  (tmp_path / rundir.METRICS_FILE).write_text(''.join(lines) + '{"step": 40, "train_lo')
  assert metrics_repair.keep_metrics_through(str(tmp_path), 20) == 2
  assert (tmp_path / rundir.METRICS_FILE).read_text() == ''.join(lines[:2])
  assert metrics_repair.keep_metrics_through(str(tmp_path), 20) == 0
