"""DRAW end to end through scripts/train.py: the bound falls over a tiny run, the pictures land in
the run directory and TensorBoard, a run killed with SIGKILL resumes to identical metrics,
vmapped seeds draw their own pictures, and bad settings stop with one line before anything is
written."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import load_config
from ln_jax.tasks import binarized_mnist
from ln_jax.training import pictures
from ln_jax.training import resume_check
from ln_jax.training import rundir
from ln_jax.training import train
from test_errors import _tree

pytestmark = pytest.mark.slow  # trainings and subprocesses

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = 'configs/draw_mnist.py:tiny'
PICTURE_NAMES = ('samples', 'glimpses')


def _train(args, workdir) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, 'scripts/train.py', *args, f'--workdir={workdir}'],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory) -> pathlib.Path:
  workdir = tmp_path_factory.mktemp('draw') / 'run'
  proc = _train([f'--config={TINY}'], workdir)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return workdir


def test_the_bound_falls_and_is_reconstruction_plus_kl(tiny_run):
  records = rundir.read_metrics(str(tiny_run))
  assert len(records) == 3
  valid = [r['valid_loss'] for r in records]
  assert valid[-1] < valid[0] - 1.0, valid
  for r in records:
    for split in ('train', 'valid', 'test'):
      assert r[f'{split}_loss'] == pytest.approx(r[f'{split}_reconstruction'] + r[f'{split}_kl'],
                                                 rel=1e-5)
  described = rundir.read_config(str(tiny_run))['task']
  assert described['select_by'] == 'loss'
  assert {m['name']: m['unit'] for m in described['metrics']} == {
      'loss': 'nats', 'reconstruction': 'nats', 'kl': 'nats'}


def test_pictures_are_written_as_png_and_tensorboard_images(tiny_run):
  folder = tiny_run / pictures.PICTURES_DIR
  for name in PICTURE_NAMES:
    for prefix in ('', pictures.FINAL_PREFIX):
      image = np.asarray(Image.open(folder / f'{prefix}{name}.png'))
      assert image.dtype == np.uint8 and image.ndim == 2 and image.min() < image.max()
  assert not list(folder.glob('.tmp_*'))  # every write renamed into place
  accumulator = event_accumulator.EventAccumulator(str(tiny_run), size_guidance={'images': 0})
  accumulator.Reload()
  assert {f'pictures/{n}' for n in PICTURE_NAMES} <= set(accumulator.Tags()['images'])
  events = accumulator.Images('pictures/samples')
  config = load_config('configs/draw_mnist.py', 'tiny')
  assert [e.step for e in events] == [r['step'] * config.batch_size
                                      for r in rundir.read_metrics(str(tiny_run))]
  decoded = np.asarray(Image.open(io.BytesIO(events[-1].encoded_image_string)).convert('L'))
  np.testing.assert_array_equal(decoded, np.asarray(Image.open(folder / 'samples.png')))


def test_sigkill_then_resume_gives_identical_metrics(tmp_path):
  # 8 steps per epoch, 32 in all: evaluations every 4 steps, checkpoints every 6.
  variant = ('tiny,num_epochs=4,eval_every_epochs=0.5,checkpoint_every_epochs=0.75,'
             'steps_per_call=4,checkpoint_keep=3')
  result = resume_check.run_check([f'--config=configs/draw_mnist.py:{variant}'],
                                  str(tmp_path / 'runs'), signals=['KILL'], timeout=300)
  assert result['returncodes'] == (0, 0)
  assert result['stages'][0]['returncode'] == -9
  assert result['differences'] == []
  assert result['resumed_steps'] == result['reference_steps']


def test_vmapped_seeds_each_draw_their_own_pictures(tmp_path):
  configs = [load_config('configs/draw_mnist.py', f'tiny,num_epochs=1,seed={s}') for s in (0, 1)]
  workdirs = [str(tmp_path / f'seed{s}') for s in (0, 1)]
  train.train_seeds(configs, workdirs)
  drawn = [np.asarray(Image.open(pathlib.Path(w) / pictures.PICTURES_DIR / 'samples.png'))
           for w in workdirs]
  assert drawn[0].shape == drawn[1].shape and not np.array_equal(drawn[0], drawn[1])


def _bad_amat(folder: pathlib.Path) -> pathlib.Path:
  folder.mkdir()
  for split, name in binarized_mnist.AMAT_FILES.items():
    width = 783 if split == 'valid' else 784
    (folder / name).write_text(' '.join(['0'] * width) + '\n')
  return folder


# name -> (arguments given the case's folder, text of the error line).
CASES = {
    'window_larger_than_image': (lambda d: ['--config.model.write_n=30'],
                                 'model.write_n=30: the attention window must be 1..28 pixels'),
    'zero_glimpses': (lambda d: ['--config.model.glimpses=0'],
                      'model.glimpses=0 must be at least 1'),
    'zero_latent': (lambda d: ['--config.model.latent_size=0'],
                    'model.latent_size=0 must be at least 1'),
    'amat_of_wrong_shape': (lambda d: ['--config.data.source=amat',
                                       f'--config.data.dir={_bad_amat(d / "amat")}'],
                            'binarized_mnist_valid.amat has 783 values on line 1; expected 784'),
}


@pytest.mark.parametrize('name', sorted(CASES))
def test_bad_setting_gets_one_error_line_and_changes_nothing(tmp_path, name):
  args, expected = CASES[name][0](tmp_path), CASES[name][1]
  before = _tree(tmp_path)
  proc = _train([f'--config={TINY}', *args], tmp_path / 'run')
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr
  assert [line for line in lines if line.startswith('error:')] == [lines[-1]]
  assert expected in lines[-1]
  assert _tree(tmp_path) == before
