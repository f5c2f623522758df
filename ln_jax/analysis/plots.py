"""Figure 6-style learning curves against epochs: one column per panel value (e.g. batch size; one
panel for all groups when there is no panel key), a row for the training loss and a row for the
compared metric, each in its task's units and axis (log for the classifier's NLL, % for its
error), one curve per group (its selected setting, or every setting). Each curve's label gives
the tuned values and the training-set size. A group of 3 or more seeds is drawn as its mean with
a band (the 95% t interval of the mean, by default); a group of fewer seeds draws each seed's
curve as a thin line, since one or two seeds give no useful band.

An experiment file may set the axes per metric key (scripts/compare.py reads its PLOT):
  PLOT = {'train_loss': {'log': True}, 'test_error': {'ylim': (0.005, 0.025)}}
'log' overrides the task's log scale; 'ylim' is in the metric's stored units (0.005 = 0.5%) and
applies when every seed's last value lies inside it (else the axis is chosen from the data)."""

from __future__ import annotations

import matplotlib

matplotlib.use('Agg')  # files only; no display needed

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from ln_jax.analysis import compare
from ln_jax.analysis import metrics as metrics_lib

TRAIN_LOSS = 'train_loss'
METHOD_COLORS = {'Baseline': 'black', 'BatchNorm': 'tab:blue', 'LayerNorm': 'tab:red',
                 'LN on c': 'tab:orange'}
BANDS = {'ci': '95% CI of the mean', 'minmax': 'min-max', 'std': '± 1 std'}
MIN_SEEDS_FOR_BAND = 3  # fewer: each seed's own curve
STYLES = ('-', '--', ':', '-.')


def curve_label(keys: tuple[str, ...], group_values: tuple, panel_key: str | None) -> str:
  return ', '.join(compare.label(k, v) for k, v in zip(keys, group_values) if k != panel_key) \
      or 'runs'


def _error_top(curves) -> float:
  """An upper limit that shows the converged part: early epochs would squash it flat."""
  best = max(float(np.min(c['mean'])) for c in curves)
  worst = max(float(np.max(c['max'])) for c in curves)
  return min(worst, 3 * best) * 1.05 if best > 0 else worst * 1.05


def _band(c: dict, band: str):
  if band == 'minmax':
    return c['min'], c['max']
  if band == 'std':
    return c['mean'] - c['std'], c['mean'] + c['std']
  return c['low'], c['high']


def _draw_seeds(ax, runs: list, name: str, scale: float, label: str, **style) -> None:
  """Each run's curve as a thin line; one legend entry for them all."""
  for i, run in enumerate(runs):
    epochs, vals = compare.values(run, name)
    ax.plot(epochs, vals * scale, lw=0.9, alpha=0.85, label=label if i == 0 else None,
            marker='o' if len(epochs) < 3 else None, ms=3, **style)


def _draw_mean(ax, c: dict, band: str, scale: float, label: str, color, ls: str) -> None:
  """The mean over seeds with its band (an error bar where there are fewer than 3 points)."""
  few = len(c['epoch']) < 3  # one or two evaluations: points
  ax.plot(c['epoch'], c['mean'] * scale, color=color, lw=1.5, ls=ls, label=label,
          marker='o' if few else None)
  low, high = _band(c, band)
  if few:
    ax.errorbar(c['epoch'], c['mean'] * scale, color=color, capsize=3, ls='none',
                yerr=[(c['mean'] - low) * scale, (high - c['mean']) * scale])
  else:
    ax.fill_between(c['epoch'], low * scale, high * scale, color=color, alpha=0.2, lw=0)


def _set_y_axis(ax, drawn: list, info: metrics_lib.MetricInfo, spec: dict) -> None:
  """Log or linear, and the limits: the experiment's where the data fits them, else from it."""
  if spec.get('log', info.log_scale):
    ax.set_yscale('log')
  limits = spec.get('ylim')
  if limits and drawn and all(limits[0] <= c['min'][-1] and c['max'][-1] <= limits[1]
                                for c in drawn):
    ax.set_ylim(limits[0] * info.scale, limits[1] * info.scale)
  elif (not spec.get('log', info.log_scale) and drawn and info.lower_is_better
        and min(float(np.min(c['mean'])) for c in drawn) >= 0):
    ax.set_ylim(0, _error_top(drawn) * info.scale)
  ax.grid(alpha=0.3, which='both' if spec.get('log', info.log_scale) else 'major')
  ax.set_ylabel(info.title)


