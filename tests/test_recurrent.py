"""Recurrent cells against a NumPy version of the paper's equations, and their properties."""

from __future__ import annotations

import functools
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import classification_task
from conftest import load_config
from ln_jax.training import config_checks
from ln_jax.layers import cells
from ln_jax import data
from ln_jax.models import recurrent
from ln_jax.training import rundir
from ln_jax.training import train
from ln_jax.errors import UserError
import numpy_rnn_reference as ref

HIDDEN, INPUTS = 5, 3


def _layer(cell, kind, **spec):
  return cells.RecurrentLayer(cell=cell, hidden_size=HIDDEN,
                              norm=cells.NormSpec(kind=kind, **spec))


def _variables(module, *args, seed=1):
  """Random values for every parameter (gains of 1 and biases of 0 would hide mistakes) and BN's
  initial running averages (mean 0, var 1), without running the model to initialize it."""
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)
  params = flax.traverse_util.flatten_dict(shapes['params'])
  params = {path: (path[-1] == 'scale') + 0.5 * rng.normal(size=v.shape).astype(np.float32)
            for path, v in params.items()}
  variables = {'params': flax.traverse_util.unflatten_dict(params)}
  if 'batch_stats' in shapes:
    variables['batch_stats'] = jax.tree_util.tree_map_with_path(
        lambda path, v: np.full(v.shape, float(path[-1].key == 'var'), np.float32),
        shapes['batch_stats'])
  return variables


def _apply(module, train=False):
  """The module's apply, compiled once (one compilation instead of one per operation)."""
  if train:
    return jax.jit(functools.partial(module.apply, train=True, mutable=['batch_stats']))
  return jax.jit(module.apply)


def _inputs(batch=4, steps=6, seed=0):
  return np.random.default_rng(seed).normal(size=(batch, steps, INPUTS)).astype(np.float32)


@pytest.mark.parametrize('kind', ['none', 'layer', 'batch'])  # the others: test_small_batch_norms
@pytest.mark.parametrize('cell', cells.CELLS)
def test_layer_matches_numpy_reference_with_padded_variable_lengths(cell, kind):
  x, lengths = _inputs(), np.array([6, 3, 6, 1])
  mask = np.arange(6)[None, :] < lengths[:, None]
  x_padded = np.where(mask[..., None], x, 99.0)  # padding must not reach the real steps
  layer = _layer(cell, kind, momentum=0.9)
  variables = _variables(layer, x)
  (out, final), updates = _apply(layer, train=True)(variables, x_padded, mask)

  params = variables['params']
  normalizer = ref.Normalizer(kind, params, eps=1e-5)
  want_out, want_h, want_c = ref.run(cell, normalizer, params, x, lengths)
  np.testing.assert_allclose(out, want_out, atol=1e-5)
  h = final[0] if cell == 'lstm' else final
  np.testing.assert_allclose(h, want_h, atol=1e-5)
  if cell == 'lstm':
    np.testing.assert_allclose(final[1], want_c, atol=1e-5)
  if kind == 'batch':  # running averages: one momentum step per time step, from mean 0, var 1
    assert set(normalizer.batch_stats) == set(updates['batch_stats'])
    for name, per_step in normalizer.batch_stats.items():
      mean, var = (np.stack(v) for v in zip(*per_step))
      got = updates['batch_stats'][name]
      np.testing.assert_allclose(got['mean'], 0.1 * mean, atol=1e-5)
      np.testing.assert_allclose(got['var'], 0.9 + 0.1 * var, atol=1e-5)


@pytest.mark.parametrize('cell', ['lstm', 'gru'])
def test_batch_norm_evaluation_uses_per_step_statistics_and_reuses_the_last(cell):
  max_steps, x = 3, _inputs(steps=7)
  layer = _layer(cell, 'batch', max_steps=max_steps)
  variables = _variables(layer, x, seed=2)
  rng = np.random.default_rng(3)
  running = jax.tree.map(lambda v: v + rng.uniform(0.5, 1.5, v.shape).astype(np.float32),
                         variables['batch_stats'])
  assert all(v.shape[0] == max_steps for v in jax.tree.leaves(running))
  variables = {**variables, 'batch_stats': running}
  out, _ = _apply(layer)(variables, x)

  by_name = {name: (s['mean'], s['var']) for name, s in running.items()}
  normalizer = ref.Normalizer('batch', variables['params'], eps=1e-5, running=by_name,
                              max_steps=max_steps)
  np.testing.assert_allclose(out, ref.run(cell, normalizer, variables['params'], x)[0],
                             atol=1e-5)
  # Evaluation is per example: the other sequences of the batch change nothing.
  alone, _ = _apply(layer)(variables, x[:1])
  np.testing.assert_allclose(alone, out[:1], atol=1e-6)


