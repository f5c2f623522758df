"""Claims an experiment file states, put to the test on the selected runs.

A claim is a dict (experiments/fig6_pi_mnist.py has examples):
  {'kind': 'less', 'a': {'norm': 'layer', 'batch_size': 4}, 'b': {...}, 'metric': 'test_error',
   'text': 'LayerNorm at batch 4 has lower test error than BatchNorm at batch 4'}
kinds:
  less        a's metric is lower than b's: the interval of a - b lies below 0.
  within      |a - b| <= margin: the interval of a - b lies inside [-margin, margin].
  gap_larger  b - a is larger than than_b - than_a (e.g. LN's gain over LSTM is larger on long
              sequences): the interval of (b - a) - (than_b - than_a) lies above 0.
  no_worse    a is no worse than b by more than `margin` (default 0): the interval of a - b, or
              of b - a for a higher-is-better metric (positive: a is worse), lies below margin.
  faster      a reaches a level of the metric in fewer epochs than b: the interval of the
              per-seed ratio epochs_a / epochs_b lies below `ratio` (default 1; 0.5: "twice as
              fast"). `level` (default 'b_final'): a number in the metric's stored units, or
              'b_final', the worst final value among b's seeds (so every b seed reaches it).
              Each run's epochs: the first crossing of the level on its evaluation curve,
              interpolated linearly between evaluations, in the metric's direction (at or below
              the level for a loss). A seed of a that never reaches the level counts as not
              faster than b on that seed (flagged in the output); a seed of b that never reaches
              it counts at its run length. The interval is the 95% t interval of the log ratio,
              shown as a ratio (convergence.py).
Each group spec names values of group keys; it must match exactly one group. The runs are those
of the group's selected tuned setting. Values are each seed's metric at its best-validation
evaluation, or at its final one with 'at': 'final' (equal epochs when the runs train equally
long: use it for training losses); the interval is the 95% t interval of the per-seed
differences (paired on shared seeds, Welch's interval when fewer than two are shared).

Verdicts: 'holds' when the interval is on the claim's side, 'does not hold' when it is entirely
on the other side, 'inconclusive' otherwise (or with fewer than two seeds). Claims whose groups
were not compared are 'not tested'. `markdown` and `to_json` write claims.md and claims.json.
"""

from __future__ import annotations

import json
import math
import numbers

from ln_jax.analysis import convergence
from ln_jax.analysis import metrics as metrics_lib
from ln_jax.analysis import selection
from ln_jax.analysis import stats
from ln_jax.errors import UserError

ROLES = {'less': ('a', 'b'), 'within': ('a', 'b'), 'gap_larger': ('a', 'b', 'than_a', 'than_b'),
         'no_worse': ('a', 'b'), 'faster': ('a', 'b')}
KINDS = tuple(ROLES)
# Fields each kind takes beside its groups, 'kind', 'metric' and 'text'.
OPTIONS = {'less': ('at',), 'within': ('at', 'margin'), 'gap_larger': ('at',),
           'no_worse': ('at', 'margin'), 'faster': ('ratio', 'level')}
READ_AT = ('selected', 'final')
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


def _is_number(x) -> bool:
  return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def check(claim: dict, index: int) -> None:
  """Raises a one-line UserError for a claim of an unknown kind, with a missing or unknown field,
  or with a field of the wrong type."""
  where = f'claim {index + 1} ({claim.get("text", claim.get("kind"))!r})'
  kind = claim.get('kind')
  if kind not in ROLES:
    raise UserError(f'{where} has kind {kind!r}; use one of {", ".join(KINDS)}')
  missing = [k for k in (*ROLES[kind], 'metric') if k not in claim]
  if kind == 'within' and 'margin' not in claim:
    missing.append('margin')
  if missing:
    raise UserError(f'{where} lacks {", ".join(missing)}; see ln_jax/analysis/claims.py')
  unknown = [k for k in claim if k not in (*ROLES[kind], *OPTIONS[kind], 'kind', 'metric',
                                           'text')]
  if unknown:
    raise UserError(f'{where} has {", ".join(unknown)}, which a {kind} claim does not take '
                    f'(it takes {", ".join(OPTIONS[kind])}); see ln_jax/analysis/claims.py')
  if 'margin' in claim and not _is_number(claim['margin']):
    raise UserError(f'{where} has margin {claim["margin"]!r}; give a number in the metric\'s '
                    'stored units')
  if claim.get('at', 'selected') not in READ_AT:
    raise UserError(f'{where} has at {claim["at"]!r}; use one of {", ".join(READ_AT)}')
  if 'ratio' in claim and not (_is_number(claim['ratio']) and claim['ratio'] > 0):
    raise UserError(f'{where} has ratio {claim["ratio"]!r}; give a positive number (1: faster, '
                    '0.5: twice as fast)')
  if 'level' in claim and not (_is_number(claim['level']) or
                               claim['level'] == convergence.B_FINAL):
    raise UserError(f'{where} has level {claim["level"]!r}; give a number in the metric\'s '
                    f'stored units or {convergence.B_FINAL!r}')