def _title(curves: list, band: str) -> str:
  seeds = sorted({len(c['runs']) for c in curves})
  banded = [n for n in seeds if n >= MIN_SEEDS_FOR_BAND]
  parts = []
  if banded:
    parts.append(f'mean over seeds, band: {BANDS[band]} over {"-".join(map(str, banded))} seeds')
  if len(banded) < len(seeds):
    parts.append(f'each seed drawn where a group has fewer than {MIN_SEEDS_FOR_BAND}')
  return '; '.join(parts)


def figure(curves: list[dict], keys: tuple[str, ...], panel_key: str | None, metric: str,
           band: str, plot: dict | None = None):
  """The matplotlib figure. `curves`: dicts with 'values' (the group's key values), 'runs' and
  'detail' (the tuned values and training-set size, for the label); `plot`: the experiment's
  PLOT ({metric key: {'log': bool, 'ylim': (low, high)}})."""
  plot = plot or {}
  all_runs = [run for c in curves for run in c['runs']]
  infos = {name: metrics_lib.info(all_runs, name) for name in (TRAIN_LOSS, metric)}
  panel_index = keys.index(panel_key) if panel_key in keys else None
  panels = list(dict.fromkeys(c['values'][panel_index] if panel_index is not None else None
                              for c in curves))
  names = list(dict.fromkeys(curve_label(keys, c['values'], panel_key) for c in curves))
  colors = {name: METHOD_COLORS.get(name, plt.get_cmap('tab10')(i % 10))
            for i, name in enumerate(names)}
  metrics = list(dict.fromkeys((TRAIN_LOSS, metric)))
  fig, axes = plt.subplots(len(metrics), len(panels), squeeze=False, sharex='col',
                           figsize=(5.2 * len(panels), 3.6 * len(metrics)))
  for col, panel in enumerate(panels):
    for row, name in enumerate(metrics):
      ax, info, drawn, seen = axes[row, col], infos[name], [], {}
      for curve in curves:
        if panel_index is not None and curve['values'][panel_index] != panel:
          continue
        c = compare.aggregate(curve['runs'], name)
        if not len(c['epoch']):
          continue
        drawn.append(c)
        text = curve_label(keys, curve['values'], panel_key)
        ls = STYLES[seen.setdefault(text, 0) % len(STYLES)]
        seen[text] += 1
        n = len(curve['runs'])
        label = (', '.join(filter(None, [text, curve['detail']]))
                 + f' ({n} seed{"s" if n > 1 else ""})')
        if n < MIN_SEEDS_FOR_BAND:
          _draw_seeds(ax, curve['runs'], name, info.scale, label, color=colors[text], ls=ls)
        else:
          _draw_mean(ax, c, band, info.scale, label, colors[text], ls)
      _set_y_axis(ax, drawn, info, plot.get(name, {}))
      if row == 0 and panel_index is not None:
        ax.set_title(f'{panel_key.split(".")[-1].replace("_", " ")} {panel}')
      if row == len(metrics) - 1:
        ax.set_xlabel('epoch')
      if row == 0 and drawn:
        ax.legend(fontsize=7)
  fig.suptitle(_title(curves, band), fontsize=9, y=0.995)
  fig.tight_layout()
  return fig


def learning_curves(curves: list[dict], keys: tuple[str, ...], panel_key: str | None,
                    metric: str, band: str, path_prefix: str, plot: dict | None = None
                    ) -> list[str]:
  """Saves `figure(...)` as PNG and PDF; returns the two paths."""
  fig = figure(curves, keys, panel_key, metric, band, plot)
  paths = [f'{path_prefix}.png', f'{path_prefix}.pdf']
  for path in paths:
    fig.savefig(path, dpi=110)
  plt.close(fig)
  return paths
