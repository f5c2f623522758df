"""Model selection on the validation set only.

Each run is read at one evaluation: the one with its best validation metric (`select_by`); the
test metric reported is the one at that evaluation ("test at best valid"). Within a group, the
tuned keys' value is the one whose runs have the best mean validation metric over seeds. Nothing
here looks at the test set to choose.
"""

from __future__ import annotations

import dataclasses
import math

from absl import logging
import numpy as np

from ln_jax.analysis import compare
from ln_jax.analysis import metrics as metrics_lib


@dataclasses.dataclass
class Setting:
  """The runs (seeds) of one group with one value of the tuned keys."""
  tuned: tuple          # the tuned keys' values, in the order of the tuned keys
  runs: list
  score: float          # mean over runs of `select_by` at each run's selected evaluation


def _finite(value) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def selected_record(run: compare.Run, select_by: str) -> dict:
  """The evaluation with the best `select_by` (lowest, or highest for a metric its task says
  is higher-is-better; the earliest of equal ones); the final one when the run recorded no finite
  `select_by`."""
  scored = [r for r in run.records if _finite(r.get(select_by))]
  if not scored:
    return run.records[-1]
  sign = 1.0 if metrics_lib.lower_is_better(run, select_by) else -1.0
  return min(scored, key=lambda r: sign * r[select_by])


def final_value(run: compare.Run, metric: str) -> float:
  vals = [r[metric] for r in run.records if _finite(r.get(metric))]
  return vals[-1] if vals else math.nan


def at_selection(run: compare.Run, metric: str, select_by: str) -> float:
  value = selected_record(run, select_by).get(metric)
  return value if _finite(value) else math.nan


def seed_keys(runs: list) -> list:
  """Each run's key for pairing across groups: its seed, or (seed, path) for runs that share a
  seed."""
  seeds = [r.config.get('seed') for r in runs]
  return [seed if seeds.count(seed) == 1 else (seed, run.path) for run, seed in zip(runs, seeds)]


def by_seed(runs: list, metric: str, select_by: str, final: bool = False) -> dict:
  """{seed: value} of `metric` at each run's selected (or final) evaluation; runs that share a
  seed are told apart by their path."""
  out = {}
  for run, key in zip(runs, seed_keys(runs)):
    value = final_value(run, metric) if final else at_selection(run, metric, select_by)
    if math.isfinite(value):
      out[key] = value
  return out


def check_select_by(runs: list, select_by: str) -> None:
  if not any(_finite(r.get(select_by)) for run in runs for r in run.records):
    logging.warning('no run recorded %s: each run is read at its final evaluation instead '
                    '(give the runs a validation set, data.valid_size > 0, to select on it)',
                    select_by)


def settings(runs: list, tuned: tuple, select_by: str) -> list[Setting]:
  """The runs of one group split by their tuned values, best (best mean `select_by`) first;
  a setting with no finite score sorts last."""
  split = {}
  for run in runs:
    split.setdefault(tuple(run.config.get(k) for k in tuned), []).append(run)
  out = []
  for values, members in split.items():
    scores = [at_selection(r, select_by, select_by) for r in members]
    scores = [s for s in scores if math.isfinite(s)]
    if not scores:  # no validation metric: fall back to the final training loss
      scores = [final_value(r, 'train_loss') for r in members]
      scores = [s for s in scores if math.isfinite(s)]
    out.append(Setting(values, members, float(np.mean(scores)) if scores else math.nan))
  sign = 1.0 if not runs or metrics_lib.lower_is_better(runs[0], select_by) else -1.0
  return sorted(out, key=lambda s: (not math.isfinite(s.score), sign * s.score))


def tune(groups: dict, tuned: tuple, select_by: str) -> dict:
  """{group values: [Setting, ...]} best first; with no tuned keys, one setting per group."""
  return {values: settings(runs, tuned, select_by) for values, runs in groups.items()}


def describe(tuned: tuple, setting: Setting) -> str:
  return ', '.join(f'{k.split(".")[-1]}={v}' for k, v in zip(tuned, setting.tuned))
