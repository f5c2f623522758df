"""ln_jax.nnx's recurrent cells: each against its Linen twin (same variables) in outputs, final
state, gradients and running averages under nnx.RNN / nn.RNN, in evaluation past T_max and in a
masked step loop; the carry, train()/eval()/nnx.view, and errors that name the bad argument."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ln_jax.nnx as lnx
from ln_jax.layers import rnn_cells
# The Linen cells' test: its sizes, NormSpecs (renorm's clipping opening right after the
# counter's value) and random variables serve both twins.
from test_rnn_cells import _assert_trees_close
from test_rnn_cells import _cell
from test_rnn_cells import _in_cell
from test_rnn_cells import _inputs
from test_rnn_cells import _layer_and_variables
from test_rnn_cells import _rnn as _linen_rnn
from test_rnn_cells import _spec
from test_rnn_cells import _state
from test_rnn_cells import BATCH, HIDDEN, INPUTS, LENGTHS, MAX_STEPS, STEPS

NNX = {'lstm': lnx.LSTMCell, 'gru': lnx.GRUCell, 'rnn': lnx.SimpleRNNCell}
CASES = [(cell, kind) for cell in NNX
         for kind in ('none', 'layer', 'group', 'batch', 'batch_renorm')] + [('lstm', 'layer_c')]


def _linen_variables(cell, kind, seed=1):
  """Random values for every variable of nn.RNN over the Linen cell (gains of 1 or running
  averages of 0 and 1 would hide mix-ups); the renorm counter at 3."""
  return _in_cell(_layer_and_variables(cell, kind, _inputs(), seed=seed)[1])


def _merged(variables):
  """Linen's collections as one tree: the layout of nnx.state of the same model."""
  merged = {}
  for tree in variables.values():
    for name, leaves in tree['cell'].items():
      merged.setdefault(name, {})
      if isinstance(leaves, dict):
        merged[name].update(leaves)
      else:
        merged[name] = leaves
  return {'cell': merged}


def _nnx_rnn(cell, kind, variables=None, **options):
  rnn = nnx.RNN(NNX[cell](INPUTS, HIDDEN, norm=_spec(kind), rngs=nnx.Rngs(0), **options))
  if variables is not None:
    state = nnx.state(rnn, (nnx.Param, nnx.BatchStat))
    nnx.replace_by_pure_dict(state, _merged(variables))
    nnx.update(rnn, state)
  return rnn


def _pure(module, *filters):
  return nnx.to_pure_dict(nnx.state(module, *filters))


def _objective(cell, carry, out, kind):
  """A weighted sum of every output and of the final h, so each gradient entry counts."""
  rng = np.random.default_rng(2)
  state = _state(carry, kind)
  h = state[0] if cell == 'lstm' else state
  return (jnp.sum(out * rng.normal(size=out.shape)) +
          jnp.sum(h * rng.normal(size=h.shape)))


@pytest.mark.parametrize('cell, kind', CASES)
def test_nnx_rnn_equals_linen_rnn_in_outputs_gradients_and_running_averages(cell, kind):
  """Training (batch statistics, running averages updated per step) over sequences of
  different lengths (seq_lengths: the final carry of each sequence's last real step)."""
  x = _inputs()
  variables = _linen_variables(cell, kind)
  linen = _linen_rnn(cell, kind, train=True)

  def linen_loss(params):
    (carry, out), updates = linen.apply({**variables, 'params': params}, x, seq_lengths=LENGTHS,
                                        return_carry=True, mutable=['batch_stats'])
    return _objective(cell, carry, out, kind), (carry, out, updates)

  want_grads, (want_carry, want_out, updates) = jax.jit(
      jax.grad(linen_loss, has_aux=True))(variables['params'])

  rnn = _nnx_rnn(cell, kind, variables)
  assert jax.tree.structure(_pure(rnn, (nnx.Param, nnx.BatchStat))) == jax.tree.structure(
      _merged(variables))

  @nnx.jit
  def nnx_grads(rnn, x):
    def loss(rnn):
      carry, out = rnn(x, seq_lengths=LENGTHS, return_carry=True)
      return _objective(cell, carry, out, kind), (carry, out)
    return nnx.grad(loss, has_aux=True)(rnn)

  grads, (carry, out) = nnx_grads(rnn, x)
  _assert_trees_close((carry, out), (want_carry, want_out))
  _assert_trees_close(nnx.to_pure_dict(grads), {'cell': want_grads['cell']})
  running = _pure(rnn, nnx.BatchStat)
  if kind in rnn_cells.BATCH_NORMS:
    _assert_trees_close(running, _merged({'batch_stats': updates['batch_stats']}))
    name = sorted(variables['batch_stats']['cell'])[0]
    assert not np.allclose(running['cell'][name]['mean'],
                           variables['batch_stats']['cell'][name]['mean'])
  else:
    assert running == {}


