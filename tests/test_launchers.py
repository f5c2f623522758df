"""Sweeps as submitit jobs: `--launcher=local` end to end, and the SLURM array it would submit."""

from __future__ import annotations

import glob
import json
import os
import stat
import subprocess
import sys

import pytest

from ln_jax.training import rundir
from ln_jax.sweeps import launchers
from ln_jax.sweeps import sweep
from ln_jax.sweeps import sweep_runner
from ln_jax.errors import UserError

pytestmark = pytest.mark.slow  # submitit jobs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = '''
BASE_CONFIG = 'configs/pi_mnist.py:tiny,data.valid_size=0'

def members(arg=None):
  return [{'norm': 'layer', 'seed': seed, 'num_epochs': 0.25, 'model.hidden_sizes': (8,)}
          for seed in (0, 1)]
'''


def _sweep(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'sweep.py'), *args],
                        capture_output=True, text=True, cwd=REPO, timeout=300)


def test_local_launcher_runs_each_member_as_a_job_and_skips_finished_ones(tmp_path):
  (tmp_path / 'experiment.py').write_text(EXPERIMENT)
  workdir = tmp_path / 'sweep'
  args = [f'--experiment={tmp_path / "experiment.py"}', f'--workdir={workdir}',
          '--launcher=local', '--parallel=2']
  result = _sweep(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('seed-0', 'seed-1'):
    assert rundir.is_complete(str(workdir / name))
  job_logs = glob.glob(os.path.join(launchers.job_folder(str(workdir)), '*_log.out'))
  assert len(job_logs) == 2
  assert any('--only=seed-1' in open(p).read() for p in job_logs)
  assert '2/2 done' in result.stderr

  again = _sweep(*args)
  assert again.returncode == 0, again.stderr[-3000:]
  assert '0 to train' in again.stderr
  assert len(glob.glob(os.path.join(launchers.job_folder(str(workdir)), '*_log.out'))) == 2


def test_slurm_launcher_submits_one_array_task_per_member(tmp_path, monkeypatch):
  """A stand-in `sbatch` on PATH records what submitit hands to SLURM."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  sbatch = bin_dir / 'sbatch'
  sbatch.write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\n'
                    'echo "Submitted batch job 4242"\n')
  sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
  srun = bin_dir / 'srun'  # submitit looks for it before submitting anything
  srun.write_text('#!/bin/sh\nexit 0\n')
  srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setenv('PATH', f'{bin_dir}{os.pathsep}{os.environ["PATH"]}')
  (tmp_path / 'experiment.py').write_text(EXPERIMENT)
  experiment = sweep.load_experiment(str(tmp_path / 'experiment.py'))
  workdir = str(tmp_path / 'sweep')
  executor = launchers.make_executor('slurm', workdir, {
      'slurm_partition': 'gpu', 'slurm_time': '1:30:00', 'slurm_gpus_per_task': 1,
      'slurm_array_parallelism': 1})
  commands = [([m], sweep_runner.child_command(experiment, workdir, [m], {'seed': '3'}, False))
              for m in experiment.members]
  jobs = launchers.submit(executor, commands)
  assert [j.job_id for j in jobs] == ['4242_0', '4242_1']
  script = (tmp_path / 'submitted.sh').read_text()
  for line in ('#SBATCH --partition=gpu', '#SBATCH --time=90', '#SBATCH --gpus-per-task=1',
               '#SBATCH --array=0-1%1', '#SBATCH --ntasks-per-node=1'):
    assert line in script
  # Each task unpickles the command of its member: scripts/sweep.py --only=<member>.
  assert commands[1][1][-3:] == ['--only=seed-1', '--novmap_seeds', '--config.seed=3']
  assert os.path.isabs(commands[1][1][2].split('=', 1)[1].split(':')[0])


def test_launcher_options_are_checked(tmp_path, monkeypatch):
  assert launchers.slurm_time_minutes('90') == 90
  assert launchers.slurm_time_minutes('2:00:00') == 120
  assert launchers.slurm_time_minutes('1-00:00:00') == 24 * 60
  with pytest.raises(UserError, match='--launcher'):
    launchers.check_launcher('pbs')
  with pytest.raises(UserError, match='--slurm_time'):
    launchers.make_executor('slurm', str(tmp_path), {'slurm_time': 'soon'})
  monkeypatch.setenv('PATH', str(tmp_path))  # no srun
  with pytest.raises(UserError, match='found no SLURM'):
    launchers.make_executor('slurm', str(tmp_path), {})


def test_sweep_json_lists_the_resolved_configs(tmp_path):
  (tmp_path / 'experiment.py').write_text(EXPERIMENT)
  experiment = sweep.load_experiment(str(tmp_path / 'experiment.py'))
  base = sweep.load_base_config(experiment.base_config)
  configs = {m.name: sweep.member_config(base, m, {}) for m in experiment.members}
  sweep.write_sweep_file(str(tmp_path), experiment, {}, configs)
  listed = json.load(open(tmp_path / sweep.SWEEP_FILE))
  assert listed['configs']['seed-1']['seed'] == 1
  assert listed['configs']['seed-1']['model']['hidden_sizes'] == [8]
