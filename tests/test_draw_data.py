"""Binarized MNIST (ln_jax/tasks/binarized_mnist.py): one fixed binarization whatever the call or
the run's seed, the 50k / 10k / 10k split, Larochelle's .amat files read or refused in one line,
the synthetic stand-in and the size caps."""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pytest

from conftest import load_config
from ln_jax import data as data_lib
from ln_jax.errors import UserError
from ln_jax.tasks import binarized_mnist
from test_errors import _write_idx

TRAIN_IMAGES, TEST_IMAGES = binarized_mnist.VALID_SIZE + 64, 32


def _config(variant: str = ''):
  return load_config('configs/draw_mnist.py', variant).unlock()


@pytest.fixture(scope='module')
def fake_mnist(tmp_path_factory) -> pathlib.Path:
  """MNIST IDX files with just over the 10,000 validation images in the training file."""
  folder = tmp_path_factory.mktemp('mnist')
  rng = np.random.default_rng(0)
  for split, n in (('train', TRAIN_IMAGES), ('test', TEST_IMAGES)):
    images_name, labels_name = data_lib.IDX_FILES[split]
    _write_idx(folder / images_name, rng.integers(0, 256, (n, 28, 28)))
    _write_idx(folder / labels_name, rng.integers(0, 10, n))
  return folder


def _sampled(folder, **overrides):
  config = _config()
  config.data.source, config.data.dir = 'sampled', str(folder)
  for key, value in overrides.items():
    config.data[key] = value
  return binarized_mnist.load_splits(config.data)


def test_sampled_binarization_is_fixed_across_calls_and_run_seeds(fake_mnist):
  first, again = _sampled(fake_mnist), _sampled(fake_mnist)
  config = _config('seed=7')  # the run's seed plays no part
  config.data.source, config.data.dir = 'sampled', str(fake_mnist)
  other_run = binarized_mnist.load_splits(config.data)
  for split in binarized_mnist.SPLITS:
    np.testing.assert_array_equal(first[split]['image'], again[split]['image'])
    np.testing.assert_array_equal(first[split]['image'], other_run[split]['image'])
  reseeded = _sampled(fake_mnist, binarize_seed=1)
  assert not np.array_equal(first['train']['image'], reseeded['train']['image'])


def test_sampled_split_is_first_train_images_then_the_last_ten_thousand(fake_mnist):
  splits = _sampled(fake_mnist)
  sizes = {k: len(v['image']) for k, v in splits.items()}
  assert sizes == {'train': TRAIN_IMAGES - binarized_mnist.VALID_SIZE,
                   'valid': binarized_mnist.VALID_SIZE, 'test': TEST_IMAGES}
  raw = data_lib.read_idx(str(fake_mnist / data_lib.IDX_FILES['train'][0])).reshape(-1, 784)
  # A pixel of 0 is never on, one of 255 always: the order of the images shows through.
  np.testing.assert_array_equal(splits['train']['image'][raw[:64] == 255], 1)
  np.testing.assert_array_equal(splits['valid']['image'][raw[64:] == 0], 0)
  assert all(v['image'].dtype == np.uint8 and v['image'].shape[1] == 784
             for v in splits.values())


def test_sampling_is_bernoulli_of_the_intensity():
  images = np.repeat(np.array([[0, 64, 128, 255]], np.uint8), 40000, axis=0)
  means = binarized_mnist.binarize(images, seed=0, stream=0).mean(0)
  np.testing.assert_allclose(means, [0.0, 64 / 255, 128 / 255, 1.0], atol=0.01)
  assert set(np.unique(binarized_mnist.binarize(images, 0, 0))) == {0, 1}


def test_size_caps_keep_the_first_examples(fake_mnist):
  full, capped = _sampled(fake_mnist), _sampled(fake_mnist, train_size=10, valid_size=5,
                                                 test_size=0)
  for split, n in (('train', 10), ('valid', 5), ('test', 0)):
    np.testing.assert_array_equal(capped[split]['image'], full[split]['image'][:n])


