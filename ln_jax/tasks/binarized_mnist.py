"""Binarized MNIST for DRAW: a fixed binarization, split 50,000 / 10,000 / 10,000.

`config.data.source` picks where the binary images come from:
- 'sampled' (default): the MNIST IDX files in `data.dir` (LN_JAX_DATA_DIR by default), each
  pixel one Bernoulli(pixel / 255) draw seeded by `data.binarize_seed` alone (not the run's
  seed), so every run and every call sees the same images; the first 50,000 training images
  train, the last 10,000 validate, the 10,000 test images test. It stands in for Larochelle &
  Murray's fixed binarization, which is not installable offline (expect a few tenths of a nat of
  difference from the original files).
- 'amat': Larochelle's files binarized_mnist_{train,valid,test}.amat in `data.dir` (text, one
  image of 784 0/1 values per line).
- 'tfds': TFDS `binarized_mnist` (the same images as the .amat files).
- 'synthetic': random binary images (a few prototypes with flipped pixels), for tests.

`data.train_size`, `data.valid_size`, `data.test_size`, when set, keep the first N examples of a
split (cheap runs). Splits are {'image': uint8 [N, 784] of 0/1}.
"""

from __future__ import annotations

import os
import socket

import ml_collections
import numpy as np

from ln_jax import data as data_lib
from ln_jax.errors import UserError

SOURCES = ('sampled', 'amat', 'tfds', 'synthetic')
SPLITS = ('train', 'valid', 'test')
NUM_PIXELS = data_lib.NUM_PIXELS
VALID_SIZE = 10000  # the last 10,000 MNIST training images
AMAT_FILES = {split: f'binarized_mnist_{split}.amat' for split in SPLITS}
TFDS_SPLITS = {'train': 'train', 'valid': 'validation', 'test': 'test'}
TFDS_HOST = 'www.cs.toronto.edu'  # where TFDS downloads binarized_mnist from


def data_config() -> ml_collections.ConfigDict:
  """The `data` group of a binarized-MNIST config."""
  d = ml_collections.ConfigDict()
  d.source = 'sampled'                 # 'sampled' | 'amat' | 'tfds' | 'synthetic'
  d.dir = data_lib.default_data_dir()  # IDX files (sampled), .amat files, or TFDS data_dir
  d.binarize_seed = 0                  # fixes the sampled binarization (and synthetic images)
  d.train_size = ml_collections.config_dict.placeholder(int)  # first N of each split
  d.valid_size = ml_collections.config_dict.placeholder(int)
  d.test_size = ml_collections.config_dict.placeholder(int)
  d.synthetic_train_size = 512
  d.synthetic_valid_size = 128
  d.synthetic_test_size = 128
  return d


def binarize(images: np.ndarray, seed: int, stream: int) -> np.ndarray:
  """One Bernoulli(pixel / 255) draw per pixel, as uint8 0/1; `stream` separates the files."""
  rng = np.random.default_rng([seed, stream])
  uniform = rng.random(images.shape, dtype=np.float32)
  return (uniform < images.astype(np.float32) / 255.0).astype(np.uint8)


def _sampled(d) -> dict:
  if not d.dir:
    raise UserError(f'data.source=sampled needs the MNIST IDX files; pass --config.data.dir=DIR '
                    f'or set {data_lib.DATA_DIR_ENV}')
  if not os.path.isdir(d.dir):
    raise UserError(f'data.dir={d.dir} is not a directory; point it at the MNIST IDX files')
  raw = data_lib.load_idx(d.dir)
  train = binarize(raw['train'][0].reshape(-1, NUM_PIXELS), d.binarize_seed, 0)
  test = binarize(raw['test'][0].reshape(-1, NUM_PIXELS), d.binarize_seed, 1)
  if len(train) <= VALID_SIZE:
    raise UserError(f'the MNIST training file in {d.dir} holds {len(train)} images; the '
                    f'binarized split needs more than {VALID_SIZE}')
  return {'train': train[:-VALID_SIZE], 'valid': train[-VALID_SIZE:], 'test': test}


