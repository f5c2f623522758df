"""dense.Dense: nn.Dense's parameters and values, with a weight gradient fused at small batches."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax.kernels import fused_matmul
from ln_jax.layers import dense


def _loss(apply):
  def loss(params, x):
    y = apply(params, x)  # a nonlinearity, so dy differs between examples
    return jnp.sum(jnp.tanh(y) * jnp.arange(1, y.shape[-1] + 1))
  return loss


@pytest.mark.parametrize('batch', [1, 4, fused_matmul.OUTER_PRODUCT_MAX_ROWS,
                                   fused_matmul.OUTER_PRODUCT_MAX_ROWS + 1, 32])
def test_same_parameters_values_and_gradients_as_flax_dense(batch):
  x = jax.random.normal(jax.random.key(0), (batch, 7))
  ours, flax_dense = dense.Dense(5), nn.Dense(5)
  params = ours.init(jax.random.key(1), x)
  flax_params = flax_dense.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, flax_params)
  np.testing.assert_array_equal(params['params']['kernel'], flax_params['params']['kernel'])
  np.testing.assert_array_equal(ours.apply(params, x), flax_dense.apply(params, x))

  grads, dx = jax.jit(jax.grad(_loss(ours.apply), argnums=(0, 1)))(params, x)
  want_grads, want_dx = jax.grad(_loss(flax_dense.apply), argnums=(0, 1))(params, x)
  for got, want in zip(jax.tree.leaves(grads) + [dx], jax.tree.leaves(want_grads) + [want_dx]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_forward_mode_and_second_order():
  """jvp works (the gradient rule is a forward-mode rule), and so do Hessian-vector products."""
  x = jax.random.normal(jax.random.key(0), (4, 6))
  layer = dense.Dense(3)
  params = layer.init(jax.random.key(1), x)
  direction = jax.tree.map(jnp.ones_like, params)
  loss = lambda p: jnp.sum(jnp.tanh(layer.apply(p, x)) ** 2)
  flax_loss = lambda p: jnp.sum(jnp.tanh(nn.Dense(3).apply(p, x)) ** 2)
  _, got = jax.jvp(loss, (params,), (direction,))
  _, want = jax.jvp(flax_loss, (params,), (direction,))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  hvp = lambda f: jax.jvp(jax.grad(f), (params,), (direction,))[1]
  for got, want in zip(jax.tree.leaves(hvp(loss)), jax.tree.leaves(hvp(flax_loss))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_leading_dimensions_and_vmap():
  x = jax.random.normal(jax.random.key(0), (3, 2, 6))  # 3 seeds x batch 2
  layer = dense.Dense(4, use_bias=False)
  params = layer.init(jax.random.key(1), x[0])
  np.testing.assert_allclose(layer.apply(params, x),
                             jnp.einsum('sbi,io->sbo', x, params['params']['kernel']), rtol=1e-6)
  per_seed = jax.vmap(jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))), (None, 0))
  looped = [jax.grad(lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x))))(params, xs) for xs in x]
  got = per_seed(params, x)['params']['kernel']
  for seed, want in enumerate(looped):
    np.testing.assert_allclose(got[seed], want['params']['kernel'], rtol=1e-5, atol=1e-6)


def test_small_batch_weight_gradient_is_not_a_matrix_product():
  """At batch <= OUTER_PRODUCT_MAX_ROWS no dot produces the [in, out] weight gradient (it is left
  to fuse into its consumers); above it, or with fuse_weight_grad=False, one does."""

  def weight_dots(batch, layer=dense.Dense(300, use_bias=False)):
    x = jnp.ones((batch, 200))
    params = layer.init(jax.random.key(0), x)
    step = jax.jit(lambda p, x: jax.tree.map(
        lambda w, g: w - 0.1 * g, p, jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))(p)))
    hlo = step.lower(params, x).as_text()
    return [line for line in hlo.splitlines()
            if 'dot_general' in line and any(f'tensor<{shape}xf32>' in line.split('->')[-1]
                                             for shape in ('200x300', '300x200'))]

  assert not weight_dots(4)
  assert weight_dots(fused_matmul.OUTER_PRODUCT_MAX_ROWS + 1)
  assert weight_dots(4, dense.Dense(300, use_bias=False, fuse_weight_grad=False))