def test_real_mnist_gives_fixed_50k_10k_10k(mnist_dir):
  splits = _sampled(mnist_dir)
  assert {k: v['image'].shape for k, v in splits.items()} == {
      'train': (50000, 784), 'valid': (10000, 784), 'test': (10000, 784)}
  train = splits['train']['image']
  assert set(np.unique(train)) == {0, 1}
  assert 0.10 < train.mean() < 0.16  # MNIST's mean intensity is 0.13
  np.testing.assert_array_equal(train[:100], _sampled(mnist_dir)['train']['image'][:100])


def test_sampled_without_data_dir_is_one_line():
  config = _config()
  config.data.source, config.data.dir = 'sampled', ''
  with pytest.raises(UserError, match='data.source=sampled needs the MNIST IDX files'):
    binarized_mnist.load_splits(config.data)


# ---- Larochelle's .amat files -----------------------------------------------------------------
def _write_amat(folder: pathlib.Path, images: dict) -> pathlib.Path:
  folder.mkdir(exist_ok=True)
  for split, array in images.items():
    lines = [' '.join(str(v) for v in row) for row in array]
    (folder / binarized_mnist.AMAT_FILES[split]).write_text('\n'.join(lines) + '\n')
  return folder


def _amat_images(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {split: rng.integers(0, 2, (n, 784)) for split, n in
          (('train', 6), ('valid', 3), ('test', 2))}


def _amat_config(folder):
  config = _config()
  config.data.source, config.data.dir = 'amat', str(folder)
  return config


def test_amat_files_are_read_as_they_are(tmp_path):
  images = _amat_images()
  splits = binarized_mnist.load_splits(_amat_config(_write_amat(tmp_path / 'amat', images)).data)
  for split, array in images.items():
    np.testing.assert_array_equal(splits[split]['image'], array)
    assert splits[split]['image'].dtype == np.uint8


@pytest.mark.parametrize('damage,message', [
    (lambda lines: lines.__setitem__(3, lines[3][:-2]),
     'binarized_mnist_train.amat has 783 values on line 4; expected 784'),
    (lambda lines: lines.__setitem__(1, lines[1] + ' 1'),
     'binarized_mnist_train.amat has 785 values on line 2; expected 784'),
    (lambda lines: lines.__setitem__(2, lines[2].replace('1', '2', 1)),
     "binarized_mnist_train.amat has '2' on line 3; expected 784 values of 0 or 1"),
    (lambda lines: lines.__setitem__(5, lines[5].replace(' ', '', 1)),
     'binarized_mnist_train.amat has a value of several digits on line 6'),
])
def test_amat_of_the_wrong_shape_is_one_line_naming_file_and_line(tmp_path, damage, message):
  folder = _write_amat(tmp_path / 'amat', _amat_images())
  path = folder / binarized_mnist.AMAT_FILES['train']
  lines = path.read_text().splitlines()
  damage(lines)
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(UserError, match=re.escape(message)):
    binarized_mnist.load_splits(_amat_config(folder).data)


def test_missing_amat_file_is_one_line(tmp_path):
  folder = _write_amat(tmp_path / 'amat', _amat_images())
  (folder / binarized_mnist.AMAT_FILES['test']).unlink()
  with pytest.raises(UserError, match='binarized_mnist_test.amat not found in data.dir='):
    binarized_mnist.load_splits(_amat_config(folder).data)


def test_synthetic_images_are_binary_fixed_and_sized_by_the_config():
  config = _config('tiny')
  first, again = (binarized_mnist.load_splits(config.data) for _ in range(2))
  d = config.data
  assert {k: v['image'].shape for k, v in first.items()} == {
      'train': (d.synthetic_train_size, 784), 'valid': (d.synthetic_valid_size, 784),
      'test': (d.synthetic_test_size, 784)}
  for split in binarized_mnist.SPLITS:
    np.testing.assert_array_equal(first[split]['image'], again[split]['image'])
  assert set(np.unique(first['train']['image'])) == {0, 1}