@pytest.mark.parametrize('cell, kind', [('lstm', 'batch'), ('gru', 'batch_renorm'),
                                        ('rnn', 'batch'), ('lstm', 'layer')])
def test_evaluation_past_max_steps_equals_linen(cell, kind):
  """model.eval(): the running averages of step min(t, T_max - 1), left unchanged."""
  x = _inputs(steps=MAX_STEPS + 3, seed=5)
  variables = _linen_variables(cell, kind, seed=3)
  want = jax.jit(_linen_rnn(cell, kind, train=False).apply)(variables, x)
  rnn = _nnx_rnn(cell, kind, variables)
  rnn.eval()
  before = _pure(rnn, (nnx.Param, nnx.BatchStat))
  _assert_trees_close(nnx.jit(lambda rnn, x: rnn(x))(rnn, x), want)
  jax.tree.map(np.testing.assert_array_equal, _pure(rnn, (nnx.Param, nnx.BatchStat)), before)


def test_masked_step_loop_equals_the_linen_cell():
  """A loop of one's own, with `mask` keeping padding out of BN's statistics."""
  x = _inputs()
  mask = np.arange(STEPS)[None, :] < LENGTHS[:, None]
  variables = _linen_variables('lstm', 'batch')
  linen_cell = _cell('lstm', 'batch', train=True)
  plain = {collection: tree['cell'] for collection, tree in variables.items()}

  @jax.jit
  def linen_loop(batch_stats):
    carry, outputs = linen_cell.initialize_carry(jax.random.PRNGKey(0), x[:, 0].shape), []
    for t in range(STEPS):
      (carry, h), updates = linen_cell.apply(
          {'params': plain['params'], 'batch_stats': batch_stats}, carry, x[:, t], mask[:, t],
          mutable=['batch_stats'])
      batch_stats = updates['batch_stats']
      outputs.append(h)
    return carry, jnp.stack(outputs, 1), batch_stats

  @nnx.jit
  def nnx_loop(cell):
    carry, outputs = cell.initialize_carry(x[:, 0].shape), []
    for t in range(STEPS):
      carry, h = cell(carry, x[:, t], mask=mask[:, t])
      outputs.append(h)
    return carry, jnp.stack(outputs, 1)

  want_carry, want_out, want_stats = linen_loop(plain['batch_stats'])
  cell = _nnx_rnn('lstm', 'batch', variables).cell
  carry, out = nnx_loop(cell)
  _assert_trees_close((carry, out), (want_carry, want_out))
  _assert_trees_close(_pure(cell, nnx.BatchStat),
                      _merged({'batch_stats': {'cell': want_stats}})['cell'])
  np.testing.assert_array_equal(out[~mask], 0.0)


@pytest.mark.parametrize('cell, kind, state', [
    ('lstm', 'layer', lambda s: (s, s)), ('gru', 'none', lambda s: s),
    ('rnn', 'group', lambda s: s), ('lstm', 'batch', lambda s: ((s, s), s[..., 0])),
    ('gru', 'batch_renorm', lambda s: (s, s[..., 0]))])
def test_initialize_carry_shapes(cell, kind, state):
  module = NNX[cell](INPUTS, HIDDEN, norm=_spec(kind), rngs=nnx.Rngs(0))
  assert isinstance(module, nnx.RNNCellBase) and module.num_feature_axes == 1
  for batch_dims in ((BATCH,), (2, 3)):
    carry = module.initialize_carry(batch_dims + (INPUTS,), nnx.Rngs(0))
    want = state(np.zeros(batch_dims + (HIDDEN,), np.float32))
    assert jax.tree.map(np.shape, carry) == jax.tree.map(np.shape, want)
    for got in jax.tree.leaves(carry):
      np.testing.assert_array_equal(got, 0)
  # Several batch dimensions: the same numbers as the flattened batch.
  x = np.random.default_rng(0).normal(size=(2, 3, INPUTS)).astype(np.float32)
  step = nnx.jit(lambda module, carry, x: module(carry, x)[1])
  h = step(nnx.clone(module), module.initialize_carry(x.shape), x)
  flat_h = step(nnx.clone(module), module.initialize_carry((6, INPUTS)), x.reshape(6, INPUTS))
  np.testing.assert_allclose(h.reshape(6, HIDDEN), flat_h, atol=1e-6)


