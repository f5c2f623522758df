"""Training step time of the recurrent models (plain, LN and BN LSTM) in ln_jax's fused loop.

Needs `ln_jax/models/recurrent.py` and `configs/seq_mnist.py`; the models come from
`models.create_model(config)` like the MLP, so the same runner times them. When either file is
missing the benchmark reports why and skips this part.
"""

from __future__ import annotations

import importlib
import os

from ln_jax.benchmarks import REPO_ROOT, load_config, training
from ln_jax.errors import UserError

SEQ_CONFIG = os.path.join('configs', 'seq_mnist.py')
CELL_NORMS = ('none', 'layer', 'batch')  # 'none' first: the reference the others compare to


def missing() -> str | None:
  """Why the recurrent benchmark cannot run here, or None when it can."""
  try:
    importlib.import_module('ln_jax.models.recurrent')
  except ImportError as e:
    return f'ln_jax.models.recurrent cannot be imported ({e})'
  if not os.path.exists(os.path.join(REPO_ROOT, SEQ_CONFIG)):
    return f'{SEQ_CONFIG} not found'
  return None


def measure_cells(variant: str, batch_size: int, images, labels, *, steps: int, rounds: int,
                  warmup_steps: int, extra: str = '') -> dict:
  """Steps/s of each cell variant of `configs/seq_mnist.py:<variant>` at `batch_size`.

  Returns {'rows': [...], 'skipped': {norm: reason}}; each row has the step time relative to
  the plain LSTM ('vs_none').
  """
  runners, skipped, configs = {}, {}, {}
  for norm in CELL_NORMS:
    arg = ','.join(a for a in (variant, f'norm={norm}', f'batch_size={batch_size}', extra) if a)
    try:
      configs[norm] = load_config(SEQ_CONFIG, arg)
      runners[norm] = training.FusedRunner(configs[norm], images, labels)
    except UserError as e:  # e.g. a cell variant that is not implemented
      skipped[norm] = str(e)
  measured = training.measure(runners, steps, rounds, warmup_steps)
  rows = []
  for norm, result in measured.items():
    row = {'norm': norm, 'variant': variant, 'batch_size': batch_size,
           'cell': configs[norm].model.get('cell', '?'),
           'hidden_size': configs[norm].model.get('hidden_size', '?'),
           'steps_per_s': result['steps_per_s'], 'ms_per_step': 1e3 / result['steps_per_s'],
           'rounds': result['rounds'], 'cpu_per_wall': result['cpu_per_wall']}
    if 'none' in measured:
      row['vs_none'] = measured['none']['steps_per_s'] / result['steps_per_s']
    rows.append(row)
  return {'rows': rows, 'skipped': skipped}
