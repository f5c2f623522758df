"""Intervals against hand-computed values, and claims on small synthetic sweeps (run directories
written by the test: config.json + metrics.jsonl, no training)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from ln_jax.analysis import claims
from ln_jax.analysis import compare
from ln_jax.analysis import selection
from ln_jax.analysis import stats
from ln_jax.sweeps import sweep
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


def _write_run(path, config, records, task=None):
  """A finished run directory: config.json (with the task, when given) and metrics.jsonl."""
  os.makedirs(path)
  rundir.write_json_atomic(os.path.join(path, rundir.CONFIG_FILE),
                           {'config': config, **({'task': task} if task else {})})
  with open(os.path.join(path, rundir.METRICS_FILE), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in records)
  rundir.write_json_atomic(os.path.join(path, rundir.SUMMARY_FILE), {})


def _write(root, name, config, valid, test):
  records = [{'step': 10, 'epoch': 1.0, 'train_loss': 1.0, 'valid_error': valid + 0.1,
              'test_error': test + 0.1},
             {'step': 20, 'epoch': 2.0, 'train_loss': 0.5, 'valid_error': valid,
              'test_error': test}]
  _write_run(os.path.join(root, name), config, records)


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


def _evaluate_sweep(root):
  """(the claims' results, the sweep's defaults, the tuned groups) as compare computes them."""
  runs = compare.find_runs(root)
  defaults = compare.sweep_defaults(root)
  groups = compare.group_runs(runs, defaults.group_by, defaults.tuned)
  tuned = selection.tune(groups, defaults.tuned, defaults.select_by)
  return (claims.evaluate(defaults.claims, defaults.group_by, defaults.tuned, tuned,
                          defaults.select_by), defaults, tuned)


def test_claims_verdicts_on_a_synthetic_sweep(synthetic_sweep):
  results, _, _ = _evaluate_sweep(synthetic_sweep)
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


@pytest.mark.parametrize('extra, message', [
    ({'kind': 'more'}, "claim 1 .* has kind 'more'"),
    ({'kind': 'within'}, 'lacks margin'),
    ({'kind': 'faster', 'ratio': 0}, 'has ratio 0; give a positive number'),
    ({'kind': 'faster', 'level': 'a_final'}, "has level 'a_final'; give a number .* 'b_final'"),
    ({'kind': 'faster', 'at': 'final'}, 'has at, which a faster claim does not take'),
    ({'kind': 'no_worse', 'margin': '1%'}, "has margin '1%'; give a number"),
    ({'kind': 'less', 'at': 'last'}, "has at 'last'; use one of selected, final"),
    ({'kind': 'less', 'levle': 1.0}, 'has levle, which a less claim does not take'),
])
def test_a_malformed_claim_is_named_in_one_line(extra, message):
  claim = {'a': {}, 'b': {}, 'metric': 'test_error', **extra}
  with pytest.raises(UserError, match=message) as raised:
    claims.check(claim, 0)
  assert '\n' not in str(raised.value)


# ---- faster and no_worse: runs whose curves are written by hand ---------------------------------

SCORE_TASK = {'name': 'scoring', 'select_by': 'score',
              'metrics': [{'name': 'score', 'unit': '', 'lower_is_better': False}]}


def _curve_run(root, name, config, curve, metric='valid_loss', task=None):
  """A run whose `metric` is `curve` ([(epoch, value), ...]), one evaluation per point."""
  _write_run(os.path.join(root, name), config,
             [{'step': 10 * (i + 1), 'epoch': e, metric: v} for i, (e, v) in enumerate(curve)],
             task)


def _evaluate(root, claim_list):
  runs = compare.find_runs(root)
  groups = compare.group_runs(runs, ('norm',))
  return claims.evaluate(claim_list, ('norm',), (), selection.tune(groups, (), 'valid_error'),
                         'valid_error')


EPOCHS = range(1, 11)
B_DESCENT = 1.0            # b's loss falls by 1 an epoch: 11 + 0.1 * seed - epoch
A_DESCENT = (2.0, 2.1, 1.9)  # a's, per seed: about twice as fast


def _line(seed, descent, sign=1.0):
  """A curve falling linearly from 11 + 0.1 * seed (rising, negated, with sign -1): linear
  interpolation between the evaluations is then exact."""
  return [(e, sign * (11 + 0.1 * seed - descent * e)) for e in EPOCHS]


@pytest.fixture
def speed_runs(tmp_path):
  """layer: about twice as fast as none; batch: as layer, but seed 0 stalls at 5 (never reaches
  none's final values)."""
  root = str(tmp_path / 'speed')
  for seed in range(3):
    _curve_run(root, f'none_{seed}', {'norm': 'none', 'seed': seed}, _line(seed, B_DESCENT))
    _curve_run(root, f'layer_{seed}', {'norm': 'layer', 'seed': seed},
               _line(seed, A_DESCENT[seed]))
    stalled = [(e, max(v, 5.0)) for e, v in _line(seed, A_DESCENT[seed])]
    _curve_run(root, f'batch_{seed}', {'norm': 'batch', 'seed': seed},
               stalled if seed == 0 else _line(seed, A_DESCENT[seed]))
  return root


def _faster(a, b, **options):
  return {'kind': 'faster', 'a': {'norm': a}, 'b': {'norm': b}, 'metric': 'valid_loss',
          'text': f'{a} faster than {b} {options}', **options}


def test_faster_reads_epochs_to_b_worst_final_and_their_ratio(speed_runs):
  result, = _evaluate(speed_runs, [_faster('layer', 'none', ratio=1.0, level='b_final')])
  # none's finals are 1.0, 1.1, 1.2: the level is the worst, 1.2, which seed s of none reaches
  # at 9.8 + 0.1 s and seed s of layer at (9.8 + 0.1 s) / A_DESCENT[s].
  assert result['level'] == pytest.approx(1.2) and result['level_from'] == 'b_final'
  b_epochs = [9.8 + 0.1 * s for s in range(3)]
  a_epochs = [e / d for e, d in zip(b_epochs, A_DESCENT)]
  assert [p['epochs'] for p in result['groups']['b']['epochs']['per_seed']] == \
      pytest.approx(b_epochs)
  assert result['groups']['a']['epochs']['mean'] == pytest.approx(np.mean(a_epochs))
  assert result['groups']['b']['epochs']['never_reached'] == 0
  logs = np.log(1 / np.array(A_DESCENT))
  half = T_975_2 * logs.std(ddof=1) / math.sqrt(3)
  ratio = result['epochs_ratio']
  assert ratio['mean'] == pytest.approx(math.exp(logs.mean()))
  assert (ratio['low'], ratio['high']) == pytest.approx(
      (math.exp(logs.mean() - half), math.exp(logs.mean() + half)))
  assert result['how'] == 'paired on 3 seeds' and result['verdict'] == claims.HOLDS


def test_faster_verdicts_against_the_claimed_ratio(speed_runs):
  # The ratio's interval is about [0.44, 0.57]: below 1, above 0.4, around 0.5.
  results = _evaluate(speed_runs, [_faster('layer', 'none', ratio=r) for r in (1.0, 0.4, 0.5)]
                      + [_faster('none', 'layer', level=5.0), _faster('none', 'layer')])
  # none reaches 5.0 about twice as late as layer: not faster. At layer's worst final value,
  # which none never reaches, every seed counts as not faster (a ratio of at least 1) and no
  # more: inconclusive, not "does not hold".
  assert [r['verdict'] for r in results] == [claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE,
                                             claims.FAILS, claims.INCONCLUSIVE]
  assert results[-1]['groups']['a']['epochs']['never_reached'] == 3
  # A given level: layer's seeds reach 5.0 at (6 + 0.1 s) / A_DESCENT[s], none's at 6 + 0.1 s.
  given, = _evaluate(speed_runs, [_faster('layer', 'none', level=5.0)])
  assert given['level'] == 5.0 and given['level_from'] == 'given'
  assert given['epochs_ratio']['mean'] == pytest.approx(math.exp(np.mean(-np.log(A_DESCENT))))


def test_a_seed_that_never_reaches_the_level_counts_as_not_faster(speed_runs):
  result, = _evaluate(speed_runs, [_faster('batch', 'none')])
  per_seed = {p['seed']: p for p in result['groups']['a']['epochs']['per_seed']}
  # Seed 0 stalls at 5: counted at its run length (10 epochs), not below none's 9.8.
  assert per_seed[0]['reached'] is False and per_seed[0]['epochs'] == 10.0
  assert result['groups']['a']['epochs']['never_reached'] == 1
  assert result['verdict'] == claims.INCONCLUSIVE  # ratios 1.02, 0.48, 0.53
  text = claims.markdown([result], 'valid_error')
  assert '1 never reached it: counted as not faster' in text
  assert "valid_loss <= 1.2, the worst final value among b's seeds" in text


def test_faster_and_no_worse_follow_a_higher_is_better_metric(tmp_path):
  root = str(tmp_path / 'scores')
  for seed in range(3):
    for norm, descent in (('none', B_DESCENT), ('layer', A_DESCENT[seed])):
      _curve_run(root, f'{norm}_{seed}', {'norm': norm, 'seed': seed},
                 _line(seed, descent, sign=-1.0), metric='valid_score', task=SCORE_TASK)
  faster, better, worse = _evaluate(root, [
      {**_faster('layer', 'none'), 'metric': 'valid_score'},
      {'kind': 'no_worse', 'a': {'norm': 'layer'}, 'b': {'norm': 'none'},
       'metric': 'valid_score', 'at': 'final', 'text': 'layer no worse'},
      {'kind': 'no_worse', 'a': {'norm': 'none'}, 'b': {'norm': 'layer'},
       'metric': 'valid_score', 'at': 'final', 'text': 'none no worse'}])
  # Higher is better: the level is the lowest final score of none, -1.2.
  assert faster['level'] == pytest.approx(-1.2) and not faster['lower_is_better']
  assert faster['verdict'] == claims.HOLDS
  # layer ends higher (better) than none on every seed: b - a is negative.
  assert better['what'] == 'b - a' and better['difference']['high'] < 0
  assert (better['verdict'], worse['verdict']) == (claims.HOLDS, claims.FAILS)


def test_no_worse_against_its_margin(synthetic_sweep):
  runs = compare.find_runs(synthetic_sweep)
  groups = compare.group_runs(runs, ('norm', 'batch_size'), ('learning_rate',))
  tuned = selection.tune(groups, ('learning_rate',), 'valid_error')
  layer4, batch4, none4 = ({'norm': n, 'batch_size': 4} for n in ('layer', 'batch', 'none'))
  layer128 = {'norm': 'layer', 'batch_size': 128}
  def no_worse(a, b, margin):
    return {'kind': 'no_worse', 'a': a, 'b': b, 'metric': 'test_error', 'margin': margin}
  results = claims.evaluate(
      [no_worse(layer4, batch4, 0.0), no_worse(batch4, layer4, 0.0),
       no_worse(layer4, none4, 0.0), no_worse(layer4, layer128, 0.005),
       no_worse(layer4, layer128, -0.01)],
      ('norm', 'batch_size'), ('learning_rate',), tuned, 'valid_error')
  # LN4 - LN128 is about +0.0005 [-0.004, +0.005]: within a margin of 0.5 points, not 1 better.
  assert [r['verdict'] for r in results] == [claims.HOLDS, claims.FAILS, claims.INCONCLUSIVE,
                                             claims.HOLDS, claims.FAILS]
  assert results[0]['what'] == 'a - b'


# ---- the Figure-6 experiment's claims on a synthetic sweep --------------------------------------

FIG6 = 'experiments/fig6_pi_mnist.py'
# Per (norm, batch size): test errors of seeds 0-2, and the training NLL at the best validation
# evaluation (epoch 2) and at the final one (epoch 3). BatchNorm's NLL is the lower at epoch 2 but
# LayerNorm's at the end, so the claims read at the final evaluation must say LN is lower.
FIG6_ERRORS = {('layer', 128): (0.015, 0.016, 0.017), ('batch', 128): (0.014, 0.015, 0.0155),
               ('none', 128): (0.018, 0.0185, 0.0195), ('layer', 4): (0.0205, 0.021, 0.0225),
               ('batch', 4): (0.050, 0.055, 0.052), ('none', 4): (0.025, 0.020, 0.030)}
FIG6_NLL = {('layer', 128): (0.5, 0.001), ('batch', 128): (0.1, 0.003),
            ('none', 128): (0.6, 0.004), ('layer', 4): (0.6, 0.02), ('batch', 4): (0.2, 1.2),
            ('none', 4): (0.7, 0.05)}


@pytest.fixture
def fig6_sweep(tmp_path):
  experiment = sweep.load_experiment(f'{FIG6}:quick')
  root = str(tmp_path / 'fig6')
  for member in experiment.members:
    o = member.overrides
    key, seed = (o['norm'], o['batch_size']), o['seed']
    error, (nll_best, nll_final) = FIG6_ERRORS[key][seed], FIG6_NLL[key]
    noise = 1 + 0.05 * seed
    records = [(1.0, 2 * error, 2.0), (2.0, error, nll_best * noise),
               (3.0, error + 0.001, nll_final * noise)]  # the best validation error at epoch 2
    config = {'norm': o['norm'], 'batch_size': o['batch_size'], 'seed': seed,
              'learning_rate': o['learning_rate'],
              'norm_options': {'unbiased_variance': o['norm_options.unbiased_variance']}}
    _write_run(os.path.join(root, member.name), config,
               [{'step': int(10 * e), 'epoch': e, 'train_loss': nll, 'valid_error': err,
                 'test_error': err} for e, err, nll in records])
  rundir.write_json_atomic(os.path.join(root, 'sweep.json'), {
      'experiment': f'{FIG6}:quick', 'metrics': list(experiment.metrics),
      'group_by': list(experiment.group_by), 'tuned': list(experiment.tuned),
      'select_by': experiment.select_by, 'claims': list(experiment.claims), 'members': []})
  return root


def test_fig6_claims_are_the_papers_and_are_evaluated(fig6_sweep):
  results, defaults, tuned = _evaluate_sweep(fig6_sweep)
  assert len(results) == 8 and all(r['verdict'] != 'not tested' for r in results)
  papers = [r for r in results if not r['text'].startswith("(not the paper's claim)")]
  # Faster convergence than BN at batch 128 and 4 (final training NLL), robustness (LN loses
  # less test error from batch 128 to 4 than BN), and LN below BN at batch 4.
  assert [(r['claim']['kind'], r['metric'], r['claim'].get('at')) for r in papers] == [
      ('less', 'train_loss', 'final'), ('less', 'train_loss', 'final'),
      ('gap_larger', 'test_error', None), ('less', 'test_error', None)]
  assert [r['verdict'] for r in papers] == [claims.HOLDS] * 4
  gap = papers[2]['difference']['mean']  # (BN4 - BN128) - (LN4 - LN128)
  expected = np.mean([b4 - b128 - (l4 - l128) for b4, b128, l4, l128 in zip(
      FIG6_ERRORS[('batch', 4)], FIG6_ERRORS[('batch', 128)], FIG6_ERRORS[('layer', 4)],
      FIG6_ERRORS[('layer', 128)])])
  assert gap == pytest.approx(expected)
  # Read at the best validation error (epoch 2), BN's training NLL would be the lower one.
  at_selection = claims.evaluate([{**papers[0]['claim'], 'at': 'selected'}], defaults.group_by,
                                 defaults.tuned, tuned, defaults.select_by)
  assert at_selection[0]['verdict'] == claims.FAILS
  assert 'final evaluation' in claims.markdown(papers, defaults.select_by)
  # The figure: one panel per batch size, on the paper's axes.
  assert defaults.panel_by == 'batch_size'
  assert defaults.plot['test_error']['ylim'] == (0.005, 0.025)


@pytest.mark.parametrize('variant', [None, 'cpu', 'quick'])
def test_fig6_variants_train_both_batch_sizes_equally_long(variant):
  members = sweep.load_experiment(FIG6 + (f':{variant}' if variant else '')).members
  epochs = {(m.overrides['batch_size'], m.overrides['num_epochs']) for m in members}
  assert {b for b, _ in epochs} == {4, 128} and len({e for _, e in epochs}) == 1
  assert len({m.overrides['seed'] for m in members}) >= 3