def test_train_and_eval_switch_the_statistics():
  x = _inputs()
  rnn = _nnx_rnn('gru', 'batch')
  assert not rnn.cell.use_running_average
  rnn.eval()
  before = _pure(rnn, nnx.BatchStat)
  evaluated = rnn(x)
  jax.tree.map(np.testing.assert_array_equal, _pure(rnn, nnx.BatchStat), before)
  rnn.train()
  trained = rnn(x)
  assert not np.allclose(trained, evaluated)
  assert np.abs(_pure(rnn, nnx.BatchStat)['cell']['norm_x_gates']['mean']).max() > 0


@pytest.mark.skipif(not hasattr(nnx, 'view'), reason='nnx.view needs flax >= 0.12.4')
def test_nnx_view_evaluates_and_the_call_argument_wins():
  x = _inputs()
  rnn = _nnx_rnn('gru', 'batch', _linen_variables('gru', 'batch'))
  after = _pure(rnn, nnx.BatchStat)
  evaluation = nnx.clone(rnn)
  evaluation.eval()
  view = nnx.view(rnn, use_running_average=True)
  np.testing.assert_allclose(view(x), evaluation(x), atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, _pure(rnn, nnx.BatchStat), after)
  assert not rnn.cell.use_running_average
  carry = rnn.cell.initialize_carry(x[:, 0].shape)
  _, h_call = rnn.cell(carry, x[:, 0], use_running_average=True)
  _, h_view = view.cell(carry, x[:, 0])
  np.testing.assert_allclose(h_call, h_view, atol=1e-6)


def test_bidirectional_runs_both_directions():
  x = _inputs()
  make = lambda seed: lnx.LSTMCell(INPUTS, HIDDEN, norm='layer', rngs=nnx.Rngs(seed))
  forward, backward = nnx.RNN(make(0)), nnx.RNN(make(1))
  out, want = nnx.jit(lambda f, b: (nnx.Bidirectional(f, b)(x, seq_lengths=LENGTHS), f(x)))(
      forward, backward)
  assert out.shape == (BATCH, STEPS, 2 * HIDDEN)
  np.testing.assert_allclose(out[..., :HIDDEN], want, atol=1e-6)


# Bad arguments raise errors that name them.

@pytest.mark.parametrize('make, match', [
    (lambda: lnx.LSTMCell(INPUTS, HIDDEN, norm='batch', rngs=nnx.Rngs(0)), 'max_steps'),
    (lambda: lnx.GRUCell(INPUTS, HIDDEN, norm='layer_c', rngs=nnx.Rngs(0)), 'LSTM only'),
    (lambda: lnx.SimpleRNNCell(INPUTS, HIDDEN, norm='lyer', rngs=nnx.Rngs(0)), "norm 'lyer'"),
    (lambda: lnx.LSTMCell(INPUTS, HIDDEN, norm='layer', use_running_average=True,
                          rngs=nnx.Rngs(0)), 'use_running_average=True'),
])
def test_bad_constructor_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_call_arguments():
  x = np.zeros((BATCH, INPUTS), np.float32)
  cell = lnx.GRUCell(INPUTS, HIDDEN, norm=_spec('group'), rngs=nnx.Rngs(0))
  carry = cell.initialize_carry(x.shape)
  with pytest.raises(ValueError, match='in_features=3'):
    cell(carry, np.zeros((BATCH, INPUTS + 1), np.float32))
  with pytest.raises(ValueError, match='mask'):
    cell(carry, x, mask=np.ones((BATCH, 1)))
  with pytest.raises(ValueError, match="use_running_average=True, but norm 'group'"):
    cell(carry, x, use_running_average=True)
  bn = lnx.LSTMCell(INPUTS, HIDDEN, norm=_spec('batch'), use_running_average=None,
                    rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='use_running_average'):
    bn(bn.initialize_carry(x.shape), x)
  assert bn(bn.initialize_carry(x.shape), x, use_running_average=True)[1].shape == (
      BATCH, HIDDEN)
