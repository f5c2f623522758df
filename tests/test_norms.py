"""LayerNorm and BatchNorm against hand-computed values, flax.linen and PyTorch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax import layers
from ln_jax import norms

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _apply(module, x, **kwargs):
  variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
  return module.apply(variables, x, **kwargs), variables


def test_layer_norm_matches_paper_equation():
  x = np.random.default_rng(0).normal(3.0, 2.0, (5, 7)).astype(np.float32)
  y, variables = _apply(layers.LayerNorm(epsilon=0.0), x)
  mu = x.mean(-1, keepdims=True)
  sigma = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True))  # biased, divide by H
  np.testing.assert_allclose(y, (x - mu) / sigma, atol=1e-5)
  np.testing.assert_array_equal(variables['params']['scale'], np.ones(7))
  np.testing.assert_array_equal(variables['params']['bias'], np.zeros(7))


def test_layer_norm_applies_gain_and_bias_per_unit():
  x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
  module = layers.LayerNorm(epsilon=1e-5)
  variables = module.init(jax.random.PRNGKey(0), x)
  gain, bias = np.arange(1.0, 5.0), np.arange(4.0) - 2.0
  y = module.apply({'params': {'scale': gain, 'bias': bias}}, x)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  np.testing.assert_allclose(y, gain * (x - mu) / np.sqrt(var + 1e-5) + bias, atol=1e-5)
  assert variables['params']['scale'].shape == (4,)


def test_layer_norm_matches_flax_layer_norm():
  x = np.random.default_rng(2).normal(1.0, 3.0, (8, 16)).astype(np.float32)
  ours, _ = _apply(layers.LayerNorm(epsilon=1e-6), x)
  theirs, _ = _apply(nn.LayerNorm(epsilon=1e-6, use_fast_variance=False), x)
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_layer_norm_is_per_example_and_works_at_batch_one():
  x = np.random.default_rng(3).normal(size=(6, 10)).astype(np.float32)
  full, _ = _apply(layers.LayerNorm(), x)
  single, _ = _apply(layers.LayerNorm(), x[2:3])
  np.testing.assert_allclose(full[2:3], single, atol=1e-6)


def test_layer_norm_reduction_axes():
  x = np.random.default_rng(4).normal(size=(2, 3, 5)).astype(np.float32)
  y, variables = _apply(layers.LayerNorm(epsilon=0.0, reduction_axes=(1, 2)), x)
  mu = x.mean((1, 2), keepdims=True)
  sigma = x.std((1, 2), keepdims=True)
  np.testing.assert_allclose(y, (x - mu) / sigma, atol=1e-5)
  # As in flax, the gain follows feature_axes (default: the last axis), not reduction_axes.
  assert variables['params']['scale'].shape == (5,)
  _, per_unit = _apply(layers.LayerNorm(reduction_axes=(1, 2), feature_axes=(1, 2)), x)
  assert per_unit['params']['scale'].shape == per_unit['params']['bias'].shape == (3, 5)


def test_layer_norm_two_pass_variance_is_stable_at_large_mean():
  rng = np.random.default_rng(5)
  x64 = 1e4 + 1e-2 * rng.normal(size=(4, 256))
  x = x64.astype(np.float32)
  y, _ = _apply(layers.LayerNorm(epsilon=0.0), x)
  xf = x.astype(np.float64)
  reference = (xf - xf.mean(-1, keepdims=True)) / xf.std(-1, keepdims=True)
  np.testing.assert_allclose(y, reference, atol=2e-3)
  # The one-pass form is what the default avoids: it is far off here.
  fast, _ = _apply(layers.LayerNorm(epsilon=0.0, use_fast_variance=True), x)
  assert not np.allclose(fast, reference, atol=1e-1)


def test_layer_norm_bfloat16_input_uses_float32_statistics():
  x = np.random.default_rng(6).normal(50.0, 1.0, (4, 64)).astype(np.float32)
  y32, _ = _apply(layers.LayerNorm(), x)
  y16, _ = _apply(layers.LayerNorm(), jnp.asarray(x, jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  # The bf16 input itself is rounded (relative 2^-8 of 50 is ~0.2 = 0.2 std), so compare to the
  # float32 computation on the rounded input.
  rounded = np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32)
  y_rounded, _ = _apply(layers.LayerNorm(), rounded)
  np.testing.assert_allclose(np.asarray(y16, np.float32), y_rounded, atol=3e-2)
  assert np.abs(np.asarray(y16, np.float32) - y32).max() < 1.0


def test_layer_norm_gradient_finite_for_constant_input():
  module = layers.LayerNorm()
  x = jnp.ones((2, 8))
  variables = module.init(jax.random.PRNGKey(0), x)
  grad = jax.grad(lambda x: jnp.sum(module.apply(variables, x) * jnp.arange(8.0)))(x)
  assert np.all(np.isfinite(grad))


def _bn_steps(module, xs):
  """Runs BatchNorm in training mode on each batch; returns outputs and final batch_stats."""
  variables = module.init(jax.random.PRNGKey(0), xs[0])
  outputs = []
  for x in xs:
    y, updates = module.apply(variables, x, mutable=['batch_stats'])
    variables = {**variables, **updates}
    outputs.append(np.asarray(y))
  return outputs, variables


def test_batch_norm_matches_flax_batch_norm_with_running_averages():
  xs = [np.random.default_rng(i).normal(2.0, 3.0, (16, 5)).astype(np.float32) for i in range(4)]
  ours, ours_vars = _bn_steps(layers.BatchNorm(use_running_average=False, momentum=0.9), xs)
  theirs, theirs_vars = _bn_steps(
      nn.BatchNorm(use_running_average=False, momentum=0.9, use_fast_variance=False), xs)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for stat in ('mean', 'var'):
    np.testing.assert_allclose(ours_vars['batch_stats'][stat], theirs_vars['batch_stats'][stat],
                               atol=1e-5)
  x_eval = xs[0]
  ours_eval = layers.BatchNorm(use_running_average=True).apply(ours_vars, x_eval)
  theirs_eval = nn.BatchNorm(use_running_average=True).apply(theirs_vars, x_eval)
  np.testing.assert_allclose(ours_eval, theirs_eval, atol=1e-5)


def test_batch_norm_unbiased_variance_at_batch_four():
  x = np.random.default_rng(7).normal(size=(4, 3)).astype(np.float32)
  (y,), variables = _bn_steps(
      layers.BatchNorm(use_running_average=False, unbiased_variance=True, epsilon=0.0,
                      momentum=0.0), [x])
  np.testing.assert_allclose(y, (x - x.mean(0)) / x.std(0, ddof=1), atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['var'], x.var(0, ddof=1), rtol=1e-5)


def test_batch_norm_evaluation_modes():
  rng = np.random.default_rng(8)
  xs = [rng.normal(1.0, 2.0, (32, 4)).astype(np.float32) for _ in range(3)]
  _, variables = _bn_steps(layers.BatchNorm(use_running_average=False, momentum=0.5), xs)
  x = rng.normal(size=(8, 4)).astype(np.float32)
  running = layers.BatchNorm(use_running_average=True, epsilon=0.0).apply(variables, x)
  stats = variables['batch_stats']
  np.testing.assert_allclose(running, (x - stats['mean']) / np.sqrt(stats['var']), atol=1e-5)
  # Batch statistics at evaluation, without mutating the running averages.
  batch = layers.BatchNorm(use_running_average=False, epsilon=0.0).apply(variables, x)
  np.testing.assert_allclose(batch, (x - x.mean(0)) / x.std(0), atol=1e-4)


def test_batch_norm_matches_pytorch():
  torch = pytest.importorskip('torch')
  xs = [np.random.default_rng(10 + i).normal(1.0, 2.0, (8, 6)).astype(np.float32)
        for i in range(3)]
  ours, variables = _bn_steps(layers.BatchNorm(use_running_average=False, momentum=0.9), xs)
  bn = torch.nn.BatchNorm1d(6, eps=1e-5, momentum=0.1)  # PyTorch 0.1 == Flax 0.9
  bn.train()
  for x, y in zip(xs, ours):
    np.testing.assert_allclose(bn(torch.from_numpy(x)).detach().numpy(), y, atol=1e-5)
  np.testing.assert_allclose(variables['batch_stats']['mean'], bn.running_mean.numpy(),
                             atol=1e-5)
  # PyTorch stores the unbiased variance in running_var: with unbiased_variance=True ours
  # tracks the same estimate (the outputs then differ from PyTorch's, which use the biased one).
  _, unbiased_vars = _bn_steps(
      layers.BatchNorm(use_running_average=False, momentum=0.9, unbiased_variance=True), xs)
  np.testing.assert_allclose(unbiased_vars['batch_stats']['var'], bn.running_var.numpy(),
                             atol=1e-5)
  bn.eval()
  x = xs[0]
  ours_eval = layers.BatchNorm(use_running_average=True).apply(unbiased_vars, x)
  np.testing.assert_allclose(bn(torch.from_numpy(x)).detach().numpy(), ours_eval, atol=1e-5)


def test_layer_norm_matches_pytorch():
  torch = pytest.importorskip('torch')
  x = np.random.default_rng(11).normal(2.0, 3.0, (4, 12)).astype(np.float32)
  ours, _ = _apply(layers.LayerNorm(epsilon=1e-5), x)
  theirs = torch.nn.LayerNorm(12, eps=1e-5)(torch.from_numpy(x)).detach().numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_batch_norm_statistics_are_global_when_batch_is_sharded():
  script = textwrap.dedent('''
      import jax, numpy as np
      from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
      from ln_jax import layers
      assert jax.device_count() == 4
      x = np.random.default_rng(0).normal(3.0, 2.0, (16, 5)).astype(np.float32)
      module = layers.BatchNorm(use_running_average=False, momentum=0.5)
      variables = module.init(jax.random.PRNGKey(0), x)
      apply = jax.jit(lambda v, x: module.apply(v, x, mutable=['batch_stats']))
      mesh = Mesh(np.array(jax.devices()), ('data',))
      sharded = jax.device_put(x, NamedSharding(mesh, P('data')))
      assert len(sharded.addressable_shards) == 4
      y_sharded, stats_sharded = apply(variables, sharded)
      y, stats = apply(variables, x)
      np.testing.assert_allclose(np.asarray(y_sharded), np.asarray(y), atol=1e-5)
      np.testing.assert_allclose(stats_sharded['batch_stats']['var'],
                                 stats['batch_stats']['var'], atol=1e-5)
      np.testing.assert_allclose(np.asarray(y), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5),
                                 atol=1e-4)
      print('ok')
  ''')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO_ROOT}
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip().endswith('ok')


def test_make_norm_by_name(tiny_config):
  tiny_config.norm = 'none'
  assert norms.make_norm(tiny_config) is None
  tiny_config.norm = 'layer'
  assert isinstance(norms.make_norm(tiny_config)(train=True), layers.LayerNorm)
  tiny_config.norm = 'batch'
  make = norms.make_norm(tiny_config)
  assert make(train=True).use_running_average is False
  assert make(train=False).use_running_average is True
  tiny_config.norm_options.eval_stats = 'batch'
  assert norms.make_norm(tiny_config)(train=False).use_running_average is False


@pytest.mark.parametrize('layer', ['recurrent', 'batch_norm'])
def test_batch_stats_restored_as_numpy_arrays_keep_training(layer):
  # Statistics read back from a file are NumPy arrays, which have no `.at[]`.
  x = np.random.default_rng(12).normal(1.0, 2.0, (3, 5, 4)).astype(np.float32)
  if layer == 'recurrent':
    module = layers.RecurrentLayer(cell='lstm', hidden_size=6,
                                   norm=layers.NormSpec(kind='batch', momentum=0.5))
    train, evaluate = {'train': True}, {'train': False}
  else:
    module = layers.BatchNorm(momentum=0.5)
    train, evaluate = {'use_running_average': False}, {'use_running_average': True}
  variables = jax.tree_util.tree_map(np.asarray, module.init(jax.random.PRNGKey(0), x, **train))
  _, updates = module.apply(variables, x, mutable=['batch_stats'], **train)
  for old, new in zip(jax.tree_util.tree_leaves(variables['batch_stats']),
                      jax.tree_util.tree_leaves(updates['batch_stats'])):
    assert new.shape == old.shape and not np.allclose(new, old)
  restored = jax.tree_util.tree_map(np.asarray, {**variables, **updates})
  assert np.all(np.isfinite(jax.tree_util.tree_leaves(module.apply(restored, x, **evaluate))[0]))
