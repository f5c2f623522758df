"""MNIST for the paper's experiments: IDX files, TFDS or synthetic, split 55k/5k/10k.

Every source yields uint8 images flattened to [N, 784] and int32 labels. The validation set is the
first `valid_size` training images (the split of the classic TensorFlow MNIST reader, which gives
the paper's 55,000 training images); a fixed, seeded pixel permutation makes the task
permutation-invariant in name as well as in fact.
"""

from __future__ import annotations

import gzip
import os
import socket
import urllib.parse
from typing import NamedTuple

import numpy as np

from ln_jax.errors import UserError

SOURCES = ('tfds', 'idx', 'synthetic')
DATASETS = ('mnist',)
IMAGE_SHAPE = (28, 28)
NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
NUM_CLASSES = 10
IDX_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
_IDX_DTYPES = {0x08: np.uint8}
DATA_DIR_ENV = 'LN_JAX_DATA_DIR'


class Split(NamedTuple):
  images: np.ndarray  # uint8 [N, 784]
  labels: np.ndarray  # int32 [N]

  def __len__(self):
    return len(self.labels)


def read_idx(path: str) -> np.ndarray:
  """Reads one IDX file (gzipped or raw), checking its magic number and size."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      raw = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f'cannot read IDX file {path} ({e}); replace it with an intact copy') from None
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise UserError(f'{path} is not an IDX file (bad magic number {raw[:4].hex()}); '
                    'point data.dir at the MNIST IDX files')
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise UserError(f'IDX file {path} is truncated (incomplete header); replace it')
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
  expected = header + int(np.prod(shape))
  if len(raw) != expected:
    raise UserError(f'IDX file {path} has {len(raw)} bytes but its header {shape} needs '
                    f'{expected}; the file is truncated or corrupt, replace it')
  return np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=header).reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
  for name in (stem + '.gz', stem):
    path = os.path.join(data_dir, name)
    if os.path.exists(path):
      return path
  raise UserError(f'{stem}[.gz] not found in data.dir={data_dir}; '
                  'put the four MNIST IDX files there or set data.dir to their folder')


def load_idx(data_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  if not data_dir:
    raise UserError(f'data.source=idx needs data.dir; pass --config.data.dir=DIR or set '
                    f'{DATA_DIR_ENV}')
  if not os.path.isdir(data_dir):
    raise UserError(f'data.dir={data_dir} is not a directory; point it at the MNIST IDX files')
  out = {}
  for split, (images_stem, labels_stem) in IDX_FILES.items():
    images = read_idx(_find_idx(data_dir, images_stem))
    labels = read_idx(_find_idx(data_dir, labels_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
      raise UserError(f'MNIST {split} IDX files in {data_dir} disagree: images {images.shape}, '
                      f'labels {labels.shape}; replace them')
    out[split] = (images, labels)
  return out


def _offline_hint() -> str:
  return (f'point data.source=idx and data.dir (or the {DATA_DIR_ENV} environment variable) at '
          'a folder holding the MNIST IDX files')


def load_tfds(name: str, data_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads a TFDS dataset through `tfds.data_source` (array_record; no TensorFlow needed)."""
  import tensorflow_datasets as tfds  # slow import: only when asked for

  def open_sources(download: bool):
    return tfds.data_source(name, split=['train', 'test'], data_dir=data_dir, download=download)

  try:
    sources = open_sources(download=False)
  except Exception:  # not prepared yet: download it, failing fast when offline
    _check_download_reachable(name)
    try:
      sources = open_sources(download=True)
    except Exception as e:  # TFDS raises many types for "could not download / prepare"
      raise UserError(f'TFDS could not load {name!r} ({type(e).__name__}: {str(e)[:200]}); '
                      + _offline_hint()) from None
  out = {}
  for split, source in zip(('train', 'test'), sources):
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex['image']).reshape(IMAGE_SHAPE) for ex in examples])
    labels = np.asarray([ex['label'] for ex in examples])
    out[split] = (images.astype(np.uint8), labels)
  return out


def _check_download_reachable(name: str) -> None:
  """Fails at once, rather than after minutes of download retries, when offline."""
  if name != 'mnist':
    return
  from tensorflow_datasets.image_classification import mnist as tfds_mnist
  host = urllib.parse.urlparse(getattr(tfds_mnist, '_MNIST_URL', '')).hostname
  if not host:
    return
  try:
    socket.getaddrinfo(host, 443)
  except OSError:
    raise UserError(f'TFDS has no prepared copy of {name!r} and cannot download it (no network); '
                    + _offline_hint()) from None


