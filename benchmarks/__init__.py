"""Speed benchmarks behind scripts/bench.py: training throughput, LayerNorm GB/s, recurrent cells.

Nothing here is a test: the figures depend on the machine and its load, and CI asserts none.
"""

from __future__ import annotations

import importlib.util
import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(path: str, arg: str | None = None):
  """`get_config(arg)` of a config file named relative to the repository root."""
  spec = importlib.util.spec_from_file_location('benchmarked_config', os.path.join(REPO_ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
