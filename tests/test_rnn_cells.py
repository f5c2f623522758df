"""The steppable cells (`rnn_cells`): against the NumPy equations, against `RecurrentLayer` under
nn.RNN and nn.Bidirectional, in hand-written step loops, and recurrent BN's running averages."""

from __future__ import annotations

import functools

import flax.linen as nn
from flax.linen.recurrent import flip_sequences
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ln_jax
from ln_jax.layers import batch_renorm
from ln_jax.layers import cells
from ln_jax.layers import rnn_cells
import numpy_rnn_reference as ref

HIDDEN, INPUTS, BATCH, STEPS, MAX_STEPS = 4, 3, 4, 6, 4
CELL_CLASSES = {'lstm': ln_jax.LSTMCell, 'gru': ln_jax.GRUCell, 'rnn': ln_jax.SimpleRNNCell}
LENGTHS = np.array([6, 3, 6, 1])
# Renorm's clipping opens between the counter's initial value (3) and the next: a cell that read
# the counter of the next training step would normalize differently.
RENORM = batch_renorm.RenormSchedule(start_step=3, r_max_step=5, d_max_step=5)
TOLERANCE = dict(atol=2e-5, rtol=1e-4)


def _spec(kind, **options):
  options.setdefault('groups', 2)
  if kind in rnn_cells.BATCH_NORMS:
    options.setdefault('max_steps', MAX_STEPS)
  return cells.NormSpec(kind=kind, momentum=0.9, renorm=RENORM, **options)


def _cell(cell, kind, train=False, **options):
  return CELL_CLASSES[cell](HIDDEN, norm=_spec(kind, **options), train=train)


def _rnn(cell, kind, train=False, **options):
  return nn.RNN(_cell(cell, kind, train, **options), **ln_jax.rnn_options(train))


def _inputs(steps=STEPS, seed=0):
  return np.random.default_rng(seed).normal(size=(BATCH, steps, INPUTS)).astype(np.float32)


def _layer_and_variables(cell, kind, x, seed=1, **options):
  """The layer and random values of all its variables (gains of 1, biases of 0 or running
  averages of mean 0, var 1 would hide mistakes); the renorm counter at 3."""
  layer = cells.RecurrentLayer(cell, HIDDEN, _spec(kind, **options))
  shapes = jax.eval_shape(layer.init, jax.random.PRNGKey(0), x)
  rng = np.random.default_rng(seed)

  def value(path, v):
    name = path[-1].key
    if name == 'step':
      return np.array(3, np.int32)
    if name in ('var', 'std'):
      return rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
    return ((name == 'scale') + 0.5 * rng.normal(size=v.shape)).astype(np.float32)
  return layer, jax.tree_util.tree_map_with_path(value, shapes)


def _in_cell(variables):
  """A layer's variables as those of nn.RNN over a cell (the cell is its submodule 'cell')."""
  return {collection: {'cell': tree} for collection, tree in variables.items()}


def _out_of_cell(variables):
  return {collection: tree['cell'] for collection, tree in variables.items()}


def _state(carry, kind):
  return carry[0] if kind in rnn_cells.BATCH_NORMS else carry


def _assert_trees_close(got, want, **tolerance):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, **(tolerance or TOLERANCE))


@pytest.mark.parametrize('cell, kind', [
    (cell, kind) for cell in cells.CELLS for kind in ('none', 'layer', 'batch')] + [
    ('lstm', 'layer_c')])
