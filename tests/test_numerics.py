"""Numerics of the normalizers (precision at large means, bfloat16, gradients) and RMSNorm and
weight normalization against their definitions."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import flax.linen as nn
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.test_util import check_grads
import numpy as np
import pytest

from conftest import REPO_ROOT, load_config
from ln_jax import models
from ln_jax import layers

BF16_ROUNDING = 2.0**-8  # unit roundoff of bfloat16's 8-bit significand

LAYERS = {
    'layer': lambda: layers.LayerNorm(),
    'batch': lambda: layers.BatchNorm(use_running_average=False),
    'rms': lambda: layers.RMSNorm(use_bias=True),
    'weight': lambda: layers.WeightNormDense(5),
}


def _init(module, x):
  return module.init(jax.random.PRNGKey(0), x)


def test_rms_norm_matches_its_definition_and_flax():
  x = np.random.default_rng(0).normal(2.0, 3.0, (4, 8)).astype(np.float32)
  module = layers.RMSNorm(epsilon=1e-6, use_bias=True)
  variables = _init(module, x)
  np.testing.assert_array_equal(variables['params']['scale'], np.ones(8))
  gain, bias = np.linspace(0.5, 2.0, 8), np.linspace(-1.0, 1.0, 8)
  y = module.apply({'params': {'scale': gain, 'bias': bias}}, x)
  rms = np.sqrt(np.mean(x.astype(np.float64) ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(y, gain * x / rms + bias, rtol=1e-5, atol=1e-6)
  plain = layers.RMSNorm(epsilon=1e-6)
  assert set(_init(plain, x)['params']) == {'scale'}  # no bias unless asked for
  theirs = nn.RMSNorm(epsilon=1e-6)
  np.testing.assert_allclose(plain.apply(_init(plain, x), x), theirs.apply(_init(theirs, x), x),
                             rtol=1e-6)


def test_weight_norm_dense_matches_its_definition_and_starts_as_dense():
  x = np.random.default_rng(1).normal(size=(8, 6)).astype(np.float32)
  module = layers.WeightNormDense(4)
  variables = _init(module, x)
  dense_variables = _init(nn.Dense(4), x)
  np.testing.assert_array_equal(variables['params']['kernel'], dense_variables['params']['kernel'])
  np.testing.assert_allclose(module.apply(variables, x), nn.Dense(4).apply(dense_variables, x),
                             rtol=1e-5, atol=1e-6)
  rng = np.random.default_rng(2)
  v, g, b = rng.normal(size=(6, 4)), rng.uniform(0.5, 2.0, 4), rng.normal(size=4)
  y = module.apply({'params': {'kernel': v, 'scale': g, 'bias': b}}, x)
  w = g * v / np.linalg.norm(v, axis=0)  # column j is the weight vector of output unit j
  np.testing.assert_allclose(y, x @ w + b, rtol=1e-5, atol=1e-5)


def test_weight_norm_gradient_is_orthogonal_to_each_direction():
  # w = g v / ||v|| does not change along v, so the gradient in v has no component along v.
  x = np.random.default_rng(3).normal(size=(8, 6)).astype(np.float32)
  module = layers.WeightNormDense(4)
  params = _init(module, x)['params']
  loss = lambda p: jnp.sum(jnp.sin(module.apply({'params': p}, x)))
  grad_v = jax.grad(loss)(params)['kernel']
  cosines = np.sum(grad_v * params['kernel'], 0) / (
      np.linalg.norm(grad_v, axis=0) * np.linalg.norm(params['kernel'], axis=0))
  np.testing.assert_allclose(cosines, 0.0, atol=1e-5)


def _model_params(norm):
  """The MLP's parameter shapes for `norm` (traced, not computed)."""
  model = models.create_model(load_config('configs/pi_mnist.py', f'tiny,norm={norm}'))
  x = jax.ShapeDtypeStruct((2, 784), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)['params']


