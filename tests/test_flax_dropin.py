"""ln_jax's LayerNorm, RMSNorm and BatchNorm in place of flax.linen's: the same arguments give the
same variables (names, shapes, dtypes, initial values) and, with flax's epsilon and variance
form, the same outputs; flax's variables load into ours unchanged."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ln_jax

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = jax.random.PRNGKey(0)


def _signature(variables):
  """{collection: {name: (shape, dtype)}}: what a checkpoint of these variables holds."""
  return jax.tree_util.tree_map(lambda v: (v.shape, jnp.dtype(v.dtype)), dict(variables))


def _perturbed(variables, seed=0):
  """The variables with every entry moved off its initial value, so a mix-up shows."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda v: jnp.asarray(np.asarray(v, np.float32) + rng.uniform(0.5, 1.5, v.shape), v.dtype),
      variables)


def _same_variables_and_outputs(ours, theirs, x, atol=1e-5, mutable=False, **call):
  """Asserts equal variables at init, then equal outputs with flax's (perturbed) variables."""
  ours_vars, theirs_vars = ours.init(KEY, x, **call), theirs.init(KEY, x, **call)
  assert _signature(ours_vars) == _signature(theirs_vars)
  jax.tree_util.tree_map(np.testing.assert_array_equal, ours_vars, theirs_vars)
  variables = _perturbed(theirs_vars)
  y_ours, y_theirs = (m.apply(variables, x, mutable=mutable, **call) for m in (ours, theirs))
  if mutable:
    (y_ours, _), (y_theirs, _) = y_ours, y_theirs
  assert y_ours.dtype == y_theirs.dtype and y_ours.shape == x.shape
  np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32),
                             atol=atol, rtol=atol)


LAYER_NORM_CASES = [
    ((4, 6), {}),
    ((2, 3, 5), {'reduction_axes': (1, 2)}),  # gain per feature on the last axis only
    ((2, 3, 5), {'reduction_axes': (1, 2), 'feature_axes': (1, 2)}),
    ((3, 4, 5), {'reduction_axes': 1, 'feature_axes': 1}),
    ((4, 6), {'use_bias': False, 'param_dtype': jnp.bfloat16}),
    ((4, 6), {'use_scale': False, 'bias_init': nn.initializers.constant(0.5)}),
    ((4, 6), {'scale_init': nn.initializers.constant(2.0), 'dtype': jnp.float32}),
]


@pytest.mark.parametrize('fast', [False, True])
@pytest.mark.parametrize('shape,kwargs', LAYER_NORM_CASES)
def test_layer_norm_matches_flax(shape, kwargs, fast):
  x = np.random.default_rng(0).normal(1.0, 2.0, shape).astype(np.float32)
  _same_variables_and_outputs(
      ln_jax.LayerNorm(epsilon=1e-6, use_fast_variance=fast, **kwargs),
      nn.LayerNorm(epsilon=1e-6, use_fast_variance=fast, **kwargs), x)


RMS_NORM_CASES = [c for c in LAYER_NORM_CASES if not {'use_bias', 'bias_init'} & set(c[1])]


@pytest.mark.parametrize('shape,kwargs', RMS_NORM_CASES)
def test_rms_norm_matches_flax(shape, kwargs):
  x = np.random.default_rng(1).normal(1.0, 2.0, shape).astype(np.float32)
  _same_variables_and_outputs(ln_jax.RMSNorm(epsilon=1e-6, **kwargs),
                              nn.RMSNorm(epsilon=1e-6, **kwargs), x)


@pytest.mark.parametrize('module', ['LayerNorm', 'RMSNorm'])
@pytest.mark.parametrize('mask_shape', [(3, 4, 6), (3, 1, 6), (6,)])
def test_per_example_norm_masks_match_flax(module, mask_shape):
  rng = np.random.default_rng(2)
  x = rng.normal(2.0, 3.0, (3, 4, 6)).astype(np.float32)
  mask = rng.uniform(size=mask_shape) < 0.6
  mask[..., 0] = True  # flax's statistics are NaN for a row with no real entry
  ours, theirs = getattr(ln_jax, module)(epsilon=1e-6), getattr(nn, module)(epsilon=1e-6)
  _same_variables_and_outputs(ours, theirs, x, mask=mask)
  # The mask counts: the statistics differ from those of the whole row.
  variables = ours.init(KEY, x)
  assert not np.allclose(ours.apply(variables, x, mask=mask), ours.apply(variables, x))


