"""Figure 6-style learning curves: one column per panel value (e.g. batch size), a row for the
training NLL on a log scale and a row for the compared metric, one curve per group."""

from __future__ import annotations

import matplotlib

matplotlib.use('Agg')  # files only; no display needed

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from ln_jax.analysis import compare

TRAIN_LOSS = 'train_loss'
METHOD_COLORS = {'Baseline': 'black', 'BatchNorm': 'tab:blue', 'LayerNorm': 'tab:red'}
ROW_TITLES = {'train_loss': 'training NLL', 'test_error': 'test error',
              'valid_error': 'validation error', 'test_loss': 'test NLL'}


def curve_label(keys: tuple[str, ...], group_values: tuple, panel_key: str | None) -> str:
  return ', '.join(compare.label(k, v) for k, v in zip(keys, group_values) if k != panel_key) \
      or 'runs'


def _error_top(curves) -> float:
  """An upper limit that shows the converged part: early epochs would squash it flat."""
  best = max(float(np.min(c['mean'])) for c in curves)
  worst = max(float(np.max(c['max'])) for c in curves)
  return min(worst, 3 * best) * 1.05 if best > 0 else worst * 1.05


def learning_curves(groups: dict[tuple, list], keys: tuple[str, ...], panel_key: str | None,
                    metric: str, band: str, path_prefix: str) -> list[str]:
  """Draws the figure, saves it as PNG and PDF and returns the two paths."""
  panel_index = keys.index(panel_key) if panel_key in keys else None
  panels = list(dict.fromkeys(v[panel_index] if panel_index is not None else None
                              for v in groups))
  labels = list(dict.fromkeys(curve_label(keys, v, panel_key) for v in groups))
  colors = {name: METHOD_COLORS.get(name, plt.get_cmap('tab10')(i % 10))
            for i, name in enumerate(labels)}
  metrics = list(dict.fromkeys((TRAIN_LOSS, metric)))
  fig, axes = plt.subplots(len(metrics), len(panels), squeeze=False, sharex='col',
                           figsize=(4.8 * len(panels), 3.4 * len(metrics)))
  for col, panel in enumerate(panels):
    for row, name in enumerate(metrics):
      ax = axes[row, col]
      curves = []
      for group_values, runs in groups.items():
        if panel_index is not None and group_values[panel_index] != panel:
          continue
        c = compare.aggregate(runs, name)
        if not len(c['epoch']):
          continue
        curves.append(c)
        text = curve_label(keys, group_values, panel_key)
        low, high = ((c['min'], c['max']) if band == 'minmax' else
                     (c['mean'] - c['std'], c['mean'] + c['std']))
        ax.plot(c['epoch'], c['mean'], color=colors[text], lw=1.5,
                label=f'{text} ({len(runs)} run{"s" if len(runs) > 1 else ""})')
        ax.fill_between(c['epoch'], low, high, color=colors[text], alpha=0.2, lw=0)
      if name.endswith('_loss'):
        ax.set_yscale('log')
      elif curves:
        ax.set_ylim(0, _error_top(curves))
      ax.grid(alpha=0.3, which='both' if name.endswith('_loss') else 'major')
      ax.set_ylabel(ROW_TITLES.get(name, name))
      if row == 0 and panel_index is not None:
        ax.set_title(f'{panel_key.replace("_", " ")} {panel}')
      if row == len(metrics) - 1:
        ax.set_xlabel('epoch')
      if col == 0 and row == 0:
        ax.legend(fontsize=8)
  fig.suptitle(f'mean over seeds, band: {"min-max" if band == "minmax" else "± std"}',
               fontsize=9, y=0.995)
  fig.tight_layout()
  paths = [f'{path_prefix}.png', f'{path_prefix}.pdf']
  for path in paths:
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return paths
