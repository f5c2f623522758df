"""Batch renorm, group norm and BN's population statistics against NumPy written from the papers."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import classification_task
from conftest import image_batch
from conftest import load_config
from conftest import new_train_state
from ln_jax import layers
from ln_jax.layers import batch_renorm
from ln_jax.layers import cells
from ln_jax.training import population
import numpy_rnn_reference as ref

EPS = 1e-5


def _renorm_numpy(x, mean, std, r_max, d_max, gain, bias, eps=EPS):
  """Ioffe 2017, Algorithm 1 (training), float64: returns (y, mean_B, sigma_B)."""
  x = np.asarray(x, np.float64)
  mean_B = x.mean(0)
  sigma_B = np.sqrt(((x - mean_B) ** 2).mean(0) + eps)
  r = np.clip(sigma_B / std, 1.0 / r_max, r_max)
  d = np.clip((mean_B - mean) / std, -d_max, d_max)
  return gain * ((x - mean_B) / sigma_B * r + d) + bias, mean_B, sigma_B


def _renorm_variables(rng, features, step):
  """Running averages chosen so that some units clip r or d and others do not."""
  return {
      'params': {'scale': rng.uniform(0.5, 2.0, features), 'bias': rng.normal(size=features)},
      'batch_stats': {'mean': rng.normal(0.0, 2.0, features),
                      'std': np.exp(rng.uniform(-2.0, 2.0, features)),
                      'step': np.asarray(step, np.int32)}}


# Bounds fully relaxed from step 1 on: r_max = 3, d_max = 5 at the counter value 7.
RELAXED = batch_renorm.RenormSchedule(start_step=0, r_max_step=1, d_max_step=1)


def test_batch_renorm_training_forward_clips_r_and_d_and_updates_running_averages():
  rng = np.random.default_rng(0)
  x = rng.normal(1.0, 3.0, (8, 12)).astype(np.float32)
  variables = _renorm_variables(rng, 12, step=7)
  layer = layers.BatchRenorm(use_running_average=False, momentum=0.9, schedule=RELAXED)
  y, updates = layer.apply(variables, x, mutable=['batch_stats'])
  stats = variables['batch_stats']
  want, mean_B, sigma_B = _renorm_numpy(x, stats['mean'], stats['std'], 3.0, 5.0,
                                        *variables['params'].values())
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  r = sigma_B / stats['std']
  d = (mean_B - stats['mean']) / stats['std']
  assert np.any((r < 1 / 3) | (r > 3)) and np.any((1 / 3 < r) & (r < 3))  # both clip regimes
  assert np.any(np.abs(d) > 5) and np.any(np.abs(d) < 5)
  new = updates['batch_stats']
  np.testing.assert_allclose(new['mean'], stats['mean'] + 0.1 * (mean_B - stats['mean']),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new['std'], stats['std'] + 0.1 * (sigma_B - stats['std']),
                             rtol=1e-5)
  assert int(new['step']) == 8


def test_batch_renorm_gradient_treats_r_and_d_as_constants():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 5)).astype(np.float32)
  variables = _renorm_variables(rng, 5, step=3)
  stats = variables['batch_stats']
  _, mean_B, sigma_B = _renorm_numpy(x, stats['mean'], stats['std'], 3.0, 5.0, 1.0, 0.0)
  r = np.clip(sigma_B / stats['std'], 1 / 3, 3).astype(np.float32)
  d = np.clip((mean_B - stats['mean']) / stats['std'], -5, 5).astype(np.float32)
  weights = rng.normal(size=x.shape).astype(np.float32)
  layer = layers.BatchRenorm(use_running_average=False, schedule=RELAXED, epsilon=EPS)
  grad = jax.grad(lambda v: jnp.sum(weights * layer.apply(variables, v)))(x)

  def constants_r_d(v):  # BN's batch normalization, then r and d as fixed numbers
    mu = jnp.mean(v, 0)
    sigma = jnp.sqrt(jnp.mean(jnp.square(v - mu), 0) + EPS)
    gain, bias = variables['params']['scale'], variables['params']['bias']
    return jnp.sum(weights * (gain * ((v - mu) / sigma * r + d) + bias))
  np.testing.assert_allclose(grad, jax.grad(constants_r_d)(x), rtol=1e-4, atol=1e-5)


def test_batch_renorm_evaluation_uses_the_running_averages():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(3, 7)).astype(np.float32)
  variables = _renorm_variables(rng, 7, step=0)
  y = layers.BatchRenorm(use_running_average=True).apply(variables, x)
  stats, params = variables['batch_stats'], variables['params']
  want = params['scale'] * (x - stats['mean']) / stats['std'] + params['bias']
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(y[1:2], layers.BatchRenorm(use_running_average=True).apply(
      variables, x[1:2]), atol=1e-6)  # per example


def test_warmup_schedule_follows_the_papers_steps():
  schedule = batch_renorm.RenormSchedule()  # r_max 1 -> 3 over 5k..40k, d_max 0 -> 5 over 5k..25k
  steps = np.array([0, 4999, 5000, 15000, 22500, 25000, 40000, 100000])
  r_max, d_max = (np.asarray(v) for v in jax.vmap(schedule)(steps))
  np.testing.assert_allclose(r_max, np.interp(steps, [5000, 40000], [1.0, 3.0]), rtol=1e-6)
  np.testing.assert_allclose(d_max, np.interp(steps, [5000, 25000], [0.0, 5.0]), rtol=1e-6)


def test_batch_renorm_in_warmup_is_batch_norm():
  rng = np.random.default_rng(3)
  x = rng.normal(2.0, 0.5, (16, 9)).astype(np.float32)
  variables = _renorm_variables(rng, 9, step=4999)  # the paper's last plain-BN step
  y = layers.BatchRenorm(use_running_average=False).apply(variables, x)
  params = variables['params']
  want = params['scale'] * (x - x.mean(0)) / np.sqrt(x.var(0) + EPS) + params['bias']
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def _group_norm_numpy(x, groups, gain, bias, eps=EPS):
  x_g = np.asarray(x, np.float64).reshape(x.shape[0], groups, -1)
  mean = x_g.mean(-1, keepdims=True)
  var = ((x_g - mean) ** 2).mean(-1, keepdims=True)
  return gain * ((x_g - mean) / np.sqrt(var + eps)).reshape(x.shape) + bias


@pytest.mark.parametrize('groups', [1, 3, 4, 12])
def test_group_norm_matches_numpy(groups):
  rng = np.random.default_rng(4)
  x = rng.normal(5.0, 2.0, (4, 12)).astype(np.float32)
  params = {'scale': rng.uniform(0.5, 2.0, 12), 'bias': rng.normal(size=12)}
  y = layers.GroupNorm(num_groups=groups).apply({'params': params}, x)
  np.testing.assert_allclose(y, _group_norm_numpy(x, groups, **{
      'gain': params['scale'], 'bias': params['bias']}), rtol=1e-5, atol=1e-5)


def test_group_norm_with_one_group_is_layer_norm():
  x = np.random.default_rng(5).normal(3.0, 1e-2, (5, 24)).astype(np.float32)
  gn, ln = layers.GroupNorm(num_groups=1), layers.LayerNorm()
  gn_vars, ln_vars = gn.init(jax.random.PRNGKey(0), x), ln.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(np.shape, gn_vars) == jax.tree.map(np.shape, ln_vars)
  np.testing.assert_array_equal(gn.apply(gn_vars, x), ln.apply(ln_vars, x))


def test_group_norm_statistics_cover_only_the_masked_in_entries():
  rng = np.random.default_rng(6)
  x = rng.normal(2.0, 3.0, (3, 12)).astype(np.float32)
  feature_mask = np.ones((3, 12), bool)
  feature_mask[0, [1, 2, 7]] = False
  feature_mask[2, 6:] = False  # a whole group of row 2
  x_padded = np.where(feature_mask, x, np.nan)
  gn = layers.GroupNorm(num_groups=2)
  variables = gn.init(jax.random.PRNGKey(0), x)
  y = np.asarray(gn.apply(variables, x_padded, mask=feature_mask))
  for row in range(3):
    for group in range(2):
      cols = np.arange(6 * group, 6 * group + 6)
      real = cols[feature_mask[row, cols]]
      if real.size == 0:
        np.testing.assert_array_equal(y[row, cols], 0.0)  # the bias: no statistics to use
        continue
      values = x[row, real].astype(np.float64)
      expected = (values - values.mean()) / np.sqrt(values.var() + 1e-5)
      np.testing.assert_allclose(y[row, real], expected, rtol=1e-5, atol=1e-5)
  # A padding mask of examples leaves the real examples as they are without it.
  example_mask = np.array([[True], [False], [True]])
  y_examples = np.asarray(gn.apply(variables, x, mask=example_mask))
  np.testing.assert_allclose(y_examples[[0, 2]], np.asarray(gn.apply(variables, x))[[0, 2]],
                             rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(y_examples))


def test_group_norm_refuses_groups_that_do_not_divide_the_units():
  with pytest.raises(ValueError, match='10 units cannot be split into 4 groups'):
    layers.GroupNorm(num_groups=4).init(jax.random.PRNGKey(0), np.zeros((2, 10)))


# ---- population statistics --------------------------------------------------------------------


def _perturbed(rng, params):
  """Gains and biases away from 1 and 0, so that a mistake in the affine step shows."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p if 'kernel' in path[-1].key else p + 0.3 * rng.normal(size=p.shape),
      params)