def test_mlp_weight_norm_normalizes_every_dense_layer():
  # WeightNormDense starts with nn.Dense's weights (tested above), so this MLP starts as the
  # unnormalized one with the same seed.
  params = _model_params('weight')
  assert sorted(params) == ['dense_0', 'dense_1', 'logits']  # no separate norm modules
  for name, layer in params.items():
    assert set(layer) == {'kernel', 'scale', 'bias'}, name
    assert layer['scale'].shape == layer['bias'].shape == layer['kernel'].shape[1:]


def test_mlp_rms_norm_carries_the_bias_after_the_norm():
  params = _model_params('rms')
  assert set(params['dense_0']) == {'kernel'}
  assert set(params['norm_0']) == {'scale', 'bias'}
  assert 'norm_2' not in params and set(params['logits']) == {'kernel', 'bias'}


@pytest.mark.parametrize('norm', ['layer', 'batch'])
@settings(max_examples=8, deadline=None, derandomize=True)
@given(offset=st.floats(1e2, 1e4), seed=st.integers(0, 2**31 - 1))
def test_two_pass_statistics_match_float64_at_large_means(norm, offset, seed):
  x = (offset + 1e-2 * np.random.default_rng(seed).normal(size=(32, 32))).astype(np.float32)
  axis = 1 if norm == 'layer' else 0  # LN: per example; BN: per unit, over the batch
  xf = x.astype(np.float64)  # the reference sees exactly the float32 values
  reference = (xf - xf.mean(axis, keepdims=True)) / xf.std(axis, keepdims=True)
  module = layers.LayerNorm(epsilon=0.0) if norm == 'layer' else layers.BatchNorm(
      epsilon=0.0, use_running_average=False)
  np.testing.assert_allclose(module.apply(_init(module, x), x), reference, atol=1e-5)
  _, var, _ = layers.moments(x, (axis,))
  np.testing.assert_allclose(np.ravel(var), xf.var(axis), rtol=1e-5)


@pytest.mark.parametrize('offset', [1e2, 1e3, 1e4])
def test_one_pass_variance_fails_at_large_means(offset):
  # What use_fast_variance trades for one pass: E[x^2] - E[x]^2 cancels catastrophically.
  x = (offset + 1e-2 * np.random.default_rng(5).normal(size=(64, 64))).astype(np.float32)
  _, var, _ = layers.moments(x, (1,), use_fast_variance=True)
  ratio = np.ravel(var) / x.astype(np.float64).var(-1)
  assert np.all((ratio < 0.5) | (ratio > 2.0)), ratio  # every row off by more than 2x
  assert np.mean(ratio == 0.0) > 0.5  # most rows clamp to zero variance


@pytest.mark.parametrize('norm', ['layer', 'batch', 'rms'])
def test_bfloat16_inputs_match_float32_to_bfloat16_precision(norm):
  # A mean of 20 against a spread of 1: bf16 statistics would be off by far more than this.
  x = np.random.default_rng(6).normal(20.0, 1.0, (32, 64)).astype(np.float32)
  x16 = jnp.asarray(x, jnp.bfloat16)
  x32 = np.asarray(x16, np.float32)  # the same rounded values, in float32
  module = LAYERS[norm]()
  variables = _init(module, x32)
  y16 = module.apply(variables, x16)
  assert y16.dtype == jnp.bfloat16
  y32 = np.asarray(module.apply(variables, x32))
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=BF16_ROUNDING * 1.01,
                             atol=1e-6)


def test_bfloat16_weight_norm_uses_float32_norms():
  x = np.random.default_rng(7).normal(size=(16, 64)).astype(np.float32)
  x16 = jnp.asarray(x, jnp.bfloat16)
  apply32, params = _apply_fn(layers.WeightNormDense(32), x)
  apply16, _ = _apply_fn(layers.WeightNormDense(32, dtype=jnp.bfloat16), x)
  y16 = apply16(x16, params)
  assert y16.dtype == jnp.bfloat16
  y32 = np.asarray(apply32(np.asarray(x16, np.float32), params))
  # The bf16 product rounds inputs, weights and output: a few bf16 roundings of the largest.
  assert np.abs(np.asarray(y16, np.float32) - y32).max() <= 4 * BF16_ROUNDING * np.abs(y32).max()


