"""The closed-form backward of LayerNorm and RMSNorm equals autodiff of the layers (two-pass)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax import layers
from ln_jax.kernels import fused_norms


def _value_and_grads(apply, module, x, dy):
  """(y, (d params, dx)) of `apply(params, x)`, params of `module` away from 1 and 0."""
  params = module.init(jax.random.PRNGKey(0), x)
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(5), p.shape,
                                                              p.dtype), params)
  y, vjp = jax.vjp(apply, params, x)
  return y, vjp(dy)


def _fused(module, num_axes):
  """The closed-form function with the parameters of `module` (a LayerNorm or RMSNorm)."""
  function = fused_norms.rms_norm if isinstance(module, layers.RMSNorm) else fused_norms.layer_norm

  def apply(params, x):
    p = params['params']
    return function(x, p.get('scale'), p.get('bias'), num_axes=num_axes, epsilon=module.epsilon)
  return apply


def _max_relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize('make,num_axes', [
    (lambda: layers.LayerNorm(), 1), (lambda: layers.LayerNorm(reduction_axes=(1, 2), feature_axes=(1, 2)), 2),
    (lambda: layers.RMSNorm(use_bias=True), 1), (lambda: layers.LayerNorm(use_scale=False), 1)])
def test_custom_vjp_matches_autodiff_of_the_reference(make, num_axes):
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 6, 10)) * 3.0 + 0.5
  dy = jax.random.normal(jax.random.PRNGKey(2), x.shape)
  module = make()
  y, (d_params, dx) = _value_and_grads(_fused(module, num_axes), module, x, dy)
  y_ref, (d_params_ref, dx_ref) = _value_and_grads(module.apply, module, x, dy)
  assert _max_relative(y, y_ref) < 1e-6
  assert _max_relative(dx, dx_ref) < 1e-6
  assert jax.tree.structure(d_params) == jax.tree.structure(d_params_ref)
  for g, g_ref in zip(jax.tree.leaves(d_params), jax.tree.leaves(d_params_ref)):
    assert g.shape == g_ref.shape and _max_relative(g, g_ref) < 1e-6


def test_large_means_keep_the_two_pass_precision():
  # Mean 1e4, spread 1e-2: a one-pass variance in float32 has no significant digit left.
  rng = np.random.default_rng(0)
  x64 = 1e4 + 1e-2 * rng.normal(size=(8, 256))
  dy64 = rng.normal(size=x64.shape)
  x = jnp.asarray(x64, jnp.float32)
  x64 = np.asarray(x, np.float64)  # the float32 input, exactly, in float64
  y, vjp = jax.vjp(lambda v: fused_norms.layer_norm(v), x)
  (dx,) = vjp(jnp.asarray(dy64, jnp.float32))
  centered = x64 - x64.mean(-1, keepdims=True)
  r = 1.0 / np.sqrt((centered ** 2).mean(-1, keepdims=True) + 1e-5)
  x_hat = centered * r
  dx64 = r * (dy64 - dy64.mean(-1, keepdims=True)
              - x_hat * (dy64 * x_hat).mean(-1, keepdims=True))
  assert _max_relative(y, x_hat) < 1e-3
  assert _max_relative(dx, dx64) < 1e-3


def test_bfloat16_inputs_get_float32_statistics_and_bfloat16_outputs():
  x = jax.random.normal(jax.random.PRNGKey(3), (32, 128)) * 4.0 + 100.0
  dy = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  scale, bias = jnp.full((128,), 1.5), jnp.full((128,), 0.25)
  x16, dy16 = x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16)
  y16, vjp16 = jax.vjp(fused_norms.layer_norm, x16, scale, bias)
  dx16, d_scale16, _ = vjp16(dy16)
  assert y16.dtype == jnp.bfloat16 and dx16.dtype == jnp.bfloat16
  assert d_scale16.dtype == jnp.float32
  # The same computation on the bfloat16 values held in float32: only the outputs' rounding.
  y32, vjp32 = jax.vjp(fused_norms.layer_norm, x16.astype(jnp.float32), scale, bias)
  dx32, d_scale32, _ = vjp32(dy16.astype(jnp.float32))
  assert _max_relative(y16, y32) < 1e-2
  assert _max_relative(dx16, dx32) < 1e-2
  assert _max_relative(d_scale16, d_scale32) < 1e-5


def test_float64_matches_autodiff_of_the_reference():
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 40), jnp.float64) + 2.0
    dy = jax.random.normal(jax.random.PRNGKey(2), x.shape, jnp.float64)
    module = layers.LayerNorm(param_dtype=jnp.float64)
    _, (d_params, dx) = _value_and_grads(_fused(module, 1), module, x, dy)
    _, (d_params_ref, dx_ref) = _value_and_grads(module.apply, module, x, dy)
    assert dx.dtype == jnp.float64
    assert _max_relative(dx, dx_ref) < 1e-12
    for g, g_ref in zip(jax.tree.leaves(d_params), jax.tree.leaves(d_params_ref)):
      assert _max_relative(g, g_ref) < 1e-12
