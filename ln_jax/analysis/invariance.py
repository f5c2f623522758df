"""Table 1 of the LN paper, measured: which re-scalings and re-centerings leave a layer unchanged.

Each row is one normalized layer, h = norm(W x) (+ b), built by the factories the MLP uses
(`norms.make_dense`, `norms.make_norm`), so a new normalizer gets its row from this code. h is
the layer's output before its nonlinearity: an elementwise f maps equal inputs to equal outputs,
and measuring before f keeps a saturating or clipping f from hiding a change.

Notation as in the paper: x_n is training case n of a batch of N, W has one row w_i per hidden
unit, a = W x. Our kernels are [in, out], so w_i is column i of the layer's 'kernel' (for weight
norm, the direction v_i). Each transformation draws its factors delta away from 1 (in [0.1, 0.5]
or [2, 10]) and its shifts gamma at the scale of what they shift:

  weight matrix re-scaling         W' = delta W
  weight matrix re-centering       W' = W + 1 gamma^T   (every summed input of case n shifts by
                                                         gamma . x_n)
  weight vector re-scaling         w_i' = delta_i w_i   (each unit its own factor)
  dataset re-scaling               x_n' = delta x_n
  dataset re-centering             x_n' = x_n + gamma
  single training case re-scaling  x_n' = delta_n x_n   (each case its own factor)

The deviation of a cell is max |h' - h| / max |h| over the batch; the layer counts as invariant
when it is at most `threshold`. Gains, biases and weight-norm lengths are perturbed away from
their initial 1s and 0s so that they cannot hide a change, and BatchNorm uses batch statistics
(training mode), as the paper's table assumes. Any epsilon makes the invariances approximate:
measure with epsilon 0, or with activations far above it.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ln_jax import norms
from ln_jax.training import rundir
from ln_jax.errors import UserError

DTYPES = ('float64', 'float32')
# Round-off stays near 1e-15 (float64) or 1e-6 (float32); a real change is of order 0.1.
DEFAULT_THRESHOLD = {'float64': 1e-9, 'float32': 1e-4}
MARKDOWN_FILE = 'invariance.md'
BATCH_SIZE, IN_FEATURES, FEATURES = 16, 32, 24  # N cases, D inputs, H units of the layer
JSON_FILE = 'invariance.json'


class Transform(NamedTuple):
  title: str
  formula: str
  apply: Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


# The transformations draw with NumPy: (rng, kernel_DxH, x_NxD) -> (kernel, x) in float64.
def _factors(rng, shape):
  """Factors in [0.1, 0.5] or [2, 10]: far enough from 1 that any change they cause shows."""
  log_factor = rng.uniform(np.log(2.0), np.log(10.0), shape)
  return np.exp(np.where(rng.random(shape) < 0.5, log_factor, -log_factor))


def _rms(a):
  return np.sqrt(np.mean(np.square(a)))


def _weight_matrix_rescaling(rng, kernel_DxH, x_NxD):
  return _factors(rng, ()) * kernel_DxH, x_NxD


def _weight_matrix_recentering(rng, kernel_DxH, x_NxD):
  gamma_Dx1 = _rms(kernel_DxH) * rng.standard_normal((kernel_DxH.shape[0], 1))
  return kernel_DxH + gamma_Dx1, x_NxD  # gamma added to every unit's weight vector


def _weight_vector_rescaling(rng, kernel_DxH, x_NxD):
  return kernel_DxH * _factors(rng, (1, kernel_DxH.shape[1])), x_NxD


def _dataset_rescaling(rng, kernel_DxH, x_NxD):
  return kernel_DxH, _factors(rng, ()) * x_NxD


def _dataset_recentering(rng, kernel_DxH, x_NxD):
  return kernel_DxH, x_NxD + _rms(x_NxD) * rng.standard_normal((1, x_NxD.shape[1]))


def _single_case_rescaling(rng, kernel_DxH, x_NxD):
  return kernel_DxH, x_NxD * _factors(rng, (x_NxD.shape[0], 1))


TRANSFORMS = {
    'weight_matrix_rescaling': Transform(
        'weight matrix re-scaling', "W' = delta W", _weight_matrix_rescaling),
    'weight_matrix_recentering': Transform(
        'weight matrix re-centering', "W' = W + 1 gamma^T", _weight_matrix_recentering),
    'weight_vector_rescaling': Transform(
        'weight vector re-scaling', "w_i' = delta_i w_i", _weight_vector_rescaling),
    'dataset_rescaling': Transform(
        'dataset re-scaling', "x_n' = delta x_n", _dataset_rescaling),
    'dataset_recentering': Transform(
        'dataset re-centering', "x_n' = x_n + gamma", _dataset_recentering),
    'single_case_rescaling': Transform(
        'single training case re-scaling', "x_n' = delta_n x_n", _single_case_rescaling),
}

_T, _F = True, False
# Invariant (True) or No per cell, in TRANSFORMS order; SOURCES says where each row is from.
EXPECTED = {
    'batch': (_T, _F, _T, _T, _T, _F),
    'weight': (_T, _F, _T, _F, _F, _F),
    'layer': (_T, _T, _F, _T, _F, _T),
    'rms': (_T, _F, _F, _T, _F, _T),
    'none': (_F, _F, _F, _F, _F, _F),
    # LN's statistics within each group of units: every transformation that LN's row calls
    # Invariant moves all units of a case alike, hence every group alike; a factor per unit
    # changes a group's statistics, and a shift of the data moves each unit by its own w_i . gamma.
    'group': (_T, _T, _F, _T, _F, _T),
    # Training in the warm-up (r_max = 1, d_max = 0, so r = 1 and d = 0): exactly BN.
    'batch_renorm': (_T, _F, _T, _T, _T, _F),
    # Evaluation: (a - mu) / sigma with fixed running averages, an affine map of a = W x that
    # every transformation changes. Training with r, d inside their clips computes the same.
    'batch_renorm_eval': (_F, _F, _F, _F, _F, _F),
}
# Rows measured in evaluation mode, and the normalizer each one is.
EVAL_ROWS = {'batch_renorm_eval': 'batch_renorm'}
SOURCES = {
    'batch': 'Ba et al. 2016, Table 1',
    'weight': 'Ba et al. 2016, Table 1',
    'layer': 'Ba et al. 2016, Table 1',
    'rms': 'Zhang & Sennrich 2019, Table 1',
    'none': 'a plain dense layer W x + b, which every transformation changes',
    'group': 'Wu & He 2018, Sec. 3 (GN is LN within each group; derived from LN\'s row)',
    'batch_renorm': 'Ioffe 2017, Algorithm 1 (derived: r = 1, d = 0 in the warm-up is BN; at '
                    'evaluation an affine map with fixed mu, sigma)',
}
SOURCES['batch_renorm_eval'] = SOURCES['batch_renorm']
TITLES = {'batch': 'Batch norm', 'weight': 'Weight norm', 'layer': 'Layer norm',
          'rms': 'RMS norm', 'none': 'No norm', 'group': 'Group norm',
          'batch_renorm': 'Batch renorm (training, warm-up)',
          'batch_renorm_eval': 'Batch renorm (evaluation)'}


def default_norms() -> list[str]:
  """The paper's rows first (batch, weight, layer), then every other normalizer ln_jax has, then
  the evaluation-mode rows."""
  paper = ['batch', 'weight', 'layer']
  return paper + [name for name in norms.NORMS if name not in paper] + list(EVAL_ROWS)


class NormalizedLayer(nn.Module):
  """One hidden layer of the MLP before its nonlinearity: norm(W x), or W x + b without a norm.
  `train` False measures the normalizer in evaluation mode (running averages at their init)."""
  features: int
  dense: Callable[..., nn.Module]
  norm: norms.NormFactory | None
  train: bool = True

  @nn.compact
  def __call__(self, x_NxD):
    a_NxH = self.dense(self.features, use_bias=self.norm is None, name='dense')(x_NxD)
    return a_NxH if self.norm is None else self.norm(self.train, name='norm')(a_NxH)


def _perturb_params(rng, params):
  """Moves every parameter but the weight matrix away from its initial value."""
  def move(path, leaf):
    leaf = np.asarray(leaf, np.float64)
    return leaf if path[-1].key == 'kernel' else leaf + 0.5 * rng.standard_normal(leaf.shape)
  return jax.tree_util.tree_map_with_path(move, params)


def measure(config, norm: str, *, seed: int = 0, epsilon: float = 0.0, dtype: str = 'float64',
            batch_size: int = BATCH_SIZE, in_features: int = IN_FEATURES,
            features: int = FEATURES, input_scale: float = 1.0) -> dict[str, float]:
  """Deviation of one normalized layer's output under each transformation, by TRANSFORMS name.

  `config` supplies the normalizer settings `norms.make_norm` reads; `norm` and `epsilon`
  replace its norm and norm_options.epsilon. The inputs are standard normal times
  `input_scale`. A norm of `EVAL_ROWS` is measured in evaluation mode.
  """
  layer_config = config.copy_and_resolve_references()
  layer_config.norm = EVAL_ROWS.get(norm, norm)
  layer_config.norm_options.epsilon = float(epsilon)
  layer = NormalizedLayer(features, norms.make_dense(layer_config), norms.make_norm(layer_config),
                          train=norm not in EVAL_ROWS)
  rng = np.random.default_rng(seed)
  x_NxD = input_scale * rng.standard_normal((batch_size, in_features))
  with jax.enable_x64(dtype == 'float64'):
    variables = layer.init(jax.random.PRNGKey(seed), jnp.asarray(x_NxD, dtype))
    params = _perturb_params(rng, variables['params'])

    def output(kernel_DxH, x_NxD):
      dense = {**params['dense'], 'kernel': kernel_DxH}
      moved = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype),
                                     {**params, 'dense': dense})
      h = layer.apply({**variables, 'params': moved}, jnp.asarray(x_NxD, dtype))
      return np.asarray(h, np.float64)

    kernel_DxH = params['dense']['kernel']
    h = output(kernel_DxH, x_NxD)
    deviations = {}
    for name, transform in TRANSFORMS.items():
      h_new = output(*transform.apply(rng, kernel_DxH, x_NxD))
      deviations[name] = float(np.max(np.abs(h_new - h)) / np.max(np.abs(h)))
  return deviations


def check_settings(norm_names, *, epsilon: float, dtype: str, threshold: float | None):
  """Validates the settings of `measure_table`; returns the rows and the threshold to use."""
  norm_names = list(norm_names or default_norms())
  known = list(norms.NORMS) + list(EVAL_ROWS)
  unknown = [n for n in norm_names if n not in known]
  if unknown:
    raise UserError(f'unknown norm {", ".join(unknown)}; choose from {", ".join(known)}')
  if dtype not in DTYPES:
    raise UserError(f'dtype {dtype!r} is not supported; choose float64 or float32')
  if epsilon < 0:
    raise UserError(f'epsilon={epsilon} must be >= 0; use 0 for exact invariances')
  threshold = DEFAULT_THRESHOLD[dtype] if threshold is None else threshold
  if threshold <= 0:
    raise UserError(f'threshold={threshold} must be > 0; leave it unset for the default')
  return norm_names, threshold


def measure_table(config, norm_names=None, *, seed: int = 0, epsilon: float = 0.0,
                  dtype: str = 'float64', threshold: float | None = None) -> dict:
  """Measures every row and compares it with the published table where there is one.

  Returns a JSON-ready dict: settings, transforms, and per row its cells (deviation, invariant,
  expected, agrees), with `agrees` None where no published row exists.
  """
  norm_names, threshold = check_settings(norm_names, epsilon=epsilon, dtype=dtype,
                                         threshold=threshold)
  rows = []
  for norm in norm_names:
    deviations = measure(config, norm, seed=seed, epsilon=epsilon, dtype=dtype)
    expected = EXPECTED.get(norm, (None,) * len(TRANSFORMS))
    cells = {}
    for name, want in zip(TRANSFORMS, expected):
      invariant = deviations[name] <= threshold
      cells[name] = {'deviation': deviations[name], 'invariant': invariant, 'expected': want,
                     'agrees': None if want is None else invariant == want}
    rows.append({'norm': norm, 'title': TITLES.get(norm, norm), 'source': SOURCES.get(norm),
                 'cells': cells})
  compared = [c['agrees'] for row in rows for c in row['cells'].values() if c['agrees'] is not None]
  return {
      'settings': {'seed': seed, 'epsilon': epsilon, 'dtype': dtype, 'threshold': threshold,
                   'batch_size': BATCH_SIZE, 'in_features': IN_FEATURES, 'features': FEATURES,
                   'deviation': 'max |h\' - h| / max |h|, h = norm(W x) before the nonlinearity'},
      'transforms': [{'name': n, 'title': t.title, 'formula': t.formula}
                     for n, t in TRANSFORMS.items()],
      'rows': rows,
      'cells_compared': len(compared),
      'cells_disagreeing': compared.count(False),
  }


def _cell_text(cell) -> str:
  verdict = 'Invariant' if cell['invariant'] else 'No'
  mark = {True: ' ✓', False: ' ✗', None: ''}[cell['agrees']]
  return f'{verdict} ({cell["deviation"]:.1e}){mark}'


def to_markdown(table: dict) -> str:
  """The table as Markdown, padded so it also reads as plain text, with a closing note."""
  header = [''] + [t['title'] for t in table['transforms']]
  body = [[row['title']] + [_cell_text(c) for c in row['cells'].values()]
          for row in table['rows']]
  widths = [max(len(line[i]) for line in [header] + body) for i in range(len(header))]
  fmt = lambda line: '| ' + ' | '.join(s.ljust(w) for s, w in zip(line, widths)) + ' |'
  lines = [fmt(header), '|' + '|'.join('-' * (w + 2) for w in widths) + '|']
  lines += [fmt(line) for line in body]
  s = table['settings']
  rows_by_source = {}
  for row in table['rows']:
    if row['source']:
      rows_by_source.setdefault(row['source'], []).append(row['title'])
  references = '; '.join(f'{source} ({", ".join(titles)})'
                         for source, titles in rows_by_source.items())
  disagreeing, compared = table['cells_disagreeing'], table['cells_compared']
  lines += [
      '',
      f'- Cell: Invariant or No, and the deviation max |h\' - h| / max |h| of h = norm(W x) '
      f'({s["batch_size"]} cases x {s["features"]} units, {s["dtype"]}, epsilon '
      f'{s["epsilon"]:g}, seed {s["seed"]}); Invariant when <= {s["threshold"]:.0e}.',
      f'- ✓ / ✗: agrees / disagrees with {references}.',
      f'- All {compared} compared cells agree.' if not disagreeing else
      f'- {disagreeing} of {compared} compared cells disagree.',
  ]
  return '\n'.join(lines) + '\n'


def prepare_output_dir(output_dir: str) -> None:
  """Creates `output_dir` if needed and checks that the table can be written there."""
  try:
    os.makedirs(output_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create {output_dir} ({e.strerror}); choose another '
                    '--output_dir') from None
  if not os.access(output_dir, os.W_OK | os.X_OK):
    raise UserError(f'{output_dir} is not writable; choose another --output_dir')


def write_table(table: dict, output_dir: str) -> tuple[str, str]:
  """Writes invariance.md and invariance.json into `output_dir`; returns their paths."""
  prepare_output_dir(output_dir)
  markdown_path = os.path.join(output_dir, MARKDOWN_FILE)
  json_path = os.path.join(output_dir, JSON_FILE)
  rundir.write_text_atomic(markdown_path, to_markdown(table))
  rundir.write_json_atomic(json_path, table)
  return markdown_path, json_path
