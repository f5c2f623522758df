"""Intervals against hand-computed values, and claims on small synthetic sweeps (run directories
written by the test: config.json + metrics.jsonl, no training)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from ln_jax.analysis import claims
from ln_jax.analysis import compare
from ln_jax.analysis import selection
from ln_jax.analysis import stats
from ln_jax.training import rundir
from ln_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T_975_2 = 4.302652729911275  # t distribution, 2 degrees of freedom, 97.5% quantile (tables)


def test_t_interval_matches_the_hand_computed_one():
  # values 1, 2, 6: mean 3, sd = sqrt((4 + 1 + 9) / 2) = sqrt(7), sem = sqrt(7 / 3).
  interval = stats.t_interval([1.0, 2.0, 6.0])
  sem = math.sqrt(7 / 3)
  assert interval.mean == pytest.approx(3.0)
  assert interval.low == pytest.approx(3 - T_975_2 * sem)
  assert interval.high == pytest.approx(3 + T_975_2 * sem)
  # With 2 degrees of freedom the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), so the two-sided
  # p-value is 1 - t / sqrt(2 + t^2).
  t = 3 / sem
  assert interval.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))
  one = stats.t_interval([0.5])
  assert one.mean == 0.5 and math.isnan(one.low) and one.n == 1


def test_paired_difference_uses_the_shared_seeds():
  a = {0: 0.10, 1: 0.12, 2: 0.11, 3: 0.50}   # seed 3 has no partner: left out
  b = {0: 0.13, 1: 0.14, 2: 0.16}
  interval, how = stats.paired_difference(a, b)
  # differences -0.03, -0.02, -0.05: mean -1/30, deviations 1/300, 4/300, -5/300.
  sd = math.sqrt((1 + 16 + 25) / 300 ** 2 / 2)
  assert how == 'paired on 3 seeds' and interval.n == 3
  assert interval.mean == pytest.approx(-1 / 30)
  assert interval.high == pytest.approx(-1 / 30 + T_975_2 * sd / math.sqrt(3))
  _, how = stats.paired_difference({0: 0.1, 1: 0.2}, {5: 0.3, 6: 0.4})
  assert how == 'unpaired'


def _write(root, name, config, valid, test):
  path = os.path.join(root, name)
  os.makedirs(path)
  rundir.write_json_atomic(os.path.join(path, rundir.CONFIG_FILE), {'config': config})
  records = [{'step': 10, 'epoch': 1.0, 'train_loss': 1.0, 'valid_error': valid + 0.1,
              'test_error': test + 0.1},
             {'step': 20, 'epoch': 2.0, 'train_loss': 0.5, 'valid_error': valid,
              'test_error': test}]
  with open(os.path.join(path, rundir.METRICS_FILE), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  rundir.write_json_atomic(os.path.join(path, rundir.SUMMARY_FILE), {})


# Test errors per (norm, batch size): three seeds each; the "noisy" group straddles layer's.
ERRORS = {('layer', 4): (0.020, 0.022, 0.021), ('batch', 4): (0.050, 0.053, 0.049),
          ('none', 4): (0.010, 0.030, 0.024), ('layer', 128): (0.019, 0.021, 0.0215)}
CLAIMS = [
    {'kind': 'less', 'a': {'norm': 'layer', 'batch_size': 4},
     'b': {'norm': 'batch', 'batch_size': 4}, 'metric': 'test_error', 'text': 'LN beats BN'},
    {'kind': 'less', 'a': {'norm': 'batch', 'batch_size': 4},
     'b': {'norm': 'layer', 'batch_size': 4}, 'metric': 'test_error', 'text': 'BN beats LN'},
    {'kind': 'less', 'a': {'norm': 'layer', 'batch_size': 4},
     'b': {'norm': 'none', 'batch_size': 4}, 'metric': 'test_error', 'text': 'LN beats none'},
    {'kind': 'within', 'a': {'norm': 'layer', 'batch_size': 4},
     'b': {'norm': 'layer', 'batch_size': 128}, 'metric': 'test_error', 'margin': 0.003,
     'text': 'LN at 4 within 0.3 of LN at 128'},
    {'kind': 'within', 'a': {'norm': 'batch', 'batch_size': 4},
     'b': {'norm': 'layer', 'batch_size': 128}, 'metric': 'test_error', 'margin': 0.003,
     'text': 'BN at 4 within 0.3 of LN at 128'},
    {'kind': 'gap_larger', 'a': {'norm': 'layer', 'batch_size': 4},
     'b': {'norm': 'batch', 'batch_size': 4}, 'than_a': {'norm': 'layer', 'batch_size': 128},
     'than_b': {'norm': 'layer', 'batch_size': 4}, 'metric': 'test_error',
     'text': 'LN gains more over BN at 4 than over itself at 128'},
    {'kind': 'less', 'a': {'norm': 'rms', 'batch_size': 4},
     'b': {'norm': 'layer', 'batch_size': 4}, 'metric': 'test_error', 'text': 'not swept'},
]


@pytest.fixture
def synthetic_sweep(tmp_path):
  root = str(tmp_path / 'sweep')
  for (norm, batch), errors in ERRORS.items():
    for seed, error in enumerate(errors):
      # A worse learning rate per group, which tuning must not pick.
      for lr, shift in ((1e-3, 0.0), (1e-2, 0.2)):
        _write(root, f'{norm}_{batch}_{lr}_{seed}',
               {'norm': norm, 'batch_size': batch, 'learning_rate': lr, 'seed': seed,
                'data': {'valid_size': 5000, 'source': 'idx'}},
               valid=error + shift, test=error + shift)
  rundir.write_json_atomic(os.path.join(root, 'sweep.json'), {
      'experiment': 'synthetic', 'metrics': ['test_error', 'train_loss'],
      'group_by': ['norm', 'batch_size'], 'tuned': ['learning_rate'],
      'select_by': 'valid_error', 'claims': CLAIMS, 'members': []})
  return root


def test_claims_verdicts_on_a_synthetic_sweep(synthetic_sweep):
  runs = compare.find_runs(synthetic_sweep)
  defaults = compare.sweep_defaults(synthetic_sweep)
  groups = compare.group_runs(runs, defaults.group_by, defaults.tuned)
  tuned = selection.tune(groups, defaults.tuned, defaults.select_by)
  results = claims.evaluate(defaults.claims, defaults.group_by, defaults.tuned, tuned,
                            defaults.select_by)
  verdicts = {r['text']: r['verdict'] for r in results}
  assert verdicts == {
      'LN beats BN': 'holds', 'BN beats LN': 'does not hold', 'LN beats none': 'inconclusive',
      'LN at 4 within 0.3 of LN at 128': 'holds', 'BN at 4 within 0.3 of LN at 128':
      'does not hold', 'LN gains more over BN at 4 than over itself at 128': 'holds',
      'not swept': 'not tested'}
  first = results[0]
  assert first['groups']['a']['selected'] == {'learning_rate': 1e-3}
  assert first['difference']['mean'] == pytest.approx(
      sum(ERRORS[('layer', 4)]) / 3 - sum(ERRORS[('batch', 4)]) / 3)
  assert first['how'] == 'paired on 3 seeds'


def test_compare_writes_claims_files(synthetic_sweep):
  result = subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'compare.py'),
                           synthetic_sweep], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
  assert result.returncode == 0, result.stderr[-2000:]
  with open(os.path.join(synthetic_sweep, 'claims.json')) as f:
    written = json.load(f)
  assert [r['verdict'] for r in written][:3] == ['holds', 'does not hold', 'inconclusive']
  with open(os.path.join(synthetic_sweep, 'claims.md')) as f:
    text = f.read()
  assert '| LN beats BN | **holds** |' in text
  assert 'LayerNorm, batch_size=4: learning_rate=0.001 (best mean valid_error of 2)' in \
      result.stdout


def test_a_malformed_claim_is_named():
  with pytest.raises(UserError, match="claim 1 .* has kind 'more'"):
    claims.check({'kind': 'more', 'a': {}, 'b': {}}, 0)
  with pytest.raises(UserError, match='lacks margin'):
    claims.check({'kind': 'within', 'a': {}, 'b': {}, 'metric': 'test_error'}, 0)
