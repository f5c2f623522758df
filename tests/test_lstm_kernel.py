"""The LSTM kernel's hand-written backward pass equals autodiff of the plain implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax.layers import cells
from ln_jax.kernels import lstm_kernel
from ln_jax.kernels import projection


def _max_relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _layer_grads(spec, steps=6, dtype=jnp.float32):
  """Loss, gradients (parameters, input) and new BN statistics of a training RecurrentLayer
  whose every output is used."""
  layer = cells.RecurrentLayer('lstm', 16, spec)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, steps, 5), dtype)
  h0 = jax.random.normal(jax.random.PRNGKey(3), (8, 16), dtype)
  variables = layer.init(jax.random.PRNGKey(1), x)
  params, state = variables['params'], {k: v for k, v in variables.items() if k != 'params'}
  weights = jax.random.normal(jax.random.PRNGKey(2), (8, steps, 16), dtype)

  def loss(params, x):
    (out, (h, c)), new_state = layer.apply({'params': params, **state}, x, train=True,
                                           initial_h=h0, mutable=list(state))
    value = jnp.sum(out * weights) + jnp.sum(jnp.sin(h)) + jnp.sum(jnp.square(c))
    return value, new_state
  (value, new_state), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
  return value, grads, new_state


SPECS = {'none': cells.NormSpec(kind='none'), 'layer': cells.NormSpec(kind='layer'),
         'batch': cells.NormSpec(kind='batch', momentum=0.5),
         'batch_unbiased': cells.NormSpec(kind='batch', momentum=0.5, unbiased_variance=True)}


@pytest.mark.parametrize('name', list(SPECS))
def test_layer_gradients_and_statistics_match_autodiff_of_the_scan(name, monkeypatch):
  assert lstm_kernel.FUSED_KINDS == ('none', 'layer', 'batch')  # the kernel is the default
  loss, grads, state = _layer_grads(SPECS[name])
  monkeypatch.setattr(lstm_kernel, 'FUSED_KINDS', ())  # cells' own lax.scan
  loss_ref, grads_ref, state_ref = _layer_grads(SPECS[name])
  assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
  for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(grads_ref)):
    assert _max_relative(g, g_ref) < 1e-5, jax.tree_util.keystr(path)
  # BN's running averages move the same way (and exist only for BN).
  assert jax.tree.structure(state) == jax.tree.structure(state_ref)
  assert bool(state) == name.startswith('batch')
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(state_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _float64_params(kind, keys, hidden):
  normal = lambda k, shape, scale=1.0: scale * jax.random.normal(k, shape, jnp.float64)
  params = {'kernel_h': normal(keys[0], (hidden, 4 * hidden), 0.3),
            'bias': normal(keys[1], (4 * hidden,), 0.1)}
  if kind != 'none':
    params.update(scale_h=1.0 + normal(keys[3], (4 * hidden,), 0.1),
                  scale_c=1.0 + normal(keys[4], (hidden,), 0.1),
                  shift_c=normal(keys[5], (hidden,), 0.1))
  if kind == 'layer':  # the input projection's LN is the caller's
    params['shift_h'] = normal(keys[2], (4 * hidden,), 0.1)
  if kind == 'batch':
    params['scale_x'] = 1.0 + normal(keys[2], (4 * hidden,), 0.1)
  return params


@pytest.mark.parametrize('norm', [lstm_kernel.Norm('none'), lstm_kernel.Norm('layer'),
                                  lstm_kernel.Norm('batch'),
                                  lstm_kernel.Norm('batch', unbiased=True)])
def test_float64_gradients_match_autodiff_of_the_forward_scan(norm):
  """In float64 the two differ only by rounding: 1e-12 over 12 steps."""
  with jax.enable_x64(True):
    steps, batch, hidden = 12, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 10)
    normal = lambda k, shape: jax.random.normal(k, shape, jnp.float64)
    params = _float64_params(norm.kind, keys, hidden)
    inputs = (normal(keys[6], (steps, batch, 4 * hidden)), normal(keys[7], (batch, hidden)),
              normal(keys[8], (batch, hidden)))
    weights = normal(keys[9], (steps, batch, hidden))

    def loss(sequence, params, *inputs):
      h_seq, (h, c), _ = sequence(params, *inputs)
      return jnp.sum(h_seq * weights) + jnp.sum(jnp.sin(h)) + jnp.sum(jnp.square(c))

    def autodiff(params, ax, h0, c0):  # differentiates the forward pass itself
      return lstm_kernel._forward(params, norm, ax, h0, c0)[:3]
    kernel = lambda params, *inputs: lstm_kernel.lstm_sequence(norm, params, *inputs)
    grads = jax.grad(lambda *a: loss(kernel, *a), argnums=(0, 1, 2, 3))(params, *inputs)
    grads_ref = jax.grad(lambda *a: loss(autodiff, *a), argnums=(0, 1, 2, 3))(params, *inputs)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
      assert g.dtype == jnp.float64 and _max_relative(g, g_ref) < 1e-12


def test_padded_renormalized_and_evaluating_layers_keep_the_scan():
  spec = lambda kind, **kw: {'norm_x': cells.StepNorm(kind, **kw),
                             'norm_h': cells.StepNorm(kind, **kw)}
  mask = jnp.ones((3, 2))
  for kind in ('none', 'layer', 'batch'):
    assert lstm_kernel.applies('lstm', spec(kind), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('none'), mask, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('batch_renorm'), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('group'), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('layer', fast_variance=True), None, jnp.float32)
  running = (jnp.zeros((3, 4)), jnp.ones((3, 4)))  # BN evaluating with running averages
  assert not lstm_kernel.applies('lstm', spec('batch', eval_stats=running), None, jnp.float32)
  assert not lstm_kernel.applies('gru', spec('none'), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('none'), None, jnp.bfloat16)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_input_projection_gradients_are_those_of_the_product(dtype):
  x = jax.random.normal(jax.random.PRNGKey(0), (12, 5), dtype)
  kernel = jax.random.normal(jax.random.PRNGKey(1), (5, 8), dtype)
  weights = jax.random.normal(jax.random.PRNGKey(2), (12, 8))
  loss = lambda product: lambda x, k: jnp.sum(jnp.sin(product(x, k)) * weights)
  reference = lambda x, k: jnp.dot(x, k, preferred_element_type=jnp.float32)
  grads = jax.grad(loss(projection.input_projection), argnums=(0, 1))(x, kernel)
  grads_ref = jax.grad(loss(reference), argnums=(0, 1))(x, kernel)
  for g, g_ref in zip(grads, grads_ref):
    assert g.dtype == dtype
    assert _max_relative(g, g_ref) < (1e-6 if dtype == jnp.float32 else 1e-2)