@pytest.mark.parametrize('kernel', ['kernel_x', 'kernel_h'])
def test_layer_norm_lstm_is_invariant_to_rescaling_and_recentring_weights(kernel):
  x = _inputs(steps=5)
  layer = _layer('lstm', 'layer', epsilon=1e-12)
  params = _variables(layer, x, seed=4)['params']
  w = params[kernel]
  shift = np.random.default_rng(5).normal(size=(w.shape[0], 1))  # the same for every unit
  changed = np.stack([w, 3.7 * w, 0.2 * w, w + shift])
  run = jax.jit(jax.vmap(lambda k: layer.apply({'params': {**params, kernel: k}}, x)[0]))
  out = run(changed)
  for got in out[1:]:
    np.testing.assert_allclose(got, out[0], atol=2e-5)
  # The plain LSTM is not invariant: the property comes from the normalization.
  plain = _layer('lstm', 'none')
  plain_params = {k: params[k] for k in ('kernel_x', 'kernel_h', 'bias')}
  base, _ = plain.apply({'params': plain_params}, x)
  moved, _ = plain.apply({'params': {**plain_params, kernel: 3.7 * w}}, x)
  assert np.abs(np.asarray(moved - base)).max() > 1e-2


def test_padding_does_not_change_batch_norm_outputs_or_running_averages():
  x = _inputs(steps=4)
  x_padded = np.concatenate([x, np.full((4, 3, INPUTS), 5.0, np.float32)], axis=1)
  mask = np.broadcast_to(np.arange(7)[None, :] < 4, (4, 7))
  layer = _layer('lstm', 'batch', max_steps=7)
  variables = _variables(layer, x_padded)
  (out, _), padded_stats = _apply(layer, train=True)(variables, x_padded, mask)
  (want, _), stats = _apply(layer, train=True)(variables, x)
  np.testing.assert_allclose(out[:, :4], want, atol=1e-6)
  np.testing.assert_allclose(out[:, 4:], 0.0)
  for got, real, init in zip(jax.tree.leaves(padded_stats), jax.tree.leaves(stats),
                             jax.tree.leaves(variables['batch_stats'])):
    np.testing.assert_allclose(got[:4], real[:4], atol=1e-6)  # as without the padding
    np.testing.assert_array_equal(got[4:], init[4:])          # steps with no real example


def test_stacked_classifier_reads_the_state_after_each_last_real_step():
  model = recurrent.SequenceClassifier(
      stack=recurrent.RecurrentStack(cell='gru', hidden_size=6, num_layers=2),
      pixels_per_step=4, num_classes=3, initial_state='input_mean')
  x = np.random.default_rng(7).uniform(size=(2, 20)).astype(np.float32)  # 5 steps of 4
  variables = _variables(model, x)
  apply = jax.jit(model.apply)
  padded = apply(variables, x, lengths_B=np.array([3, 5]))
  np.testing.assert_allclose(padded[0], apply(variables, x[:1, :12])[0], atol=1e-6)
  np.testing.assert_allclose(padded[1], apply(variables, x[1:])[0], atol=1e-6)
  assert padded.shape == (2, 3)
  assert set(variables['params']['stack']) == {'layer_0', 'layer_1'}


@pytest.mark.parametrize('kind', ['layer', 'batch'])
def test_gradients_are_finite_over_784_pixel_steps(kind):
  """With MNIST's blank first rows, identical for every example of the batch."""
  model = recurrent.SequenceClassifier(
      stack=recurrent.RecurrentStack(cell='lstm', hidden_size=4,
                                     norm=cells.NormSpec(kind=kind)),
      pixels_per_step=1, num_classes=10,
      initial_state=recurrent.default_initial_state(kind))
  x = np.random.default_rng(8).uniform(size=(4, 784)).astype(np.float32)
  x[:, :100] = 0.0
  labels = jnp.arange(4)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)

  def loss(params):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True,
                            mutable=['batch_stats'])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  grads = flax.traverse_util.flatten_dict(jax.jit(jax.grad(loss))(variables['params']))
  for path, grad in grads.items():
    assert np.all(np.isfinite(grad)), path
  assert np.abs(grads[('stack', 'layer_0', 'kernel_h')]).max() > 0


