"""Shared test fixtures: the real MNIST folder (skipped where absent) and small configs.

Tiers: `pytest -m "not slow"` runs the fast tier (layers, numerics, models, configs, errors
raised in-process); the tests marked `slow` train end to end, start scripts in subprocesses,
time benchmarks or span devices and processes.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile

import pytest

# One persistent compilation cache for the test workers and the scripts they start: the suite
# compiles the same tiny programs many times over, and a cached executable is the same program
# (so the same numbers). Set before any test imports JAX; JAX_COMPILATION_CACHE_DIR overrides.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(), f'ln_jax_tests_compilation_cache_{os.getuid()}'))

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.path.join(os.path.dirname(REPO_ROOT), 'shared', 'data', 'mnist')


def load_config(path: str, arg: str | None = None):
  """Calls get_config(arg) of a config file given relative to the repository root."""
  spec = importlib.util.spec_from_file_location('config_under_test',
                                                os.path.join(REPO_ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.fixture
def mnist_dir():
  if not os.path.isdir(MNIST_DIR):
    pytest.skip(f'real MNIST IDX files not found at {MNIST_DIR}')
  return MNIST_DIR


@pytest.fixture
def tiny_config():
  """The tiny synthetic PI-MNIST config, unlocked for per-test edits."""
  return load_config('configs/pi_mnist.py', 'tiny').unlock()


def classification_task():
  """The built-in MNIST classification task."""
  from ln_jax.tasks import classification
  return classification.TASK


def image_batch(images, labels=None) -> dict:
  """The classification task's batch dict ({'image', 'label'}) from arrays."""
  import numpy as np
  images = np.asarray(images)
  if labels is None:
    labels = np.zeros((images.shape[0],), np.int32)
  return {'image': images, 'label': np.asarray(labels)}


def new_train_state(config, key, example_images, model=None, tx=None):
  """A fresh `step.TrainState` for `config`'s task, the model initialised with `key` on
  `example_images` (the old `train.create_train_state(config, model, key, example_images)`)."""
  from ln_jax import tasks
  from ln_jax.training import optimizers
  from ln_jax.training import step
  task = tasks.load_task(config)
  model = task.create_model(config) if model is None else model
  tx = optimizers.make_optimizer(config) if tx is None else tx
  return step.create_train_state(config, task, model, tx, key, key, image_batch(example_images))


def empty_window(config=None):
  """The empty train-metric window of `config`'s task (default: classification)."""
  from ln_jax import tasks
  from ln_jax.training import window
  task = classification_task() if config is None else tasks.load_task(config)
  return window.empty_window(task.metric_names)


def set_key(config, key: str, value) -> None:
  """Sets the dotted `key` ('norm_options.groups') of an unlocked or locked config."""
  *parents, leaf = key.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value