def test_cell_under_rnn_matches_numpy_reference(cell, kind):
  x = _inputs()
  _, variables = _layer_and_variables(cell, kind, x)
  train = kind == 'batch'
  apply = jax.jit(functools.partial(_rnn(cell, kind, train).apply, return_carry=True,
                                    mutable=['batch_stats']))
  (carry, out), updates = apply(_in_cell(variables), x)

  params = variables['params']
  normalizer = (ref.cell_state_layer_norm(params, eps=1e-5) if kind == 'layer_c'
                else ref.Normalizer(kind, params, eps=1e-5))
  want_out, want_h, want_c = ref.run(cell, normalizer, params, x)
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  state = _state(carry, kind)
  if cell == 'lstm':
    np.testing.assert_allclose(state[0], want_h, atol=1e-5)
    np.testing.assert_allclose(state[1], want_c, atol=1e-5)
  else:
    np.testing.assert_allclose(state, want_h, atol=1e-5)
  if kind == 'batch':
    np.testing.assert_array_equal(carry[1], np.full(BATCH, STEPS))
    # One momentum step per time step below T_max; the steps past it fold into no row.
    got = updates['batch_stats']['cell']
    assert set(normalizer.batch_stats) == set(got)
    for name, per_step in normalizer.batch_stats.items():
      mean, var = (np.stack(v)[:MAX_STEPS] for v in zip(*per_step))
      init = variables['batch_stats'][name]
      np.testing.assert_allclose(got[name]['mean'], 0.9 * init['mean'] + 0.1 * mean, atol=1e-5)
      np.testing.assert_allclose(got[name]['var'], 0.9 * init['var'] + 0.1 * var, atol=1e-5)


def test_layer_with_cell_state_norm_matches_numpy_reference_with_padding():
  x, mask = _inputs(), np.arange(STEPS)[None, :] < LENGTHS[:, None]
  layer, variables = _layer_and_variables('lstm', 'layer_c', x)
  assert set(variables['params']) == {'kernel_x', 'kernel_h', 'bias', 'norm_c'}
  out, (h, c) = jax.jit(layer.apply)(variables, np.where(mask[..., None], x, 99.0), mask)
  normalizer = ref.cell_state_layer_norm(variables['params'], eps=1e-5)
  want_out, want_h, want_c = ref.run('lstm', normalizer, variables['params'], x, LENGTHS)
  for got, want in ((out, want_out), (h, want_h), (c, want_c)):
    np.testing.assert_allclose(got, want, atol=1e-5)


EQUIVALENCE_CASES = [(cell, kind) for cell in cells.CELLS
                     for kind in ('none', 'layer', 'group', 'batch', 'batch_renorm')]
# Gradients too: the fused LSTM kernel's (BN without padding), padding, and each kind of norm.
GRADIENT_CASES = {('lstm', 'layer'), ('lstm', 'batch'), ('gru', 'batch_renorm'), ('rnn', 'group'),
                  ('lstm', 'layer_c')}


@pytest.mark.parametrize('cell, kind', EQUIVALENCE_CASES + [('lstm', 'layer_c')])
def test_rnn_over_cell_equals_recurrent_layer_in_outputs_and_gradients(cell, kind):
  """Same parameters, same outputs, final state, running averages (and gradients); sequences of
  different lengths (nn.RNN's seq_lengths) where the normalization is per example (nn.RNN runs
  padded steps as real ones, which BN's batch statistics would see)."""
  batch_norm = kind in rnn_cells.BATCH_NORMS
  x = _inputs()
  lengths = np.full(BATCH, STEPS) if batch_norm else LENGTHS
  mask = np.arange(STEPS)[None, :] < lengths[:, None]
  x = np.where(mask[..., None], x, 5.0)
  layer, variables = _layer_and_variables(cell, kind, x)
  shapes = jax.eval_shape(_rnn(cell, kind).init, jax.random.PRNGKey(0), x)
  assert jax.tree.structure(shapes) == jax.tree.structure(_in_cell(variables))
  rnn = _rnn(cell, kind, train=True)
  rng = np.random.default_rng(2)
  weights_out = rng.normal(size=(BATCH, STEPS, HIDDEN)) * mask[..., None]
  weights_h = rng.normal(size=(BATCH, HIDDEN))

  def loss(out, final):
    h = final[0] if cell == 'lstm' else final
    return jnp.sum(out * weights_out) + jnp.sum(h * weights_h), (out * mask[..., None], final)

  def layer_loss(params):
    (out, final), updates = layer.apply({**variables, 'params': params}, x,
                                        None if batch_norm else mask, train=True,
                                        mutable=['batch_stats'])
    value, aux = loss(out, final)
    return value, (aux, updates)

  def rnn_loss(params):
    (carry, out), updates = rnn.apply({**_in_cell(variables), 'params': {'cell': params}}, x,
                                      seq_lengths=lengths, return_carry=True,
                                      mutable=['batch_stats'])
    value, aux = loss(out, _state(carry, kind))
    return value, (aux, _out_of_cell(updates))

  params = variables['params']
  if (cell, kind) in GRADIENT_CASES:
    grads = lambda f: jax.grad(f, has_aux=True)(params)
    (want_grads, want), (got_grads, got) = jax.jit(lambda: (grads(layer_loss),
                                                            grads(rnn_loss)))()
    _assert_trees_close(got_grads, want_grads)
  else:  # the forward pass only (compiling a gradient takes seconds)
    (_, want), (_, got) = jax.jit(lambda: (layer_loss(params), rnn_loss(params)))()
  _assert_trees_close(got, want)
  if batch_norm:  # the running averages moved
    norm_name = sorted(variables['batch_stats'])[0]
    assert not np.allclose(got[1]['batch_stats'][norm_name]['mean'],
                           variables['batch_stats'][norm_name]['mean'])