def test_float64_inputs_keep_float64_statistics():
  with jax.enable_x64(True):
    x = 1e6 + 1e-2 * np.random.default_rng(8).normal(size=(4, 16))  # float32 cannot hold it
    module = layers.LayerNorm(epsilon=0.0)
    y = module.apply(_init(module, x), x)
    assert y.dtype == jnp.float64
    reference = (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True)
    np.testing.assert_allclose(y, reference, atol=1e-6)


def _apply_fn(module, x):
  """(x, params) -> output, with BatchNorm's statistics from the batch, and parameters (gains,
  biases, directions) drawn in [0.5, 1.5] so that gradients are checked in general position."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), x)  # traced only: no init compile
  rng = np.random.default_rng(10)
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(rng.uniform(0.5, 1.5, s.shape), x.dtype), shapes)
  rest = {k: v for k, v in variables.items() if k != 'params'}
  return (lambda x, p: module.apply({**rest, 'params': p}, x)), variables['params']


@pytest.mark.parametrize('norm', sorted(LAYERS))
def test_gradients_match_finite_differences(norm):
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(9).normal(1.0, 2.0, (5, 6)))
    fn, params = _apply_fn(LAYERS[norm](), x)
    check_grads(fn, (x, params), order=1, modes=('fwd', 'rev'))


@pytest.mark.parametrize('norm', sorted(LAYERS))
@pytest.mark.parametrize('value', [0.0, 3.0])
def test_gradients_are_finite_for_a_constant_input(norm, value):
  x = jnp.full((4, 6), value, jnp.float32)
  fn, params = _apply_fn(LAYERS[norm](), x)
  y = fn(x, params)
  weights = jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape)  # a loss that is not flat
  grads = jax.grad(lambda x, p: jnp.sum(fn(x, p) * weights), argnums=(0, 1))(x, params)
  for grad in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(grad))


def _large_mean_batch(rows=64, features=8, seed=11):
  """float32 data with mean 1e4 and spread 1e-2, and BN's float64 reference on those values."""
  x = (1e4 + 1e-2 * np.random.default_rng(seed).normal(size=(rows, features))).astype(np.float32)
  return x, x.astype(np.float64)


def _bn_reference(xf, epsilon):
  return (xf - xf.mean(0)) / np.sqrt(xf.var(0) + epsilon)


@pytest.mark.parametrize('padding', [0.0, np.nan, np.inf])
@pytest.mark.parametrize('ghost_batches', [1, 2])
def test_batch_norm_mask_takes_its_shift_from_a_real_entry(padding, ghost_batches):
  # The first rows of the batch (and of each ghost batch) are padding: shifting by row 0 would
  # lose the precision the shift exists for (0.1 off here), and NaN there would spread.
  x, xf = _large_mean_batch()
  real = np.ones((64, 1), bool)
  real[:4] = real[32:36] = False
  x[~real[:, 0]] = padding
  module = layers.BatchNorm(use_running_average=False, ghost_batches=ghost_batches,
                            momentum=0.0)
  y, updates = module.apply(_init(module, x), x, mask=real, mutable=['batch_stats'])
  groups = np.split(np.arange(64), ghost_batches)
  for rows in groups:
    rows = rows[real[rows, 0]]
    np.testing.assert_allclose(y[rows], _bn_reference(xf[rows], 1e-5), atol=1e-4)
  expected_var = np.mean([xf[rows[real[rows, 0]]].var(0) for rows in groups], 0)
  np.testing.assert_allclose(updates['batch_stats']['var'], expected_var, rtol=1e-3)