@pytest.mark.parametrize('module', ['LayerNorm', 'RMSNorm', 'BatchNorm'])
def test_dtype_is_the_result_dtype_as_in_flax(module):
  x = np.random.default_rng(3).normal(5.0, 1.0, (8, 16)).astype(np.float32)
  call = ({'use_running_average': False, 'mutable': ['batch_stats']} if module == 'BatchNorm'
          else {})
  make = lambda lib, **kw: getattr(lib, module)(epsilon=1e-6, use_fast_variance=False, **kw)
  init_call = {'use_running_average': True} if module == 'BatchNorm' else {}
  # bfloat16 in, float32 out; float32 in, bfloat16 out: flax's values in both.
  x16 = jnp.asarray(x, jnp.bfloat16)
  _same_variables_and_outputs(make(ln_jax, dtype=jnp.float32), make(nn, dtype=jnp.float32),
                              x16, **call)
  _same_variables_and_outputs(make(ln_jax, dtype=jnp.bfloat16), make(nn, dtype=jnp.bfloat16),
                              x, atol=2**-7, **call)
  # Without `dtype` ours keeps the input's dtype (flax promotes bfloat16 with the float32 gain).
  for lib, dtype in ((ln_jax, jnp.bfloat16), (nn, jnp.float32)):
    layer = make(lib)
    y = layer.apply(layer.init(KEY, x16, **init_call), x16, **call)
    assert (y[0] if 'mutable' in call else y).dtype == dtype


def _bn_run(module, xs, variables=None, **call):
  """Training steps over `xs` (updating batch_stats), then evaluation on xs[0]."""
  variables = variables or module.init(KEY, xs[0], use_running_average=False, **call)
  outputs = []
  for x in xs:
    y, updates = module.apply(variables, x, use_running_average=False, mutable=['batch_stats'],
                              **call)
    variables = {**variables, **updates}
    outputs.append(np.asarray(y, np.float32))
  outputs.append(np.asarray(module.apply(variables, xs[0], use_running_average=True), np.float32))
  return outputs, variables


BATCH_NORM_CASES = [
    ((16, 5), {}),
    ((4, 3, 3, 2), {}),  # NHWC images, features last
    ((8, 3, 4), {'axis': 1}),
    ((8, 3, 4), {'axis': (1, 2)}),
    ((8, 5), {'use_bias': False, 'scale_init': nn.initializers.constant(0.5)}),
    ((8, 5), {'use_scale': False, 'param_dtype': jnp.bfloat16}),
]


@pytest.mark.parametrize('fast', [False, True])
@pytest.mark.parametrize('shape,kwargs', BATCH_NORM_CASES)
def test_batch_norm_matches_flax_with_running_averages(shape, kwargs, fast):
  rng = np.random.default_rng(4)
  xs = [rng.normal(2.0, 3.0, shape).astype(np.float32) for _ in range(3)]
  ours = ln_jax.BatchNorm(momentum=0.8, use_fast_variance=fast, **kwargs)
  theirs = nn.BatchNorm(momentum=0.8, use_fast_variance=fast, **kwargs)
  init = ours.init(KEY, xs[0], use_running_average=False)
  assert _signature(init) == _signature(theirs.init(KEY, xs[0], use_running_average=False))
  variables = _perturbed(init)  # non-trivial gains, biases and running statistics
  ours_out, ours_vars = _bn_run(ours, xs, variables)
  theirs_out, theirs_vars = _bn_run(theirs, xs, variables)
  for a, b in zip(ours_out, theirs_out):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  assert _signature(ours_vars) == _signature(theirs_vars)
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
                         ours_vars['batch_stats'], theirs_vars['batch_stats'])