@pytest.mark.parametrize('variant, steps, permute', [
    ('rows', 28, False), ('pixels', 784, False), ('permuted', 784, True)])
def test_seq_mnist_variants(variant, steps, permute):
  config = load_config('configs/seq_mnist.py', variant)
  assert data.NUM_PIXELS // config.model.pixels_per_step == steps
  assert config.data.permute == permute
  assert (config.model.name, config.model.cell, config.model.hidden_size) == (
      'recurrent', 'lstm', 128)
  assert (config.batch_size, config.num_epochs, config.norm) == (64, 1.0, 'layer')
  config_checks.check_config(config, classification_task())


@pytest.mark.parametrize('override, key', [
    ('model.cell=lstmx', 'model.cell'), ('model.pixels_per_step=5', 'model.pixels_per_step'),
    ('model.initial_state=noise', 'model.initial_state'), ('model.num_layers=0', 'num_layers')])
def test_seq_mnist_bad_values_are_one_line_errors(override, key):
  config = load_config('configs/seq_mnist.py', f'tiny,{override}')
  with pytest.raises(UserError, match=key):
    config_checks.check_config(config, classification_task())


def test_train_and_evaluate_runs_a_recurrent_batch_norm_model(tmp_path):
  """Recurrent BN's per-step running averages travel through the loop, evaluation included."""
  config = load_config('configs/seq_mnist.py', 'tiny,norm=batch,norm_options.eval_stats=running')
  last = train.train_and_evaluate(config, str(tmp_path))
  assert rundir.is_complete(str(tmp_path))
  assert last['step'] == 2 * (256 // 16) and np.isfinite(last['test_loss'])
  with open(tmp_path / rundir.CONFIG_FILE) as f:
    assert json.load(f)['config']['model']['cell'] == 'lstm'


def _as_step_wise(variables):
  """A whole-sequence stack's variables as those of the step-wise one (nn.RNN's 'cell')."""
  return {collection: {name: ({layer: {'cell': tree} for layer, tree in value.items()}
                              if name == 'stack' else value)
                       for name, value in trees.items()}
          for collection, trees in variables.items()}


@pytest.mark.parametrize('cell, kind, initial_state', [
    ('lstm', 'none', 'zeros'), ('lstm', 'layer', 'input_mean'), ('lstm', 'batch', 'input_mean'),
    ('gru', 'layer', 'zeros')])
def test_step_wise_stack_equals_the_whole_sequence_one(cell, kind, initial_state):
  """model.step_wise (nn.RNN over the step-wise cells) computes the same classifier: logits,
  gradients and BN's new running averages, from the same parameters; two layers."""
  def model(step_wise):
    stack = recurrent.RecurrentStack(cell=cell, hidden_size=6, num_layers=2,
                                     norm=cells.NormSpec(kind=kind), step_wise=step_wise)
    return recurrent.SequenceClassifier(stack=stack, pixels_per_step=4, num_classes=3,
                                        initial_state=initial_state)
  x = np.random.default_rng(9).uniform(size=(5, 20)).astype(np.float32)
  labels = np.array([0, 1, 2, 1, 0])
  variables = _variables(model(False), x)
  step_variables = _as_step_wise(variables)
  shapes = jax.eval_shape(model(True).init, jax.random.PRNGKey(0), x)
  assert jax.tree.structure(shapes) == jax.tree.structure(step_variables)

  def loss(module, variables, params):
    logits, updates = module.apply({**variables, 'params': params}, x, train=True,
                                   mutable=['batch_stats'])
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(5), labels]), (logits, updates)

  grad = lambda module, v: jax.grad(functools.partial(loss, module, v), has_aux=True)(
      v['params'])
  (want_grads, (want, want_updates)), (got_grads, (got, got_updates)) = jax.jit(
      lambda: (grad(model(False), variables), grad(model(True), step_variables)))()
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(_as_step_wise(
      {'params': want_grads})['params'])):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  for a, b in zip(jax.tree.leaves(got_updates), jax.tree.leaves(_as_step_wise(want_updates))):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
  # Evaluation with the running averages, and padded sequences' final states.
  lengths = np.array([5, 2, 5, 3, 1])
  evaluate = lambda m, v: m.apply(v, x, lengths_B=None if kind == 'batch' else lengths)
  np.testing.assert_allclose(jax.jit(lambda: evaluate(model(True), step_variables))(),
                             jax.jit(lambda: evaluate(model(False), variables))(),
                             atol=2e-5, rtol=1e-4)