def _state(config, rng, images):
  state = new_train_state(config, jax.random.PRNGKey(0), images[:1])
  return state.replace(params=_perturbed(rng, state.params))


def _mlp_bn_inputs_numpy(params, x, unbiased):
  """The MLP in training mode (BN with the batch's statistics, logits normalized too), float64:
  the input of every BN layer, by layer name."""
  names = sorted((k for k in params if k.startswith('dense_')), key=lambda k: int(k[6:]))
  names.append('logits')
  h, inputs = np.asarray(x, np.float64), {}
  for i, name in enumerate(names):
    a = h @ np.asarray(params[name]['kernel'], np.float64)
    inputs[f'norm_{i}'] = a
    var = a.var(0, ddof=1 if unbiased else 0)
    p = params[f'norm_{i}']
    a = p['scale'] * (a - a.mean(0)) / np.sqrt(var + EPS) + p['bias']
    h = np.maximum(a, 0.0) if name != 'logits' else a
  return inputs


@pytest.mark.parametrize('unbiased', [False, True])
def test_mlp_population_statistics_are_those_of_the_union_of_the_batches(tiny_config, unbiased):
  config = tiny_config
  config.norm, config.norm_options.eval_stats = 'batch', 'population'
  config.norm_options.unbiased_variance = unbiased
  config.model.hidden_sizes, config.batch_size = (6, 5), 4
  config.norm_options.population_batches = 3
  rng = np.random.default_rng(6)
  images = rng.integers(0, 256, (40, 784), dtype=np.uint8)
  state = _state(config, rng, images)
  before = jax.tree.map(np.asarray, state.batch_stats)
  evaluate = population.evaluator(config, classification_task(), image_batch(images))
  got = evaluate(state, 17).batch_stats

  per_batch = [_mlp_bn_inputs_numpy(jax.tree.map(np.asarray, state.params), images[idx] / 255.0,
                                    unbiased)
               for idx in np.asarray(population.batch_indices(config, 17, len(images)))]
  for name in per_batch[0]:
    union = np.concatenate([inputs[name] for inputs in per_batch])  # 12 examples
    np.testing.assert_allclose(got[name]['mean'], union.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[name]['var'], union.var(0), rtol=1e-4, atol=1e-6)
  # The training state is untouched; another step draws other batches.
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, state.batch_stats))
  other = evaluate(state, 18).batch_stats
  assert not np.allclose(other['norm_0']['mean'], got['norm_0']['mean'])