@pytest.mark.parametrize('norm', ['LayerNorm', 'RMSNorm'])
def test_per_example_norms_honour_the_mask(norm):
  x = np.random.default_rng(12).normal(3.0, 2.0, (4, 10)).astype(np.float32)
  real = np.arange(10) < 7
  x[:, ~real] = np.nan  # padded features: they must not reach the real ones
  module = getattr(layers, norm)(use_bias=True)
  y = module.apply(_init(module, x), x, mask=real)
  expected = module.apply(_init(module, x[:, :7]), x[:, :7])
  np.testing.assert_allclose(y[:, :7], expected, atol=1e-5)


_CROSS_DEVICE = r'''
import jax, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from ln_jax import layers
assert jax.device_count() == 4
mesh = Mesh(np.array(jax.devices()), ('d',))
x = (1e4 + 1e-2 * np.random.default_rng(0).normal(size=(64, 8))).astype(np.float32)
real = np.ones((64, 1), bool)
real[:16] = False  # the whole first device is padding in the masked run
padded = np.where(real, x, np.nan).astype(np.float32)
module = layers.BatchNorm(use_running_average=False, axis_name='d', momentum=0.0)
variables = module.init(jax.random.PRNGKey(0), x[:16])  # outside the mapped axis
out = {}
for name, inputs, mask in (('whole', x, None), ('masked', padded, real)):
  step = lambda v, x, m: module.apply(v, x, mask=m, mutable=['batch_stats'])
  y, stats = jax.shard_map(step, mesh=mesh, in_specs=(P(), P('d'), P('d')),
                           out_specs=(P('d'), P()))(variables, inputs, mask)
  out[name] = (np.asarray(y), np.asarray(stats['batch_stats']['var']))
np.savez(__import__('sys').argv[1], **{f'{k}_{i}': v for k, vs in out.items()
                                       for i, v in enumerate(vs)})
'''


def test_cross_device_batch_norm_statistics_are_two_pass(tmp_path):
  # Four devices' statistics combined: one-pass sums of x^2 are off by ~10 at mean 1e4 and
  # spread 1e-2, and a rounded float32 global mean by ~0.1.
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO_ROOT}
  result = subprocess.run([sys.executable, '-c', _CROSS_DEVICE, str(tmp_path / 'out.npz')],
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = np.load(tmp_path / 'out.npz')
  _, xf = _large_mean_batch(seed=0)  # the worker's data
  np.testing.assert_allclose(out['whole_0'], _bn_reference(xf, 1e-5), atol=1e-4)
  np.testing.assert_allclose(out['whole_1'], xf.var(0), rtol=1e-3)
  np.testing.assert_allclose(out['masked_0'][16:], _bn_reference(xf[16:], 1e-5), atol=1e-4)
  np.testing.assert_allclose(out['masked_1'], xf[16:].var(0), rtol=1e-3)


@pytest.mark.parametrize('norm', ['BatchNorm', 'LayerNorm', 'RMSNorm'])
def test_non_finite_padding_leaves_the_gradients_of_real_entries_alone(norm):
  x = np.random.default_rng(13).normal(1.0, 2.0, (6, 5)).astype(np.float32)
  real = np.broadcast_to((np.arange(6) >= 2)[:, None], x.shape)
  module = getattr(layers, norm)(**({'use_running_average': False} if norm == 'BatchNorm'
                                    else {'reduction_axes': (0, 1)}))
  variables = _init(module, x)

  def grads(padding):
    padded = np.where(real, x, padding).astype(np.float32)
    loss = lambda x, p: jnp.sum(jnp.where(
        real, module.apply({**variables, 'params': p}, x, mask=real), 0.0) * jnp.arange(5.0))
    return jax.grad(loss, argnums=(0, 1))(padded, variables['params'])

  (x_grad, param_grads), (x_grad_zero, param_grads_zero) = grads(np.nan), grads(0.0)
  np.testing.assert_allclose(x_grad[real], x_grad_zero[real], rtol=1e-5, atol=1e-6)
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                         param_grads, param_grads_zero)