def _verdict(claim: dict, interval: stats.Interval) -> str:
  """The verdict of `interval` (a - b, the contrast, or epochs_a / epochs_b) for `claim`."""
  if interval.n < 2 or not math.isfinite(interval.low) or not math.isfinite(interval.high):
    return INCONCLUSIVE
  kind, margin = claim['kind'], float(claim.get('margin', 0.0))
  if kind == 'within':
    if -margin <= interval.low and interval.high <= margin:
      return HOLDS
    return FAILS if interval.low > margin or interval.high < -margin else INCONCLUSIVE
  if kind == 'gap_larger':
    return HOLDS if interval.low > 0 else FAILS if interval.high < 0 else INCONCLUSIVE
  # less, no_worse, faster: the interval must lie below a bound.
  bound = {'less': 0.0, 'no_worse': margin, 'faster': float(claim.get('ratio', 1.0))}[kind]
  return HOLDS if interval.high < bound else FAILS if interval.low > bound else INCONCLUSIVE


def _group_summary(values: tuple, keys: tuple, tuned: tuple, setting, by_seed: dict) -> dict:
  return {'group': dict(zip(keys, values)), 'selected': dict(zip(tuned, setting.tuned)),
          'mean': stats.t_interval(list(by_seed.values())).to_dict(), 'seeds': len(by_seed)}


def _faster(claim: dict, settings: dict) -> dict:
  """The result fields of a 'faster' claim; `settings`: {role: the group's selected Setting}."""
  metric, level = claim['metric'], claim.get('level', convergence.B_FINAL)
  runs_a, runs_b = settings['a'].runs, settings['b'].runs
  value = convergence.worst_final(runs_b, metric) if level == convergence.B_FINAL else level
  if not math.isfinite(value):
    return {'verdict': 'not tested', 'reason': f'no run of b recorded {metric}'}
  speed = convergence.speed_ratio(runs_a, runs_b, metric, value)
  return {'verdict': _verdict(claim, speed['epochs_ratio']),
          'epochs_ratio': speed['epochs_ratio'].to_dict(), 'how': speed['how'],
          'level': value, 'level_from': level if level == convergence.B_FINAL else 'given',
          'lower_is_better': metrics_lib.lower_is_better(runs_b[0], metric),
          'bound': float(claim.get('ratio', 1.0)), 'epochs': speed['epochs']}


def _difference(claim: dict, seeds: dict, lower_is_better: bool) -> dict:
  """The result fields of the kinds that compare values: the interval and how it was paired."""
  kind = claim['kind']
  if kind == 'gap_larger':
    interval = stats.contrast([(1, seeds['b']), (-1, seeds['a']),
                               (-1, seeds['than_b']), (1, seeds['than_a'])])
    how, what = f'paired on {interval.n} seeds', '(b - a) - (than_b - than_a)'
  elif kind == 'no_worse' and not lower_is_better:  # oriented: positive means a is worse
    interval, how = stats.paired_difference(seeds['b'], seeds['a'])
    what = 'b - a'
  else:
    interval, how = stats.paired_difference(seeds['a'], seeds['b'])
    what = 'a - b'
  return {'verdict': _verdict(claim, interval), 'difference': interval.to_dict(), 'how': how,
          'what': what, 'margin': float(claim.get('margin', 0.0)),
          'at': claim.get('at', 'selected')}


def evaluate(claims, keys: tuple, tuned: tuple, tuned_groups: dict, select_by: str) -> list:
  """One result dict per claim: the claim, its verdict, the interval (or the epochs ratio) and
  each group's mean, seeds and selected tuned value. Raises UserError for a malformed claim."""
  results = []
  for index, claim in enumerate(claims):
    check(claim, index)
    found = {role: _find_group(claim[role], keys, tuned_groups, f'claim {index + 1}')
             for role in ROLES[claim['kind']]}
    result = {'claim': claim, 'text': claim.get('text', claim['kind'])}
    if any(v is None for v in found.values()):
      missing = [json.dumps(claim[r]) for r, v in found.items() if v is None]
      results.append({**result, 'verdict': 'not tested',
                      'reason': f'no single group matches {", ".join(missing)}'})
      continue
    metric = claim['metric']
    final = claim.get('at') == 'final' or claim['kind'] == 'faster'
    settings = {role: tuned_groups[values][0] for role, values in found.items()}
    seeds = {role: selection.by_seed(s.runs, metric, select_by, final)
             for role, s in settings.items()}
    groups = {role: _group_summary(found[role], keys, tuned, settings[role], seeds[role])
              for role in found}
    if claim['kind'] == 'faster':
      fields = _faster(claim, settings)
      for role, epochs in fields.pop('epochs', {}).items():
        groups[role]['epochs'] = epochs
    else:
      lower = metrics_lib.lower_is_better(settings['a'].runs[0], metric)
      fields = _difference(claim, seeds, lower)
    results.append({**result, **fields, 'groups': groups, 'metric': metric})
  return results