class _RecordingNormalizer(ref.Normalizer):
  """The reference's recurrent BN in training mode that also keeps every BN input per step."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.inputs = {}

  def __call__(self, name, a, t):
    self.inputs.setdefault(name, {})[t] = a
    return super().__call__(name, a, t)


def test_recurrent_population_statistics_are_per_time_step(tmp_path):
  config = load_config('configs/seq_mnist.py', 'tiny').unlock()
  config.norm, config.model.initial_state = 'batch', 'zeros'
  config.model.hidden_size, config.model.pixels_per_step = 4, 112  # 7 steps of 112 pixels
  config.batch_size, config.norm_options.population_batches = 5, 2
  assert config.norm_options.eval_stats == 'population'  # the recurrent default
  rng = np.random.default_rng(7)
  images = rng.integers(0, 256, (30, 784), dtype=np.uint8)
  state = _state(config, rng, images)
  got = population.evaluator(config, classification_task(), image_batch(images))(
      state, 3).batch_stats
  got = got['stack']['layer_0']

  params = jax.tree.map(np.asarray, state.params)['stack']['layer_0']
  recorded = []
  for idx in np.asarray(population.batch_indices(config, 3, len(images))):
    x = (2.0 * images[idx] / 255.0 - 1.0).reshape(len(idx), 7, 112)
    normalizer = _RecordingNormalizer('batch', params, eps=EPS)
    ref.run('lstm', normalizer, params, x)
    recorded.append(normalizer.inputs)
  for name in ('norm_x', 'norm_h', 'norm_c'):
    for t in range(7):
      union = np.concatenate([inputs[name][t] for inputs in recorded])
      np.testing.assert_allclose(got[name]['mean'][t], union.mean(0), rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(got[name]['var'][t], union.var(0), rtol=1e-4, atol=1e-6)


# ---- recurrent cells ------------------------------------------------------------------------


class _SmallBatchNormalizer(ref.Normalizer):
  """The reference normalizer with group norm (per example) and batch renorm (per step)."""

  def __init__(self, kind, params, groups=1, running=None, r_max=3.0, d_max=5.0):
    super().__init__(kind, params, EPS)
    self.groups, self.running_rd, self.r_max, self.d_max = groups, running, r_max, d_max

  def __call__(self, name, a, t):
    p = self.params[name]
    gain = np.asarray(p['scale'], np.float64)
    bias = np.asarray(p['bias'], np.float64) if 'bias' in p else 0.0
    if self.kind == 'group':
      return _group_norm_numpy(a, self.groups, gain, bias)
    mean, std = (v[t] for v in self.running_rd[name])
    return _renorm_numpy(a, mean, std, self.r_max, self.d_max, gain, bias)[0]


@pytest.mark.parametrize('cell', cells.CELLS)
@pytest.mark.parametrize('kind', ['group', 'batch_renorm'])
def test_cells_with_group_norm_and_batch_renorm_match_numpy(cell, kind):
  hidden, steps = 4, 5
  layer = cells.RecurrentLayer(cell=cell, hidden_size=hidden, norm=cells.NormSpec(
      kind=kind, groups=2, renorm=RELAXED, momentum=0.9))
  rng = np.random.default_rng(8)
  x = rng.normal(size=(6, steps, 3)).astype(np.float32)
  shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
  variables = {'params': jax.tree.map(lambda s: rng.normal(0.5, 0.5, s.shape).astype(np.float32),
                                      shapes['params'])}
  running = None
  if kind == 'batch_renorm':
    def stat(path, s):
      name = path[-1].key
      if name == 'step':
        return np.asarray(4, np.int32)
      value = rng.normal(size=s.shape) if name == 'mean' else np.exp(rng.normal(size=s.shape))
      return value.astype(np.float32)
    variables['batch_stats'] = jax.tree_util.tree_map_with_path(stat, shapes['batch_stats'])
    running = {n: (s['mean'], s['std']) for n, s in variables['batch_stats'].items()}
  (out, _), updates = layer.apply(variables, x, train=True, mutable=['batch_stats'])
  normalizer = _SmallBatchNormalizer(kind, variables['params'], groups=2, running=running)
  np.testing.assert_allclose(out, ref.run(cell, normalizer, variables['params'], x)[0],
                             rtol=1e-4, atol=1e-5)
  if kind == 'batch_renorm':
    assert all(int(s['step']) == 5 for s in updates['batch_stats'].values())
    eval_out, _ = layer.apply(variables, x, train=False)
    evaluation = _RenormEvaluation('batch_renorm', variables['params'], EPS, running=running)
    np.testing.assert_allclose(eval_out, ref.run(cell, evaluation, variables['params'], x)[0],
                               rtol=1e-4, atol=1e-5)


class _RenormEvaluation(ref.Normalizer):
  """Batch renorm at evaluation: gain * (a - mu_t) / sigma_t + bias with the step's averages."""

  def __call__(self, name, a, t):
    p = self.params[name]
    bias = np.asarray(p['bias'], np.float64) if 'bias' in p else 0.0
    mean, std = (v[t] for v in self.running[name])
    return p['scale'] * (a - mean) / std + bias
