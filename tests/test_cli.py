"""scripts/train.py end to end, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ln_jax.training import rundir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(*args, env=None):
  return subprocess.run(
      [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'train.py'), *args],
      capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
      env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_trains_a_tiny_run_and_shows_progress(tmp_path):
  workdir = tmp_path / 'run'
  result = _train('--config=configs/pi_mnist.py:tiny,norm=batch', f'--workdir={workdir}',
                  '--config.batch_size=8', '--config.log_every_seconds=0')
  assert result.returncode == 0, result.stderr[-3000:]
  records = rundir.read_metrics(str(workdir))
  assert records and records[-1]['epoch'] == 2.0
  assert 'steps/s' in result.stderr and 'ETA' in result.stderr
  assert 'test_error' in result.stderr
  assert (workdir / 'config.json').exists() and (workdir / 'checkpoints').is_dir()
  assert any(name.startswith('events.out.tfevents') for name in os.listdir(workdir))


def _assert_one_error_line(result, fragment):
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines[-1].startswith('error: ') and fragment in lines[-1], lines
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_unknown_config_key_is_one_error_line(tmp_path):
  result = _train('--config=configs/pi_mnist.py:tiny', f'--workdir={tmp_path / "w"}',
                  '--config.nrom=layer')
  _assert_one_error_line(result, "unknown config key 'nrom' (did you mean 'norm'?)")
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_unknown_variant_key_and_bad_values_are_one_error_line(tmp_path):
  _assert_one_error_line(
      _train('--config=configs/pi_mnist.py:tiny,bogus=1', f'--workdir={tmp_path / "a"}'),
      "unknown config key 'bogus'")
  _assert_one_error_line(
      _train('--config=configs/pi_mnist.py:tiny', f'--workdir={tmp_path / "b"}',
             '--config.norm=instance'),
      "unknown norm 'instance'")
  _assert_one_error_line(
      _train('--config=configs/pi_mnist.py:tiny', f'--workdir={tmp_path / "c"}',
             '--config.data.source=idx', f'--config.data.dir={tmp_path / "missing"}'),
      'is not a directory')
