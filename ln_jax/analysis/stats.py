"""Seeds as a sample: the mean with a Student-t confidence interval, and paired differences
between two groups on the seeds they share (with the t interval and a two-sided p-value).

Seeds are few (3 to 5), so the t distribution, not the normal, sets the interval's width: with 3
seeds the 95% interval is mean +/- 4.30 standard errors.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class Interval:
  mean: float
  low: float      # nan with fewer than 2 values: one seed gives no interval
  high: float
  n: int
  p_value: float = math.nan  # of "the true mean is 0" (two-sided); set for differences

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def t_interval(values, confidence: float = CONFIDENCE) -> Interval:
  """Mean of `values` with the two-sided t interval mean +/- t(n-1) * sd / sqrt(n), and the
  p-value of a one-sample t test against 0."""
  xs = np.asarray(values, float)
  n = len(xs)
  if n == 0:
    return Interval(math.nan, math.nan, math.nan, 0)
  mean = float(np.mean(xs))
  if n < 2:
    return Interval(mean, math.nan, math.nan, n)
  sem = float(np.std(xs, ddof=1)) / math.sqrt(n)
  t = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1))
  if sem == 0:
    p = 1.0 if mean == 0 else 0.0
  else:
    p = float(2 * scipy_stats.t.sf(abs(mean) / sem, n - 1))
  return Interval(mean, mean - t * sem, mean + t * sem, n, p)


def welch_interval(a, b, confidence: float = CONFIDENCE) -> Interval:
  """mean(a) - mean(b) with Welch's t interval, for groups that share no seeds."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  if len(a) < 2 or len(b) < 2:
    mean = float(np.mean(a) - np.mean(b)) if len(a) and len(b) else math.nan
    return Interval(mean, math.nan, math.nan, min(len(a), len(b)))
  va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
  mean, se = float(np.mean(a) - np.mean(b)), math.sqrt(va + vb)
  if se == 0:
    return Interval(mean, mean, mean, min(len(a), len(b)), 1.0 if mean == 0 else 0.0)
  dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  t = float(scipy_stats.t.ppf((1 + confidence) / 2, dof))
  p = float(2 * scipy_stats.t.sf(abs(mean) / se, dof))
  return Interval(mean, mean - t * se, mean + t * se, min(len(a), len(b)), p)


def paired_difference(a: dict, b: dict, confidence: float = CONFIDENCE) -> tuple[Interval, str]:
  """a - b from {seed: value} dicts: paired on the shared seeds when there are at least two of
  them (seed-to-seed variation cancels), else Welch's interval over all values. Returns the
  interval and how it was computed ('paired on N seeds' or 'unpaired')."""
  shared = sorted(set(a) & set(b), key=repr)
  if len(shared) >= 2:
    return (t_interval([a[s] - b[s] for s in shared], confidence),
            f'paired on {len(shared)} seeds')
  return welch_interval(list(a.values()), list(b.values()), confidence), 'unpaired'


def contrast(terms: list[tuple[float, dict]], confidence: float = CONFIDENCE) -> Interval:
  """sum(coef * value) per seed over the seeds every term shares, with its t interval: e.g.
  (b - a) - (d - c), a difference of differences, paired on the same seeds."""
  shared = set.intersection(*(set(values) for _, values in terms))
  per_seed = [sum(coef * values[s] for coef, values in terms) for s in sorted(shared, key=repr)]
  return t_interval(per_seed, confidence)