def test_bidirectional_equals_the_layer_over_each_direction():
  x, mask = _inputs(), np.arange(STEPS)[None, :] < LENGTHS[:, None]
  x = np.where(mask[..., None], x, 5.0)
  layer, forward = _layer_and_variables('lstm', 'layer', x, seed=3)
  _, backward = _layer_and_variables('lstm', 'layer', x, seed=4)
  bidirectional = nn.Bidirectional(_rnn('lstm', 'layer'), _rnn('lstm', 'layer'))
  params = {'forward_rnn': {'cell': forward['params']},
            'backward_rnn': {'cell': backward['params']}}
  assert jax.tree.structure(jax.eval_shape(bidirectional.init, jax.random.PRNGKey(0), x)) == (
      jax.tree.structure({'params': params}))
  out = jax.jit(bidirectional.apply)({'params': params}, x, seq_lengths=LENGTHS)

  apply = jax.jit(layer.apply)
  flip = lambda a: flip_sequences(a, LENGTHS, num_batch_dims=1, time_major=False)
  want_forward, _ = apply(forward, x, mask)
  want_backward, _ = apply(backward, flip(x), mask)  # each sequence reversed, padding kept last
  want = np.concatenate([want_forward, flip(want_backward)], -1)
  np.testing.assert_allclose(out * mask[..., None], want, atol=1e-5)


def _step_loop(cell, variables, x, mask=None):
  """A hand-written loop over the steps, threading the running averages from step to step."""
  carry = cell.initialize_carry(jax.random.PRNGKey(0), x[:, 0].shape)
  batch_stats, outputs = variables.get('batch_stats', {}), []
  for t in range(x.shape[1]):
    (carry, h), updates = cell.apply({'params': variables['params'], 'batch_stats': batch_stats},
                                     carry, x[:, t], None if mask is None else mask[:, t],
                                     mutable=['batch_stats'])
    batch_stats = updates.get('batch_stats', batch_stats)
    outputs.append(h)
  return jnp.stack(outputs, 1), carry, batch_stats


@pytest.mark.parametrize('cell, kind, train', [
    ('lstm', 'batch', True), ('gru', 'batch_renorm', True), ('rnn', 'layer', False)])
def test_jitted_step_loop_equals_rnn(cell, kind, train):
  x = _inputs()
  _, variables = _layer_and_variables(cell, kind, x)
  out, carry, batch_stats = jax.jit(functools.partial(_step_loop, _cell(cell, kind, train)))(
      variables, x)
  (want_carry, want_out), updates = jax.jit(functools.partial(
      _rnn(cell, kind, train).apply, return_carry=True, mutable=['batch_stats']))(
          _in_cell(variables), x)
  _assert_trees_close((out, carry), (want_out, want_carry), atol=1e-6)
  if kind in rnn_cells.BATCH_NORMS:
    _assert_trees_close(batch_stats, updates['batch_stats']['cell'], atol=1e-6)


