"""Claims an experiment file states, put to the test on the selected runs.

A claim is a dict (experiments/fig6_pi_mnist.py has examples):
  {'kind': 'less', 'a': {'norm': 'layer', 'batch_size': 4}, 'b': {...}, 'metric': 'test_error',
   'text': 'LayerNorm at batch 4 has lower test error than BatchNorm at batch 4'}
kinds:
  less        a's metric is lower than b's: the interval of a - b lies below 0.
  within      |a - b| <= margin: the interval of a - b lies inside [-margin, margin].
  gap_larger  b - a is larger than than_b - than_a (e.g. LN's gain over LSTM is larger on long
              sequences): the interval of (b - a) - (than_b - than_a) lies above 0.
Each group spec names values of group keys; it must match exactly one group. Values are each
seed's metric at its best-validation evaluation, in the group's selected tuned setting; the
interval is the 95% t interval of the per-seed differences (paired on shared seeds).

Verdicts: 'holds' when the interval is on the claim's side, 'does not hold' when it is entirely
on the other side, 'inconclusive' otherwise (or with fewer than two seeds).
"""

from __future__ import annotations

import json
import math

from ln_jax.analysis import selection
from ln_jax.analysis import stats
from ln_jax.errors import UserError

KINDS = {'less': ('a', 'b'), 'within': ('a', 'b'), 'gap_larger': ('a', 'b', 'than_a', 'than_b')}
HOLDS, FAILS, INCONCLUSIVE = 'holds', 'does not hold', 'inconclusive'


def _find_group(spec: dict, keys: tuple, tuned_groups: dict, where: str):
  unknown = [k for k in spec if k not in keys]
  if unknown:
    raise UserError(f'{where} names {", ".join(unknown)}, which the runs are not grouped by '
                    f'({", ".join(keys)}); fix the claim or --group_by')
  matches = [values for values in tuned_groups
             if all(values[keys.index(k)] == v for k, v in spec.items())]
  if len(matches) != 1:
    return None
  return matches[0]


def check(claim: dict, index: int) -> None:
  where = f'claim {index + 1} ({claim.get("text", claim.get("kind"))!r})'
  if claim.get('kind') not in KINDS:
    raise UserError(f'{where} has kind {claim.get("kind")!r}; use one of {", ".join(KINDS)}')
  missing = [k for k in (*KINDS[claim['kind']], 'metric') if k not in claim]
  if claim['kind'] == 'within' and 'margin' not in claim:
    missing.append('margin')
  if missing:
    raise UserError(f'{where} lacks {", ".join(missing)}; see ln_jax/analysis/claims.py')


def _verdict(kind: str, interval: stats.Interval, margin: float) -> str:
  if interval.n < 2 or not math.isfinite(interval.low):
    return INCONCLUSIVE
  if kind == 'less':
    return HOLDS if interval.high < 0 else FAILS if interval.low > 0 else INCONCLUSIVE
  if kind == 'within':
    if -margin <= interval.low and interval.high <= margin:
      return HOLDS
    return FAILS if interval.low > margin or interval.high < -margin else INCONCLUSIVE
  return HOLDS if interval.low > 0 else FAILS if interval.high < 0 else INCONCLUSIVE


def evaluate(claims, keys: tuple, tuned: tuple, tuned_groups: dict, select_by: str) -> list:
  """One result dict per claim: the claim, its verdict, the interval and each group's mean,
  seeds and selected tuned value. Claims whose groups were not compared are 'not tested'."""
  results = []
  for index, claim in enumerate(claims):
    check(claim, index)
    roles = KINDS[claim['kind']]
    found = {role: _find_group(claim[role], keys, tuned_groups, f'claim {index + 1}')
             for role in roles}
    result = {'claim': claim, 'text': claim.get('text', claim['kind'])}
    if any(v is None for v in found.values()):
      missing = [json.dumps(claim[r]) for r, v in found.items() if v is None]
      results.append({**result, 'verdict': 'not tested',
                      'reason': f'no single group matches {", ".join(missing)}'})
      continue
    metric = claim['metric']
    seeds, groups = {}, {}
    for role, values in found.items():
      best = tuned_groups[values][0]
      seeds[role] = selection.by_seed(best.runs, metric, select_by)
      groups[role] = {'group': dict(zip(keys, values)),
                      'selected': dict(zip(tuned, best.tuned)),
                      'mean': stats.t_interval(list(seeds[role].values())).to_dict(),
                      'seeds': len(seeds[role])}
    if claim['kind'] == 'gap_larger':
      interval = stats.contrast([(1, seeds['b']), (-1, seeds['a']),
                                 (-1, seeds['than_b']), (1, seeds['than_a'])])
      how = f'paired on {interval.n} seeds'
    else:
      interval, how = stats.paired_difference(seeds['a'], seeds['b'])
    margin = float(claim.get('margin', 0.0))
    results.append({**result, 'verdict': _verdict(claim['kind'], interval, margin),
                    'difference': interval.to_dict(), 'how': how, 'groups': groups,
                    'metric': metric, 'margin': margin})
  return results


def _number(x: float, scale: float) -> str:
  if not math.isfinite(x):
    return '-'
  return f'{scale * x:+.2f}' if scale != 1.0 else f'{x:+.4g}'


def _what(result: dict) -> str:
  kind = result['claim']['kind']
  return {'less': 'a - b', 'within': 'a - b',
          'gap_larger': '(b - a) - (than_b - than_a)'}[kind]


def markdown(results: list, select_by: str, infos=None) -> str:
  """claims.md: one row per claim with its verdict and the numbers behind it. `infos`:
  {metric key: analysis.metrics.MetricInfo}, for units and display scale (none: as stored)."""
  infos = infos or {}
  lines = [f'Values: each seed\'s metric at its best {select_by}, in the selected setting; '
           'differences with a 95% t interval, in the metric\'s units (errors in points of %).',
           '',
           '| claim | verdict | difference | 95% interval | p | groups (mean, selected) |',
           '|---|---|---|---|---|---|']
  for r in results:
    if 'difference' not in r:
      lines.append(f'| {r["text"]} | {r["verdict"]} | - | - | - | {r["reason"]} |')
      continue
    d, info = r['difference'], infos.get(r['metric'])
    scale = info.scale if info else 1.0
    unit = '%' if info and info.unit == '%' else (f' {info.unit}' if info and info.unit else '')
    groups = '; '.join(
        f'{role}: {_group_text(g["group"])} {g["mean"]["mean"] * scale:.4g}'
        f'{unit} ({g["seeds"]} seeds'
        + (f', {_group_text(g["selected"])}' if g['selected'] else '') + ')'
        for role, g in r['groups'].items())
    margin = (f', margin {scale * r["margin"]:.2g}{" points" if unit == "%" else unit}'
              if r['claim']['kind'] == 'within' else '')
    lines.append(f'| {r["text"]} | **{r["verdict"]}** | {_what(r)} = '
                 f'{_number(d["mean"], scale)} ({r["how"]}{margin}) | '
                 f'[{_number(d["low"], scale)}, {_number(d["high"], scale)}] | '
                 f'{d["p_value"]:.3g} | {groups} |')
  return '\n'.join(lines) + '\n'


def _group_text(group: dict) -> str:
  return ','.join(f'{k.split(".")[-1]}={v}' for k, v in group.items())


def to_json(results: list) -> list:
  """claims.json: the results with non-finite numbers as null."""
  def clean(x):
    if isinstance(x, float) and not math.isfinite(x):
      return None
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    return x
  return clean(results)