def _number(x: float, scale: float) -> str:
  if not math.isfinite(x):
    return '-'
  return f'{scale * x:+.2f}' if scale != 1.0 else f'{x:+.4g}'


def _units(info) -> tuple[float, str]:
  """(display scale, unit text) of a metric: ('%' shown as points of %)."""
  if info is None:
    return 1.0, ''
  return info.scale, '%' if info.unit == '%' else (f' {info.unit}' if info.unit else '')


def _selected_text(g: dict) -> str:
  return f', {_group_text(g["selected"])}' if g['selected'] else ''


def _difference_row(r: dict, info) -> str:
  d = r['difference']
  scale, unit = _units(info)
  margin = (f', margin {scale * r["margin"]:.2g}{" points" if unit == "%" else unit}'
            if r['claim']['kind'] in ('within', 'no_worse') else '')
  read = ', final evaluation' if r['at'] == 'final' else ''
  groups = '; '.join(f'{role}: {_group_text(g["group"])} {g["mean"]["mean"] * scale:.4g}{unit} '
                     f'({g["seeds"]} seeds{_selected_text(g)})'
                     for role, g in r['groups'].items())
  return (f'| {r["text"]} | **{r["verdict"]}** | {r["what"]} = {_number(d["mean"], scale)} '
          f'({r["how"]}{read}{margin}) | [{_number(d["low"], scale)}, '
          f'{_number(d["high"], scale)}] | {_p(d)} | {groups} |')


def _faster_row(r: dict, info) -> str:
  d = r['epochs_ratio']
  scale, unit = _units(info)
  side = '<=' if r['lower_is_better'] else '>='
  level = f'{r["metric"]} {side} {r["level"] * scale:.4g}{unit}' + (
      ", the worst final value among b's seeds" if r['level_from'] == convergence.B_FINAL else '')
  never = {'a': 'counted as not faster', 'b': 'counted at its run length'}
  groups = []
  for role, g in r['groups'].items():
    e = g['epochs']
    flag = (f', {e["never_reached"]} never reached it: {never[role]}' if e['never_reached']
            else '')
    groups.append(f'{role}: {_group_text(g["group"])} {e["mean"]:.3g} epochs '
                  f'({e["seeds"]} seeds{flag}{_selected_text(g)})')
  ratio = lambda x: f'{x:.3g}' if math.isfinite(x) else '-'
  return (f'| {r["text"]} | **{r["verdict"]}** | epochs a / b = {ratio(d["mean"])} '
          f'({r["how"]}; to {level}; claimed below {r["bound"]:g}) | '
          f'[{ratio(d["low"])}, {ratio(d["high"])}] | {_p(d)} | {"; ".join(groups)} |')


def _p(d: dict) -> str:
  return f'{d["p_value"]:.3g}' if math.isfinite(d['p_value']) else '-'


def markdown(results: list, select_by: str, infos=None) -> str:
  """claims.md: one row per claim with its verdict and the numbers behind it. `infos`:
  {metric key: analysis.metrics.MetricInfo}, for units and display scale (none: as stored)."""
  infos = infos or {}
  lines = [f'Values: each seed\'s metric at its best {select_by} (at its final evaluation where '
           'the claim says so), in the selected setting; differences with a 95% t interval, in '
           'the metric\'s units (errors in points of %). "faster": the per-seed ratio of the '
           'epochs to first reach the level (interpolated between evaluations), 95% t interval '
           'of the log ratio, p against a ratio of 1.',
           '',
           '| claim | verdict | difference | 95% interval | p | groups (mean, selected) |',
           '|---|---|---|---|---|---|']
  for r in results:
    if 'reason' in r:
      lines.append(f'| {r["text"]} | {r["verdict"]} | - | - | - | {r["reason"]} |')
    elif 'epochs_ratio' in r:
      lines.append(_faster_row(r, infos.get(r['metric'])))
    else:
      lines.append(_difference_row(r, infos.get(r['metric'])))
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
