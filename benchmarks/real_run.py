"""Throughput of real training runs: `scripts/train.py` end to end, read from metrics.jsonl.

The benchmark's runners time the training loop alone; a real run also evaluates, writes its
metrics and checkpoints and logs progress. Its `steps_per_s` (steps over the wall time between
two evaluations) is what a user sees; the first window includes compilation and is left out.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from benchmarks import REPO_ROOT

_SYNTHETIC = ('data.source=synthetic,data.valid_size=1000,data.synthetic_test_size=1000,'
              'checkpoint_every_epochs=100')
# name: (config file, variant and overrides); synthetic digits, so no dataset is needed.
REAL_RUNS = {
    'mlp bs4 LN': ('configs/pi_mnist.py', 'batch_size=4,norm=layer,data.synthetic_train_size='
                   f'9000,num_epochs=2,eval_every_epochs=0.5,{_SYNTHETIC}'),
    'LSTM rows bs64': ('configs/seq_mnist.py', 'rows,norm=none,batch_size=64,'
                       'data.synthetic_train_size=7400,num_epochs=4,eval_every_epochs=1,'
                       f'{_SYNTHETIC}'),
}


def run(name: str, timeout_s: float = 600) -> dict:
  """One real run of REAL_RUNS[name]: the median steps_per_s of its windows after the first."""
  config, overrides = REAL_RUNS[name]
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, os.path.join(REPO_ROOT, 'scripts', 'train.py'),
               f'--config={os.path.join(REPO_ROOT, config)}:{overrides}', f'--workdir={workdir}']
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout_s)
    if done.returncode:
      raise RuntimeError(f'{" ".join(command)} failed: {done.stderr[-1000:]}')
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rates = [json.loads(line)['steps_per_s'] for line in f if line.strip()][1:]
  rate = statistics.median(rates)
  return {'name': name, 'command': f'python scripts/train.py --config={config}:{overrides}',
          'steps_per_s': rate, 'ms_per_step': 1e3 / rate, 'windows': len(rates),
          'window_rates': rates}
