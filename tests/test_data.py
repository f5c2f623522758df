"""MNIST sources: the IDX reader on the real files, TFDS through mock data, synthetic."""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np
import pytest

from ln_jax import data
from ln_jax.errors import UserError
from conftest import load_config

# Uncompressed md5 of the official files.
MD5 = {'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
       't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637'}


def _data_config(**overrides):
  config = load_config('configs/pi_mnist.py').unlock()
  for key, value in overrides.items():
    setattr(config.data, key, value)
  return config.data


def test_idx_reader_on_real_mnist(mnist_dir):
  images = data.read_idx(os.path.join(mnist_dir, 'train-images-idx3-ubyte.gz'))
  labels = data.read_idx(os.path.join(mnist_dir, 't10k-labels-idx1-ubyte.gz'))
  assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
  for stem, array in (('train-images-idx3-ubyte', images), ('t10k-labels-idx1-ubyte', labels)):
    with gzip.open(os.path.join(mnist_dir, stem + '.gz'), 'rb') as f:
      assert hashlib.md5(f.read()).hexdigest() == MD5[stem]
  assert abs(images.mean() / 255.0 - 0.1307) < 1e-3


def test_pi_mnist_splits_on_real_mnist(mnist_dir):
  splits = data.load_splits(_data_config(source='idx', dir=mnist_dir))
  assert {k: len(v) for k, v in splits.items()} == {'train': 55000, 'valid': 5000, 'test': 10000}
  assert splits['train'].images.shape == (55000, 784)
  raw = data.read_idx(os.path.join(mnist_dir, 'train-images-idx3-ubyte.gz'))
  permutation = data.pixel_permutation(0)
  # valid is the first 5,000 training images, train the rest; pixels permuted by a fixed seed.
  np.testing.assert_array_equal(splits['valid'].images[0], raw[0].reshape(-1)[permutation])
  np.testing.assert_array_equal(splits['train'].images[0], raw[5000].reshape(-1)[permutation])


def test_raw_idx_files_read_like_gzipped(tmp_path, mnist_dir):
  for stem in sum(data.IDX_FILES.values(), ()):
    with gzip.open(os.path.join(mnist_dir, stem + '.gz'), 'rb') as src:
      (tmp_path / stem).write_bytes(src.read())
  raw = data.load_splits(_data_config(source='idx', dir=str(tmp_path), valid_size=100))
  assert len(raw['train']) == 59900 and len(raw['test']) == 10000


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(
      int(d).to_bytes(4, 'big') for d in array.shape)
  path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_idx_reader_rejects_bad_magic_and_truncation(tmp_path):
  good = tmp_path / 'good'
  _write_idx(good, np.arange(24).reshape(2, 3, 4))
  np.testing.assert_array_equal(data.read_idx(str(good)), np.arange(24).reshape(2, 3, 4))
  bad_magic = tmp_path / 'bad_magic'
  bad_magic.write_bytes(b'\x12\x34' + good.read_bytes()[2:])
  with pytest.raises(UserError, match='bad magic number'):
    data.read_idx(str(bad_magic))
  truncated = tmp_path / 'truncated'
  truncated.write_bytes(good.read_bytes()[:-5])
  with pytest.raises(UserError, match='truncated or corrupt'):
    data.read_idx(str(truncated))


def test_missing_idx_directory_names_the_fix(tmp_path):
  with pytest.raises(UserError, match='not a directory'):
    data.load_splits(_data_config(source='idx', dir=str(tmp_path / 'nope')))
  with pytest.raises(UserError, match='not found in data.dir'):
    data.load_splits(_data_config(source='idx', dir=str(tmp_path)))


def test_tfds_source_through_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    splits = data.load_splits(_data_config(source='tfds', dir='', valid_size=10))
  assert len(splits['train']) == 30 and len(splits['valid']) == 10
  assert len(splits['test']) == 40
  assert splits['train'].images.shape == (30, 784) and splits['train'].images.dtype == np.uint8
  assert splits['test'].labels.min() >= 0 and splits['test'].labels.max() < 10


def test_data_dir_environment_variable_selects_local_files(monkeypatch):
  monkeypatch.setenv(data.DATA_DIR_ENV, '/some/mnist')
  config = load_config('configs/pi_mnist.py')
  assert (config.data.source, config.data.dir) == ('idx', '/some/mnist')
  monkeypatch.delenv(data.DATA_DIR_ENV)
  config = load_config('configs/pi_mnist.py')
  assert (config.data.source, config.data.dir) == ('tfds', '')


def test_synthetic_source_is_seeded_and_capped():
  config = _data_config(source='synthetic', synthetic_train_size=300, synthetic_test_size=50,
                        valid_size=50, train_size=100)
  first, second = data.load_splits(config, seed=3), data.load_splits(config, seed=3)
  assert len(first['train']) == 100 and len(first['valid']) == 50 and len(first['test']) == 50
  np.testing.assert_array_equal(first['train'].images, second['train'].images)
  other = data.load_splits(config, seed=4)
  assert not np.array_equal(first['train'].images, other['train'].images)


def test_permutation_can_be_switched_off():
  kwargs = dict(source='synthetic', synthetic_train_size=200, synthetic_test_size=20,
                valid_size=20)
  plain = data.load_splits(_data_config(permute=False, **kwargs))
  permuted = data.load_splits(_data_config(permute=True, **kwargs))
  np.testing.assert_array_equal(permuted['train'].images,
                                plain['train'].images[:, data.pixel_permutation(0)])