def read_amat(path: str) -> np.ndarray:
  """One .amat file as uint8 [N, 784]: lines of 784 single-digit 0/1 values apart by spaces."""
  name = os.path.basename(path)
  try:
    with open(path, 'rb') as f:
      lines = f.read().splitlines()
  except OSError as e:
    raise UserError(f'cannot read {path} ({e.strerror}); put the binarized MNIST .amat files '
                    'in data.dir') from None
  while lines and not lines[-1].strip():  # blank lines at the end are fine
    lines.pop()
  if not lines:
    raise UserError(f'{name} holds no images; replace the file')
  expected = f'expected {NUM_PIXELS} values of 0 or 1 per line (one 28x28 image); replace the file'
  images = np.empty((len(lines), NUM_PIXELS), np.uint8)
  for number, line in enumerate(lines, 1):  # line by line: a few MB at a time, not the file
    chars = np.frombuffer(line, np.uint8)
    digit = (chars == ord('0')) | (chars == ord('1'))
    bad = ~digit & (chars != ord(' ')) & (chars != ord('\t'))
    if bad.any():
      raise UserError(f'{name} has {chr(chars[np.argmax(bad)])!r} on line {number}; {expected}')
    if (digit[1:] & digit[:-1]).any():
      raise UserError(f'{name} has a value of several digits on line {number}; {expected}')
    values = chars[digit]
    if len(values) != NUM_PIXELS:
      raise UserError(f'{name} has {len(values)} values on line {number}; {expected}')
    images[number - 1] = values - ord('0')
  return images


def _amat(d) -> dict:
  if not d.dir or not os.path.isdir(d.dir):
    raise UserError(f'data.source=amat needs data.dir, the folder of '
                    f'{", ".join(AMAT_FILES.values())}; got {d.dir!r}')
  out = {}
  for split, name in AMAT_FILES.items():
    path = os.path.join(d.dir, name)
    if not os.path.isfile(path):
      raise UserError(f'{name} not found in data.dir={d.dir}; put the binarized MNIST .amat '
                      'files there')
    out[split] = read_amat(path)
  return out


def _tfds(d) -> dict:
  import tensorflow_datasets as tfds  # slow import: only when asked for

  def open_sources(download: bool):
    return tfds.data_source('binarized_mnist', split=list(TFDS_SPLITS.values()),
                            data_dir=d.dir or None, download=download)

  try:
    sources = open_sources(download=False)
  except Exception:  # not prepared yet: download it, failing fast when offline
    try:
      socket.getaddrinfo(TFDS_HOST, 80)
      sources = open_sources(download=True)
    except Exception as e:  # TFDS raises many types for "could not download / prepare"
      raise UserError(f'TFDS could not load binarized_mnist ({type(e).__name__}: '
                      f'{str(e)[:200]}); use data.source=sampled with the MNIST IDX files in '
                      'data.dir') from None
  out = {}
  for split, source in zip(TFDS_SPLITS, sources):
    images = [np.asarray(source[i]['image']).reshape(NUM_PIXELS) for i in range(len(source))]
    out[split] = np.stack(images).astype(np.uint8)
  return out


def synthetic(seed: int, sizes: dict) -> dict:
  """Learnable binary stand-ins: each image one of 8 random prototypes with 5% of pixels flipped."""
  rng = np.random.default_rng([seed, 2])
  prototypes = rng.random((8, NUM_PIXELS)) < 0.3

  def make(n):
    flips = rng.random((n, NUM_PIXELS)) < 0.05
    return (prototypes[rng.integers(0, len(prototypes), n)] ^ flips).astype(np.uint8)
  return {split: make(sizes[split]) for split in SPLITS}


def load_splits(d) -> dict:
  """{'train', 'valid', 'test'}: {'image': uint8 [N, 784] of 0/1} from `d.source`."""
  if d.source == 'sampled':
    images = _sampled(d)
  elif d.source == 'amat':
    images = _amat(d)
  elif d.source == 'tfds':
    images = _tfds(d)
  elif d.source == 'synthetic':
    images = synthetic(d.binarize_seed, {'train': d.synthetic_train_size,
                                         'valid': d.synthetic_valid_size,
                                         'test': d.synthetic_test_size})
  else:
    raise UserError(f'unknown data.source {d.source!r}; choose one of {", ".join(SOURCES)}')
  out = {}
  for split in SPLITS:
    cap = d[f'{split}_size']
    out[split] = {'image': np.ascontiguousarray(images[split][:cap])}
  return out


def config_checks(d) -> list[tuple[bool, str]]:
  """(condition, one-line message) pairs for the `data` group."""
  checks = [(d.source in SOURCES,
             f'unknown data.source {d.source!r}; choose one of {", ".join(SOURCES)}'),
            (0 <= d.binarize_seed < 2**32, f'data.binarize_seed={d.binarize_seed} must be in '
                                           '[0, 2**32)')]
  for split in SPLITS:
    cap = d[f'{split}_size']
    checks.append((cap is None or cap > (0 if split == 'train' else -1),
                   f'data.{split}_size={cap} must be {"positive" if split == "train" else ">= 0"}'
                   ', or unset for the whole split'))
    size = d[f'synthetic_{split}_size']
    checks.append((size > 0, f'data.synthetic_{split}_size={size} must be positive'))
  return checks
