"""Convergence speed: the epochs a run takes to first reach a level of a metric, and the ratio of
two groups' epochs seed by seed (the 'faster' claim kind, claims.py).

A run's curve is its evaluations in metrics.jsonl. Between two evaluations the metric is taken as
linear in epochs, so a level crossed between them is reached at the interpolated epoch; a run
whose first evaluation already reaches the level reaches it there (nothing earlier is recorded).
"Reach" follows the metric's direction from the run's task: at or below the level for a loss, at
or above it for a higher-is-better metric.
"""

from __future__ import annotations

import math

import numpy as np

from ln_jax.analysis import compare
from ln_jax.analysis import metrics as metrics_lib
from ln_jax.analysis import selection
from ln_jax.analysis import stats

B_FINAL = 'b_final'  # the level: the worst final value among the compared-against group's seeds


def run_length(run: compare.Run) -> float:
  """The epochs a run trained (its last record's), nan without records."""
  return float(run.records[-1]['epoch']) if run.records else math.nan


def epochs_to_reach(run: compare.Run, metric: str, level: float) -> tuple[float, bool]:
  """(epochs at the first crossing of `level`, True), or (the run's length, False) when its curve
  never reaches the level."""
  epochs, vals = compare.values(run, metric)
  sign = 1.0 if metrics_lib.lower_is_better(run, metric) else -1.0
  gaps = sign * (vals - level)  # <= 0 where the level is reached
  hit = np.nonzero(gaps <= 0)[0]
  if not len(hit):
    return run_length(run), False
  i = hit[0]
  if i == 0:
    return float(epochs[0]), True
  fraction = gaps[i - 1] / (gaps[i - 1] - gaps[i])
  return float(epochs[i - 1] + fraction * (epochs[i] - epochs[i - 1])), True


def worst_final(runs: list, metric: str) -> float:
  """The worst final value of `metric` among `runs` (the highest for a loss): a level every one
  of them reaches. nan when none recorded it."""
  finals = [v for v in (selection.final_value(r, metric) for r in runs) if math.isfinite(v)]
  if not finals:
    return math.nan
  return max(finals) if metrics_lib.lower_is_better(runs[0], metric) else min(finals)


def _reach_by_seed(runs: list, metric: str, level: float) -> dict:
  return {key: epochs_to_reach(run, metric, level)
          for run, key in zip(runs, selection.seed_keys(runs))}


def _summary(counted: dict, reach: dict) -> dict:
  """A group's epochs as the claims show them: the mean, seeds, how many never reached the level,
  and each seed's epochs as counted."""
  epochs = list(counted.values())
  return {'mean': float(np.mean(epochs)) if epochs else math.nan, 'seeds': len(epochs),
          'never_reached': sum(not reached for _, reached in reach.values()),
          'per_seed': [{'seed': key, 'epochs': counted[key], 'reached': reach[key][1]}
                       for key in counted]}


def speed_ratio(runs_a: list, runs_b: list, metric: str, level: float) -> dict:
  """epochs_a / epochs_b to reach `level`: paired on the shared seeds (Welch's interval of the
  log epochs otherwise, as stats.paired_difference), the 95% t interval of the log ratio
  returned as a ratio (its mean is the geometric mean ratio; p tests a ratio of 1).

  A seed of a that never reaches the level counts as not faster: at least b's epochs on that seed
  (b's largest, unpaired). A seed of b that never reaches it counts at its run length, a lower
  bound that can only make a look slower."""
  reach_a, reach_b = _reach_by_seed(runs_a, metric, level), _reach_by_seed(runs_b, metric, level)
  epochs_b = {k: e for k, (e, _) in reach_b.items() if e > 0}
  slowest_b = max(epochs_b.values(), default=math.nan)
  counted_a = {}
  for key, (epochs, reached) in reach_a.items():
    if not reached:
      epochs = max(epochs, epochs_b.get(key, slowest_b))
    if epochs > 0:  # nan and a curve with no evaluations drop out
      counted_a[key] = epochs
  log_a = {k: math.log(e) for k, e in counted_a.items()}
  log_b = {k: math.log(e) for k, e in epochs_b.items()}
  interval, how = stats.paired_difference(log_a, log_b)
  ratio = stats.Interval(math.exp(interval.mean), math.exp(interval.low),
                         math.exp(interval.high), interval.n, interval.p_value)
  return {'epochs_ratio': ratio, 'how': how,
          'epochs': {'a': _summary(counted_a, reach_a), 'b': _summary(epochs_b, reach_b)}}