def synthetic(seed: int, train_size: int, test_size: int):
  """Learnable fake digits: one random prototype per class plus noise, as uint8 28x28 images."""
  rng = np.random.default_rng(seed)
  prototypes = rng.uniform(0, 255, (NUM_CLASSES, *IMAGE_SHAPE))

  def make(n):
    labels = rng.integers(0, NUM_CLASSES, n)
    noise = rng.normal(0, 60, (n, *IMAGE_SHAPE))
    return np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8), labels
  return {'train': make(train_size), 'test': make(test_size)}


def default_data_dir() -> str:
  return absolute_dir(os.environ.get(DATA_DIR_ENV, ''))


def absolute_dir(path: str) -> str:
  """`data.dir` as the absolute, symlink-free path config.json stores: the same folder named from
  another working directory (or through LN_JAX_DATA_DIR) is the same config; '' stays ''."""
  return os.path.realpath(os.path.expanduser(path)) if path else path


def with_absolute_dir(config):
  """`config` with an absolute `data.dir` (a copy when it changes; see `absolute_dir`)."""
  if 'data' not in config or 'dir' not in config.data:  # a task without a data folder
    return config
  absolute = absolute_dir(config.data.dir)
  if absolute == config.data.dir:
    return config
  config = config.copy_and_resolve_references()
  config.data.dir = absolute
  return config


def default_source() -> str:
  """IDX files when LN_JAX_DATA_DIR names them (offline machines), TFDS otherwise."""
  return 'idx' if os.environ.get(DATA_DIR_ENV) else 'tfds'


def mnist_config(permute: bool):
  """The `data` group of an MNIST config: source, folder, split sizes and the permutation."""
  import ml_collections
  d = ml_collections.ConfigDict()
  d.name = 'mnist'
  d.source = default_source()        # 'tfds' | 'idx' | 'synthetic'
  d.dir = default_data_dir()         # IDX folder, or TFDS data_dir ('' = TFDS default)
  d.valid_size = 5000
  d.train_size = ml_collections.config_dict.placeholder(int)  # cap, for quick runs
  d.permute = permute                # a fixed, seeded pixel permutation
  d.permutation_seed = 0
  d.synthetic_train_size = 6000
  d.synthetic_test_size = 1000
  return d


def pixel_permutation(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).permutation(NUM_PIXELS)


def load_splits(data_cfg, seed: int = 0) -> dict[str, Split]:
  """Loads `data_cfg.name` from `data_cfg.source` into train / valid / test splits."""
  if data_cfg.name not in DATASETS:
    raise UserError(f'unknown data.name {data_cfg.name!r}; choose one of {", ".join(DATASETS)}')
  if data_cfg.source == 'idx':
    raw = load_idx(data_cfg.dir)
  elif data_cfg.source == 'tfds':
    raw = load_tfds(data_cfg.name, data_cfg.dir or None)
  elif data_cfg.source == 'synthetic':
    raw = synthetic(seed, data_cfg.synthetic_train_size, data_cfg.synthetic_test_size)
  else:
    raise UserError(f'unknown data.source {data_cfg.source!r}; choose one of {", ".join(SOURCES)}')

  permutation = pixel_permutation(data_cfg.permutation_seed) if data_cfg.permute else None

  def to_split(images, labels):
    flat = images.reshape(len(images), NUM_PIXELS)
    if permutation is not None:
      flat = flat[:, permutation]
    return Split(np.ascontiguousarray(flat, np.uint8), np.asarray(labels, np.int32))

  train_images, train_labels = raw['train']
  valid_size = data_cfg.valid_size
  if not 0 <= valid_size < len(train_labels):
    raise UserError(f'data.valid_size={valid_size} must be in [0, {len(train_labels)}); '
                    'lower it')
  train = to_split(train_images[valid_size:], train_labels[valid_size:])
  if data_cfg.train_size is not None:
    if data_cfg.train_size <= 0:
      raise UserError(f'data.train_size={data_cfg.train_size} must be positive; raise it or '
                      'leave it unset for the whole training set')
    train = Split(train.images[:data_cfg.train_size], train.labels[:data_cfg.train_size])
  return {
      'train': train,
      'valid': to_split(train_images[:valid_size], train_labels[:valid_size]),
      'test': to_split(*raw['test']),
  }
