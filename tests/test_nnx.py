"""ln_jax.nnx: flax.nnx's variables and outputs under flax's settings, the Linen twins' outputs,
gradients and batch-statistics updates, state round trips with flax.nnx (in memory and through an
orbax checkpoint), train()/eval(), and clear errors for bad arguments."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ln_jax.layers as linen_layers
import ln_jax.nnx as lnx
from ln_jax.layers.batch_renorm import RenormSchedule

KEY = jax.random.PRNGKey(0)


def _pure(model, kind=nnx.Variable):
  return nnx.to_pure_dict(nnx.state(model, kind))


def _signature(tree):
  return jax.tree_util.tree_map(lambda v: (v.shape, jnp.dtype(v.dtype)), tree)


def _perturbed(tree, seed=0):
  """Every float entry moved off its initial value (int counters kept), so a mix-up shows."""
  rng = np.random.default_rng(seed)

  def move(v):
    if not jnp.issubdtype(v.dtype, jnp.floating):
      return v
    return jnp.asarray(np.asarray(v, np.float32) + rng.uniform(0.5, 1.5, v.shape), v.dtype)
  return jax.tree_util.tree_map(move, tree)


def _load(model, pure):
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)


def _close(a, b, atol=1e-5):
  np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32),
                             atol=atol, rtol=atol)


# (a) flax.nnx's layers, with flax's settings.

FLAX_CASES = [
    ('LayerNorm', (4, 6), 6, {}),
    ('LayerNorm', (2, 3, 5), 5, {'reduction_axes': (1, 2)}),
    ('LayerNorm', (4, 6), 6, {'use_bias': False, 'param_dtype': jnp.bfloat16}),
    ('RMSNorm', (4, 6), 6, {}),
    ('RMSNorm', (2, 3, 5), 5, {'scale_init': nnx.initializers.constant(2.0)}),
    ('GroupNorm', (4, 6), 6, {'num_groups': 3}),
    ('GroupNorm', (4, 6), 6, {'num_groups': None, 'group_size': 2, 'use_scale': False}),
    ('BatchNorm', (16, 5), 5, {'momentum': 0.8}),
    ('BatchNorm', (4, 3, 3, 2), 2, {'momentum': 0.8}),
    ('BatchNorm', (8, 3, 4), 3, {'axis': 1, 'use_bias': False}),
]


@pytest.mark.parametrize('name,shape,features,kwargs', FLAX_CASES)
def test_matches_flax_nnx(name, shape, features, kwargs):
  defaults = {'use_fast_variance': True}
  if name != 'BatchNorm':
    defaults['epsilon'] = 1e-6  # flax.nnx's default
  ours = getattr(lnx, name)(features, **defaults, **kwargs, rngs=nnx.Rngs(0))
  theirs = getattr(nnx, name)(features, **kwargs, rngs=nnx.Rngs(0))
  for kind in (nnx.Param, nnx.BatchStat):
    assert _signature(_pure(ours, kind)) == _signature(_pure(theirs, kind))
    jax.tree_util.tree_map(np.testing.assert_array_equal, _pure(ours, kind), _pure(theirs, kind))
  variables = _perturbed(_pure(theirs))
  _load(ours, variables)
  _load(theirs, variables)
  rng = np.random.default_rng(1)
  for _ in range(2):  # BatchNorm: training steps update the running averages alike
    x = rng.normal(2.0, 3.0, shape).astype(np.float32)
    y_ours, y_theirs = ours(x), theirs(x)
    assert y_ours.dtype == y_theirs.dtype
    _close(y_ours, y_theirs)
    jax.tree_util.tree_map(_close, _pure(ours), _pure(theirs))
  if name == 'BatchNorm':
    ours.eval()
    theirs.eval()
    _close(ours(x), theirs(x))


def test_masks_match_flax_nnx():
  rng = np.random.default_rng(2)
  x = rng.normal(2.0, 3.0, (3, 4, 6)).astype(np.float32)
  mask = rng.uniform(size=(3, 4, 6)) < 0.6
  mask[..., 0] = True
  for name in ('LayerNorm', 'RMSNorm'):
    ours = getattr(lnx, name)(6, epsilon=1e-6, use_fast_variance=True, rngs=nnx.Rngs(0))
    theirs = getattr(nnx, name)(6, rngs=nnx.Rngs(0))
    _close(ours(x, mask=mask), theirs(x, mask=mask))
  ours = lnx.BatchNorm(6, use_fast_variance=True, rngs=nnx.Rngs(0))
  theirs = nnx.BatchNorm(6, rngs=nnx.Rngs(0))
  _close(ours(x, mask=mask), theirs(x, mask=mask))
  jax.tree_util.tree_map(_close, _pure(ours), _pure(theirs))


# (b) The Linen twins in ln_jax: outputs, gradients, batch-statistics updates.

SCHEDULE = RenormSchedule(r_max=1.5, d_max=0.5, start_step=0, r_max_step=2, d_max_step=2)
TWIN_CASES = [
    ('LayerNorm', (4, 6), 6, {}, {}, None),
    ('LayerNorm', (2, 3, 5), 15, {'reduction_axes': (1, 2), 'feature_axes': (1, 2)}, {}, None),
    ('LayerNorm', (3, 4, 6), 6, {'use_fast_variance': True}, {}, (3, 4, 6)),
    ('RMSNorm', (4, 6), 6, {'use_bias': True}, {}, (4, 1)),
    ('GroupNorm', (4, 6), 6, {'num_groups': 2}, {}, None),
    ('GroupNorm', (2, 3, 3, 4), 4, {'num_groups': 2, 'reduction_axes': (-3, -2)}, {},
     (2, 3, 3, 1)),
    ('BatchNorm', (8, 5), 5, {'momentum': 0.8}, {}, None),
    ('BatchNorm', (8, 5), 5, {'unbiased_variance': True, 'ghost_batches': 2}, {}, (8, 1)),
    ('BatchNorm', (8, 3, 4), 3, {'axis': 1, 'use_fast_variance': True}, {}, (8, 3, 4)),
    ('BatchNorm', (8, 5), 5, {}, {'use_running_average': True}, None),
    ('BatchRenorm', (8, 5), 5, {'schedule': SCHEDULE, 'momentum': 0.7}, {}, (8,)),
    ('BatchRenorm', (4, 2, 5), 5, {'schedule': SCHEDULE}, {'use_running_average': True}, None),
]


def _linen_call(name, call):
  """Linen's batch layers take `use_running_average` at the call (NNX's default: False)."""
  if name in ('BatchNorm', 'BatchRenorm'):
    return {'use_running_average': False, **call}
  return call


def _linen_run(module, variables, x, weights, call):
  def loss(params, x):
    y, updates = module.apply({**variables, 'params': params}, x, mutable=['batch_stats'],
                              **call)
    return jnp.sum(y * weights), (y, updates)
  (_, (y, updates)), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
      variables['params'], x)
  return y, grads, updates.get('batch_stats', {})


def _nnx_run(model, x, weights, call):
  def loss(model, x):
    y = model(x, **call)
    return jnp.sum(y * weights), y
  (_, y), (model_grads, x_grad) = nnx.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      model, x)
  return y, (nnx.to_pure_dict(model_grads), x_grad), _pure(model, nnx.BatchStat)


def _assert_same_tree(nnx_tree, linen_tree):
  assert set(nnx_tree) == set(linen_tree)
  for key, value in nnx_tree.items():
    _close(value, np.reshape(linen_tree[key], np.shape(value)))


@pytest.mark.parametrize('name,shape,features,kwargs,call,mask_shape', TWIN_CASES)
def test_matches_linen_twin(name, shape, features, kwargs, call, mask_shape):
  rng = np.random.default_rng(3)
  x = rng.normal(1.0, 2.0, shape).astype(np.float32)
  weights = rng.normal(size=shape).astype(np.float32)
  if mask_shape is not None:
    mask = rng.uniform(size=mask_shape) < 0.7
    mask.flat[0] = True
    call = {**call, 'mask': mask}
  module = getattr(linen_layers, name)(**kwargs)
  linen_call = _linen_call(name, call)
  variables = _perturbed(module.init(KEY, x, **linen_call))
  if name == 'BatchRenorm':
    variables['batch_stats']['step'] = jnp.asarray(1, jnp.int32)
  model = getattr(lnx, name)(features, **kwargs, rngs=nnx.Rngs(0))
  _load(model, jax.tree_util.tree_map(
      lambda v, ref: jnp.reshape(v, ref.shape),
      {**variables['params'], **variables.get('batch_stats', {})}, _pure(model)))
  y_linen, (param_grads, x_grad), stats = _linen_run(module, variables, x, weights, linen_call)
  y_nnx, (model_grads, x_grad_nnx), stats_nnx = _nnx_run(model, x, weights, call)
  assert y_nnx.dtype == y_linen.dtype
  _close(y_nnx, y_linen)
  _close(x_grad_nnx, x_grad, atol=1e-4)
  _assert_same_tree(model_grads, param_grads)
  _assert_same_tree(stats_nnx, stats if stats else variables.get('batch_stats', {}))


@pytest.mark.parametrize('fuse', [True, False])
def test_weight_norm_linear_matches_linen(fuse):
  rng = np.random.default_rng(4)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  weights = rng.normal(size=(4, 3)).astype(np.float32)
  module = linen_layers.WeightNormDense(3, fuse_weight_grad=fuse)
  model = lnx.WeightNormLinear(6, 3, fuse_weight_grad=fuse, rngs=nnx.Rngs(0))
  # Initial scale = the column norms of the kernel: the layer starts with the drawn weights.
  _close(model.scale[...], jnp.linalg.norm(model.kernel[...], axis=0))
  variables = _perturbed(module.init(KEY, x))
  _load(model, variables['params'])
  y_linen, (param_grads, x_grad), _ = _linen_run(module, variables, x, weights, {})
  y_nnx, (model_grads, x_grad_nnx), _ = _nnx_run(model, x, weights, {})
  _close(y_nnx, y_linen)
  _close(x_grad_nnx, x_grad, atol=1e-4)
  _assert_same_tree(model_grads, param_grads)


# (c) A flax.nnx model's state loads into the same model built with ours, and back.

class _Model(nnx.Module):

  def __init__(self, norm, *, rngs):
    self.linear = nnx.Linear(4, 6, rngs=rngs)
    self.norm = norm(6, rngs=rngs)

  def __call__(self, x):
    return self.norm(self.linear(x))


@pytest.mark.parametrize('name', ['LayerNorm', 'RMSNorm', 'BatchNorm'])
def test_flax_nnx_state_round_trip(name):
  eps = {} if name == 'BatchNorm' else {'epsilon': 1e-6}
  ours_norm = lambda n, rngs: getattr(lnx, name)(n, use_fast_variance=True, **eps, rngs=rngs)
  theirs = _Model(getattr(nnx, name), rngs=nnx.Rngs(0))
  ours = _Model(ours_norm, rngs=nnx.Rngs(1))
  _load(theirs, _perturbed(_pure(theirs)))
  nnx.update(ours, nnx.state(theirs))
  jax.tree_util.tree_map(np.testing.assert_array_equal, _pure(ours), _pure(theirs))
  x = np.random.default_rng(5).normal(size=(5, 4)).astype(np.float32)
  _close(ours(x), theirs(x))
  back = _Model(getattr(nnx, name), rngs=nnx.Rngs(2))
  nnx.update(back, nnx.state(ours))
  jax.tree_util.tree_map(np.testing.assert_array_equal, _pure(back), _pure(ours))


class _LayerAndBatchNorm(nnx.Module):

  def __init__(self, layer_norm, batch_norm, *, rngs):
    self.linear = nnx.Linear(4, 6, rngs=rngs)
    self.layer_norm = layer_norm(6, rngs=rngs)
    self.batch_norm = batch_norm(6, rngs=rngs)

  def __call__(self, x):
    return self.batch_norm(nnx.relu(self.layer_norm(self.linear(x))))


def test_flax_nnx_checkpoint_restores_into_ours(tmp_path):
  """An orbax checkpoint (ln_jax.training.checkpoint) of a model built with flax.nnx's
  LayerNorm and BatchNorm restores into the same model built with ours: same outputs."""
  from ln_jax.training import checkpoint
  ours_norms = (
      lambda n, rngs: lnx.LayerNorm(n, epsilon=1e-6, use_fast_variance=True, rngs=rngs),
      lambda n, rngs: lnx.BatchNorm(n, use_fast_variance=True, rngs=rngs))
  theirs = _LayerAndBatchNorm(nnx.LayerNorm, nnx.BatchNorm, rngs=nnx.Rngs(0))
  _load(theirs, _perturbed(_pure(theirs)))
  x = np.random.default_rng(7).normal(1.0, 2.0, size=(8, 4)).astype(np.float32)
  theirs(x)  # a training step: the running averages move
  mngr = checkpoint.manager(str(tmp_path), keep=1)
  checkpoint.save(mngr, 1, nnx.state(theirs))
  abstract = nnx.eval_shape(lambda: _LayerAndBatchNorm(*ours_norms, rngs=nnx.Rngs(1)))
  restored = checkpoint.restore(mngr, 1, nnx.state(abstract))
  ours = _LayerAndBatchNorm(*ours_norms, rngs=nnx.Rngs(1))
  nnx.update(ours, restored)
  jax.tree_util.tree_map(np.testing.assert_array_equal, _pure(ours), _pure(theirs))
  for model in (ours, theirs):
    model.eval()
  _close(ours(x), theirs(x))


# (d) train() / eval() / nnx.view switch between batch statistics and running averages.

class _Batch(nnx.Module):

  def __init__(self, *, rngs):
    self.bn = lnx.BatchNorm(3, use_running_average=True, rngs=rngs)
    self.renorm = lnx.BatchRenorm(3, rngs=rngs)

  def __call__(self, x):
    return self.bn(x), self.renorm(x)


def test_train_eval_switch_statistics():
  x = np.random.default_rng(6).normal(4.0, 2.0, (16, 3)).astype(np.float32)
  model = _Batch(rngs=nnx.Rngs(0))
  assert model.bn.use_running_average and not model.renorm.use_running_average
  model.eval()
  assert model.bn.use_running_average and model.renorm.use_running_average
  before = _pure(model, nnx.BatchStat)
  y_bn, y_renorm = model(x)  # running averages at their start: mean 0, var/std 1
  _close(y_bn, x / np.sqrt(1.0 + 1e-5))
  _close(y_renorm, x)
  jax.tree_util.tree_map(np.testing.assert_array_equal, _pure(model, nnx.BatchStat), before)
  model.train()
  for y in model(x):  # batch statistics: each feature centered
    _close(np.mean(y, 0), np.zeros(3), atol=1e-5)
  stats = _pure(model, nnx.BatchStat)
  assert not np.allclose(stats['bn']['mean'], 0.0)
  assert int(stats['renorm']['step']) == 1


@pytest.mark.skipif(not hasattr(nnx, 'view'), reason='nnx.view needs flax >= 0.12.4')
def test_nnx_view_evaluates_with_the_running_averages():
  """nnx.view gives an evaluation view sharing the variables; the call argument wins."""
  x = np.random.default_rng(6).normal(4.0, 2.0, (16, 3)).astype(np.float32)
  model = _Batch(rngs=nnx.Rngs(0))
  model.train()
  model(x)  # the running averages move off their start
  evaluation = nnx.view(model, use_running_average=True)
  _close(evaluation.bn(x), model.bn(x, use_running_average=True))
  _close(evaluation.renorm(x), model.renorm(x, use_running_average=True))
  assert not model.bn.use_running_average


# (e) Bad arguments raise errors that name them.

@pytest.mark.parametrize('make', [
    lambda: lnx.LayerNorm(5, rngs=nnx.Rngs(0)),
    lambda: lnx.RMSNorm(5, rngs=nnx.Rngs(0)),
    lambda: lnx.GroupNorm(4, num_groups=2, rngs=nnx.Rngs(0)),
    lambda: lnx.BatchNorm(5, rngs=nnx.Rngs(0)),
    lambda: lnx.BatchRenorm(5, rngs=nnx.Rngs(0)),
])
def test_wrong_num_features(make):
  with pytest.raises(ValueError, match='num_features'):
    make()(jnp.ones((4, 6)))


@pytest.mark.parametrize('make,mask_shape', [
    (lambda: lnx.LayerNorm(6, rngs=nnx.Rngs(0)), (4,)),
    (lambda: lnx.RMSNorm(6, rngs=nnx.Rngs(0)), (3, 6)),
    (lambda: lnx.GroupNorm(6, num_groups=2, rngs=nnx.Rngs(0)), (4, 6, 1)),
    (lambda: lnx.BatchNorm(6, rngs=nnx.Rngs(0)), (4, 5)),
    (lambda: lnx.BatchRenorm(6, rngs=nnx.Rngs(0)), (3,)),
])
def test_mask_that_does_not_broadcast(make, mask_shape):
  with pytest.raises(ValueError, match='mask'):
    make()(jnp.ones((4, 6)), mask=jnp.ones(mask_shape, bool))


@pytest.mark.parametrize('cls', [lnx.BatchNorm, lnx.BatchRenorm])
def test_use_running_average_unset(cls):
  layer = cls(6, use_running_average=None, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='use_running_average'):
    layer(jnp.ones((4, 6)))
  assert layer(jnp.ones((4, 6)), use_running_average=True).shape == (4, 6)


def test_group_norm_bad_groups():
  with pytest.raises(ValueError, match='num_groups'):
    lnx.GroupNorm(6, num_groups=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='group_size'):
    lnx.GroupNorm(6, num_groups=None, group_size=4, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='ghost'):
    lnx.BatchNorm(6, ghost_batches=4, rngs=nnx.Rngs(0))(jnp.ones((6, 6)))


# (f) The examples of docs/nnx.md run.

def test_the_examples_of_the_nnx_docs_run():
  text = (pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'nnx.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  assert len(blocks) >= 5
  namespace = {}
  for block in blocks:  # in order, in one namespace, as a reader would paste them
    exec(compile(block, 'docs/nnx.md', 'exec'), namespace)  # pylint: disable=exec-used
