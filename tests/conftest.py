"""Shared test fixtures: the real MNIST folder (skipped where absent) and small configs."""

from __future__ import annotations

import importlib.util
import os

import pytest

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