@pytest.mark.parametrize('mask_shape', [(16, 1), (16, 5)])
def test_batch_norm_masks_match_flax(mask_shape):
  rng = np.random.default_rng(5)
  xs = [rng.normal(2.0, 3.0, (16, 5)).astype(np.float32) for _ in range(2)]
  mask = rng.uniform(size=mask_shape) < 0.7
  mask[0] = True  # at least one real entry per feature
  call = {'mask': mask}
  ours_out, ours_vars = _bn_run(ln_jax.BatchNorm(momentum=0.5), xs, **call)
  theirs_out, theirs_vars = _bn_run(nn.BatchNorm(momentum=0.5, use_fast_variance=False), xs,
                                    **call)
  for a, b in zip(ours_out, theirs_out):
    np.testing.assert_allclose(a, b, atol=1e-5)
  jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, atol=1e-6),
                         ours_vars['batch_stats'], theirs_vars['batch_stats'])
  unmasked, _ = _bn_run(ln_jax.BatchNorm(momentum=0.5), xs)
  assert not np.allclose(ours_out[0], unmasked[0], atol=1e-3)  # the mask changed the statistics


def test_batch_norm_init_with_axis_name_outside_a_mapped_axis():
  # As in flax, init skips the cross-device reduction, so the model initializes anywhere.
  x = np.ones((4, 3), np.float32)
  variables = ln_jax.BatchNorm(axis_name='batch').init(KEY, x, use_running_average=False)
  assert _signature(variables) == _signature(
      nn.BatchNorm(axis_name='batch').init(KEY, x, use_running_average=False))


class _UserModel(nn.Module):
  """A user's model written for flax.linen: the norm arrives as a constructor."""
  norm: Callable[..., Any] = nn.BatchNorm

  @nn.compact
  def __call__(self, x, train: bool):
    h = nn.Dense(12, use_bias=False)(x)
    h = nn.relu(self.norm(use_running_average=not train)(h))
    return nn.Dense(3)(h)


def _train_one_step(model, x, labels):
  variables = model.init(KEY, x, train=False)
  optimizer = optax.adam(1e-2)

  def loss_fn(params, batch_stats):
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                  mutable=['batch_stats'])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, updates['batch_stats']

  params, batch_stats = variables['params'], variables['batch_stats']
  loss_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
  (loss, new_stats), grads = loss_and_grad(params, batch_stats)
  updates, _ = optimizer.update(grads, optimizer.init(params), params)
  new_params = optax.apply_updates(params, updates)
  (next_loss, _), _ = loss_and_grad(new_params, new_stats)
  return variables, loss, next_loss, new_params, new_stats


def test_user_model_trains_with_ln_jax_batch_norm_in_place_of_flax():
  rng = np.random.default_rng(6)
  x = rng.normal(1.0, 2.0, (32, 10)).astype(np.float32)
  labels = rng.integers(0, 3, 32)
  flax_args = dict(momentum=0.9, epsilon=1e-5, axis=-1, dtype=jnp.float32,
                   use_fast_variance=False)
  ours = _train_one_step(_UserModel(functools.partial(ln_jax.BatchNorm, **flax_args)), x, labels)
  theirs = _train_one_step(_UserModel(functools.partial(nn.BatchNorm, **flax_args)), x, labels)
  assert _signature(ours[0]) == _signature(theirs[0])
  assert ours[2] < ours[1]  # the step lowered the loss
  np.testing.assert_allclose([ours[1], ours[2]], [theirs[1], theirs[2]], rtol=1e-5)
  for a, b in zip(ours[3:], theirs[3:]):
    jax.tree_util.tree_map(functools.partial(np.testing.assert_allclose, atol=1e-5), a, b)


def test_flax_checkpoint_loads_into_ln_jax_unchanged():
  rng = np.random.default_rng(7)
  x = rng.normal(1.0, 2.0, (32, 10)).astype(np.float32)
  labels = rng.integers(0, 3, 32)
  flax_model = _UserModel(functools.partial(nn.BatchNorm, momentum=0.9))
  *_, params, batch_stats = _train_one_step(flax_model, x, labels)
  restored = jax.tree_util.tree_map(np.asarray, {'params': params, 'batch_stats': batch_stats})
  ours_model = _UserModel(functools.partial(ln_jax.BatchNorm, momentum=0.9,
                                            use_fast_variance=True))
  np.testing.assert_allclose(ours_model.apply(restored, x, train=False),
                             flax_model.apply(restored, x, train=False), atol=1e-5)
  ln_vars = _perturbed(nn.LayerNorm().init(KEY, x))
  np.testing.assert_allclose(ln_jax.LayerNorm(epsilon=1e-6).apply(ln_vars, x),
                             nn.LayerNorm(use_fast_variance=False).apply(ln_vars, x), atol=1e-5)


