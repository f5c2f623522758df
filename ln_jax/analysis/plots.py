"""Figure 6-style learning curves: one column per panel value (e.g. batch size), a row for the
training loss and a row for the compared metric, each in its task's units and axis (log for the
classifier's NLL, % for its error), one curve per group (its selected setting, or every setting).
Each curve's label gives the tuned values and the training-set size; the band is the 95% t
interval of the mean over seeds (none with one seed)."""

from __future__ import annotations

import matplotlib

matplotlib.use('Agg')  # files only; no display needed

import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from ln_jax.analysis import compare
from ln_jax.analysis import metrics as metrics_lib

TRAIN_LOSS = 'train_loss'
METHOD_COLORS = {'Baseline': 'black', 'BatchNorm': 'tab:blue', 'LayerNorm': 'tab:red'}
BANDS = {'ci': '95% CI of the mean', 'minmax': 'min-max', 'std': '± 1 std'}


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


def learning_curves(curves: list[dict], keys: tuple[str, ...], panel_key: str | None,
                    metric: str, band: str, path_prefix: str) -> list[str]:
  """`curves`: dicts with 'values' (the group's key values), 'runs' and 'detail' (the tuned
  values and training-set size, for the label). Saves PNG and PDF; returns the two paths."""
  all_runs = [run for c in curves for run in c['runs']]
  infos = {name: metrics_lib.info(all_runs, name) for name in (TRAIN_LOSS, metric)}
  panel_index = keys.index(panel_key) if panel_key in keys else None
  panels = list(dict.fromkeys(c['values'][panel_index] if panel_index is not None else None
                              for c in curves))
  names = list(dict.fromkeys(curve_label(keys, c['values'], panel_key) for c in curves))
  colors = {name: METHOD_COLORS.get(name, plt.get_cmap('tab10')(i % 10))
            for i, name in enumerate(names)}
  styles = ['-', '--', ':', '-.']
  metrics = list(dict.fromkeys((TRAIN_LOSS, metric)))
  fig, axes = plt.subplots(len(metrics), len(panels), squeeze=False, sharex='col',
                           figsize=(5.2 * len(panels), 3.6 * len(metrics)))
  seeds = sorted({len(c['runs']) for c in curves})
  for col, panel in enumerate(panels):
    for row, name in enumerate(metrics):
      ax = axes[row, col]
      drawn, seen = [], {}
      info = infos[name]
      scale = info.scale
      for curve in curves:
        if panel_index is not None and curve['values'][panel_index] != panel:
          continue
        c = compare.aggregate(curve['runs'], name)
        if not len(c['epoch']):
          continue
        drawn.append(c)
        text = curve_label(keys, curve['values'], panel_key)
        style = styles[seen.setdefault(text, 0) % len(styles)]
        seen[text] += 1
        n = len(curve['runs'])
        ax.plot(c['epoch'], c['mean'] * scale, color=colors[text], lw=1.5, ls=style,
                marker='o' if len(c['epoch']) < 3 else None,  # one evaluation: a point
                label=', '.join(filter(None, [text, curve['detail']]))
                + f' ({n} seed{"s" if n > 1 else ""})')
        if n > 1:
          low, high = _band(c, band)
          if len(c['epoch']) < 3:
            ax.errorbar(c['epoch'], c['mean'] * scale, color=colors[text], capsize=3, ls='none',
                        yerr=[(c['mean'] - low) * scale, (high - c['mean']) * scale])
          else:
            ax.fill_between(c['epoch'], low * scale, high * scale, color=colors[text],
                            alpha=0.2, lw=0)
      if info.log_scale:
        ax.set_yscale('log')
      elif drawn and info.lower_is_better and min(float(np.min(c['mean'])) for c in drawn) >= 0:
        ax.set_ylim(0, _error_top(drawn) * scale)
      ax.grid(alpha=0.3, which='both' if info.log_scale else 'major')
      ax.set_ylabel(info.title)
      if row == 0 and panel_index is not None:
        ax.set_title(f'{panel_key.split(".")[-1].replace("_", " ")} {panel}')
      if row == len(metrics) - 1:
        ax.set_xlabel('epoch')
      if row == 0 and drawn:
        ax.legend(fontsize=7)
  many = max(seeds) > 1
  fig.suptitle('mean over seeds' + (f', band: {BANDS[band]} over {"-".join(map(str, seeds))} '
                                    'seeds' if many else ' (one seed: no band)'),
               fontsize=9, y=0.995)
  fig.tight_layout()
  paths = [f'{path_prefix}.png', f'{path_prefix}.pdf']
  for path in paths:
    fig.savefig(path, dpi=110)
  plt.close(fig)
  return paths
