"""The LSTM kernel's hand-written backward pass equals autodiff of the plain implementation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax.layers import cells
from ln_jax.layers import lstm_kernel


def _max_relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


def _layer_grads(kind, steps=6, dtype=jnp.float32):
  """Loss and gradients (parameters, input) of a RecurrentLayer whose every output is used."""
  layer = cells.RecurrentLayer('lstm', 16, cells.NormSpec(kind=kind))
  x = jax.random.normal(jax.random.PRNGKey(0), (8, steps, 5), dtype)
  h0 = jax.random.normal(jax.random.PRNGKey(3), (8, 16), dtype)
  variables = layer.init(jax.random.PRNGKey(1), x)
  weights = jax.random.normal(jax.random.PRNGKey(2), (8, steps, 16), dtype)

  def loss(variables, x):
    out, (h, c) = layer.apply(variables, x, initial_h=h0)
    return jnp.sum(out * weights) + jnp.sum(jnp.sin(h)) + jnp.sum(jnp.square(c))
  return jax.value_and_grad(loss, argnums=(0, 1))(variables, x)


@pytest.mark.parametrize('kind', ['none', 'layer'])
def test_layer_gradients_match_autodiff_of_the_scan(kind, monkeypatch):
  monkeypatch.setattr(lstm_kernel, 'FUSED_KINDS', ('none', 'layer'))
  loss, grads = _layer_grads(kind)
  monkeypatch.setattr(lstm_kernel, 'FUSED_KINDS', ())  # cells' own lax.scan
  loss_ref, grads_ref = _layer_grads(kind)
  assert abs(loss - loss_ref) <= 1e-5 * abs(loss_ref)
  assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
  for (path, g), g_ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                              jax.tree.leaves(grads_ref)):
    assert _max_relative(g, g_ref) < 1e-5, jax.tree_util.keystr(path)


@pytest.mark.parametrize('layer_norm', [False, True])
def test_float64_gradients_match_autodiff_of_the_forward_scan(layer_norm):
  """In float64 the two differ only by rounding: 1e-12 over 28 steps."""
  with jax.enable_x64(True):
    steps, batch, hidden = 28, 4, 8
    keys = jax.random.split(jax.random.PRNGKey(0), 10)
    normal = lambda k, shape, scale=1.0: scale * jax.random.normal(k, shape, jnp.float64)
    params = {'kernel_h': normal(keys[0], (hidden, 4 * hidden), 0.3),
              'bias': normal(keys[1], (4 * hidden,), 0.1)}
    if layer_norm:
      params.update(scale_h=1.0 + normal(keys[2], (4 * hidden,), 0.1),
                    shift_h=normal(keys[3], (4 * hidden,), 0.1),
                    scale_c=1.0 + normal(keys[4], (hidden,), 0.1),
                    shift_c=normal(keys[5], (hidden,), 0.1))
    inputs = (normal(keys[6], (steps, batch, 4 * hidden)), normal(keys[7], (batch, hidden)),
              normal(keys[8], (batch, hidden)))
    weights = normal(keys[9], (steps, batch, hidden))

    def loss(sequence, params, *inputs):
      h_seq, (h, c) = sequence(params, *inputs)
      return jnp.sum(h_seq * weights) + jnp.sum(jnp.sin(h)) + jnp.sum(jnp.square(c))

    def autodiff(params, nx, h0, c0):  # differentiates the forward scan itself
      final, (h_seq, _, _) = lstm_kernel._scan(params, layer_norm, 1e-5, nx, h0, c0)
      return h_seq, final
    kernel = lambda params, *inputs: lstm_kernel.lstm_sequence(layer_norm, 1e-5, params, *inputs)
    grads = jax.grad(lambda *a: loss(kernel, *a), argnums=(0, 1, 2, 3))(params, *inputs)
    grads_ref = jax.grad(lambda *a: loss(autodiff, *a), argnums=(0, 1, 2, 3))(params, *inputs)
    for g, g_ref in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
      assert g.dtype == jnp.float64 and _max_relative(g, g_ref) < 1e-12


def test_padded_and_batch_normalized_layers_keep_the_scan(monkeypatch):
  spec = lambda kind: {'norm_x': cells.StepNorm(kind), 'norm_h': cells.StepNorm(kind)}
  mask = jnp.ones((3, 2))
  assert not lstm_kernel.applies('lstm', spec('none'), None, jnp.float32)  # off by default
  monkeypatch.setattr(lstm_kernel, 'FUSED_KINDS', ('none', 'layer'))
  assert lstm_kernel.applies('lstm', spec('none'), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('none'), mask, jnp.float32)
  assert lstm_kernel.applies('lstm', spec('layer'), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('batch'), None, jnp.float32)
  assert not lstm_kernel.applies('gru', spec('none'), None, jnp.float32)
  assert not lstm_kernel.applies('lstm', spec('none'), None, jnp.bfloat16)