# The cross-device arguments in shard_map and pmap, in a fresh interpreter with 4 forced devices.
_SHARDED = textwrap.dedent('''
    import functools
    import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, PartitionSpec as P
    import ln_jax
    assert jax.device_count() == 4
    mesh = Mesh(np.array(jax.devices()), ('d',))
    key = jax.random.PRNGKey(0)
    rng = np.random.default_rng(0)
    close = functools.partial(np.testing.assert_allclose, atol=1e-5, rtol=1e-5)

    def batch_norm(lib, x, **kwargs):
      """Outputs and batch_stats of one training step with the batch split over the devices."""
      module = lib.BatchNorm(use_running_average=False, momentum=0.5, **kwargs)
      variables = module.init(key, x[:4])
      apply = lambda v, x: module.apply(v, x, mutable=['batch_stats'])
      return jax.shard_map(apply, mesh=mesh, in_specs=(P(), P('d')),
                           out_specs=(P('d'), P()))(variables, x)

    x = rng.normal(2.0, 3.0, (16, 5)).astype(np.float32)
    init = ln_jax.BatchNorm().init(key, x, use_running_average=False)
    whole, whole_stats = ln_jax.BatchNorm(use_running_average=False, momentum=0.5).apply(
        init, x, mutable=['batch_stats'])
    for fast in (False, True):
      (y, stats), (y_flax, stats_flax) = (
          batch_norm(lib, x, axis_name='d', use_fast_variance=fast) for lib in (ln_jax, nn))
      for a, b in ((y, y_flax), (y, whole)):
        close(a, b)
      jax.tree_util.tree_map(close, stats, stats_flax)
      jax.tree_util.tree_map(close, stats, whole_stats)
    # Groups of devices [[0, 1], [2, 3]] (pmap: shard_map has no axis_index_groups): each half
    # of the batch on its own.
    def grouped(lib, **kwargs):
      module = lib.BatchNorm(use_running_average=False, axis_name='d',
                             axis_index_groups=[[0, 1], [2, 3]], **kwargs)
      variables = module.init(key, x[:4])
      apply = lambda v, x: module.apply(v, x, mutable=['batch_stats'])[0]
      return jax.pmap(apply, axis_name='d', in_axes=(None, 0))(variables, x.reshape(4, 4, 5))
    y_groups = grouped(ln_jax).reshape(16, 5)
    close(y_groups, grouped(nn, use_fast_variance=False).reshape(16, 5))
    halves = [ln_jax.BatchNorm(use_running_average=False).apply(init, h) for h in (x[:8], x[8:])]
    close(y_groups, np.concatenate(halves))

    # LayerNorm over features split across the devices (no gain: it would be split too).
    x = rng.normal(1.0, 2.0, (6, 16)).astype(np.float32)
    for lib in (ln_jax, nn):
      module = lib.LayerNorm(axis_name='d', use_scale=False, use_bias=False,
                             use_fast_variance=False, epsilon=1e-6)
      y = jax.shard_map(lambda x: module.apply({}, x), mesh=mesh, in_specs=P(None, 'd'),
                        out_specs=P(None, 'd'))(x)
      close(y, (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6))
    module = ln_jax.RMSNorm(axis_name='d', use_scale=False, epsilon=1e-6)
    y = jax.shard_map(lambda x: module.apply({}, x), mesh=mesh, in_specs=P(None, 'd'),
                      out_specs=P(None, 'd'))(x)
    close(y, x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6))
    print('ok')
''')


def test_cross_device_arguments_match_flax():
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': REPO_ROOT}
  result = subprocess.run([sys.executable, '-c', _SHARDED], env=env, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip().endswith('ok')