def test_masked_step_loop_leaves_padding_out_of_batch_norm_like_the_layer():
  x, mask = _inputs(), np.arange(STEPS)[None, :] < LENGTHS[:, None]
  x = np.where(mask[..., None], x, 5.0)
  layer, variables = _layer_and_variables('lstm', 'batch', x)
  out, carry, batch_stats = jax.jit(functools.partial(
      _step_loop, _cell('lstm', 'batch', train=True)))(variables, x, mask)
  (want_out, want_final), updates = jax.jit(functools.partial(
      layer.apply, train=True, mutable=['batch_stats']))(variables, x, mask)
  _assert_trees_close((out, carry[0], batch_stats),
                      (want_out, want_final, updates['batch_stats']))
  np.testing.assert_array_equal(carry[1], np.full(BATCH, STEPS))


def test_batch_norm_cell_evaluates_with_its_per_step_running_averages(cell='lstm'):
  """Train once (the running averages move), then evaluate a sequence longer than T_max: step t
  uses row min(t, T_max - 1), per example."""
  x = _inputs()
  _, variables = _layer_and_variables(cell, 'batch', x)
  _, updates = jax.jit(functools.partial(_rnn(cell, 'batch', train=True).apply,
                                         mutable=['batch_stats']))(_in_cell(variables), x)
  running = updates['batch_stats']['cell']
  trained = {'params': variables['params'], 'batch_stats': running}
  long_x = _inputs(steps=MAX_STEPS + 3, seed=5)
  evaluate = jax.jit(_rnn(cell, 'batch').apply)
  out = evaluate(_in_cell(trained), long_x)

  by_name = {name: (s['mean'], s['var']) for name, s in running.items()}
  normalizer = ref.Normalizer('batch', trained['params'], eps=1e-5, running=by_name,
                              max_steps=MAX_STEPS)
  want, _, _ = ref.run(cell, normalizer, trained['params'], long_x)
  np.testing.assert_allclose(out, want, atol=1e-5)
  np.testing.assert_allclose(evaluate(_in_cell(trained), long_x[:1]), out[:1], atol=1e-6)


@pytest.mark.parametrize('cell, kind, state', [
    ('lstm', 'layer', lambda s: (s, s)), ('gru', 'none', lambda s: s),
    ('rnn', 'group', lambda s: s), ('lstm', 'batch', lambda s: ((s, s), s[..., 0])),
    ('gru', 'batch_renorm', lambda s: (s, s[..., 0]))])
def test_initialize_carry_shapes(cell, kind, state):
  module = _cell(cell, kind)
  assert isinstance(module, nn.RNNCellBase) and module.num_feature_axes == 1
  for batch_dims in ((BATCH,), (2, 3)):
    carry = module.initialize_carry(jax.random.PRNGKey(0), batch_dims + (INPUTS,))
    want = state(np.zeros(batch_dims + (HIDDEN,), np.float32))
    assert jax.tree.map(np.shape, carry) == jax.tree.map(np.shape, want)
    for got in jax.tree.leaves(carry):
      np.testing.assert_array_equal(got, 0)
    if kind in rnn_cells.BATCH_NORMS:
      assert carry[1].dtype == jnp.int32


def test_misconfigured_cells_raise():
  x, carry = np.zeros((BATCH, INPUTS), np.float32), np.zeros((BATCH, HIDDEN), np.float32)
  with pytest.raises(ValueError, match='LSTM only'):
    jax.eval_shape(_cell('gru', 'layer_c').init, jax.random.PRNGKey(0), carry, x)
  unbounded = ln_jax.LSTMCell(HIDDEN, norm=ln_jax.NormSpec(kind='batch'))
  with pytest.raises(ValueError, match='max_steps'):
    jax.eval_shape(unbounded.init, jax.random.PRNGKey(0),
                   ((carry, carry), np.zeros(BATCH, np.int32)), x)
