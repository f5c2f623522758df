"""MLP shapes, parameter counts and where the normalizers go."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ln_jax import models
from ln_jax import layers
from conftest import load_config


def _init(config):
  model = models.create_model(config)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((2, 784), np.float32), train=False)
  return model, variables


def _count(tree):
  return sum(np.size(leaf) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize('norm, expected_params, expected_stats', [
    # 784-1000-1000-10: weights, then a bias per unit (a dense bias when there is no norm,
    # else the norm's bias) and a gain per normalized unit.
    ('none', 784 * 1000 + 1000 * 1000 + 1000 * 10 + 1000 + 1000 + 10, 0),
    ('layer', 784 * 1000 + 1000 * 1000 + 1000 * 10 + 2 * (1000 + 1000) + 10, 0),
    ('batch', 784 * 1000 + 1000 * 1000 + 1000 * 10 + 2 * (1000 + 1000 + 10), 2 * 2010),
])
def test_paper_mlp_parameter_counts(norm, expected_params, expected_stats):
  config = load_config('configs/pi_mnist.py', f'norm={norm}')
  model, variables = _init(config)
  assert _count(variables['params']) == expected_params
  assert _count(variables.get('batch_stats', {})) == expected_stats
  logits = model.apply(variables, np.zeros((3, 784), np.float32))
  assert logits.shape == (3, 10)


def test_layer_norm_on_hidden_layers_only_and_batch_norm_on_logits_too():
  ln_params = _init(load_config('configs/pi_mnist.py', 'norm=layer'))[1]['params']
  assert set(ln_params) == {'dense_0', 'norm_0', 'dense_1', 'norm_1', 'logits'}
  assert 'bias' in ln_params['logits'] and 'bias' not in ln_params['dense_0']
  bn_params = _init(load_config('configs/pi_mnist.py', 'norm=batch'))[1]['params']
  assert 'norm_2' in bn_params and 'bias' not in bn_params['logits']


def test_norm_logits_overrides_the_default():
  params = _init(load_config('configs/pi_mnist.py', 'norm=layer,model.norm_logits=true'))[1]['params']
  assert 'norm_2' in params
  params = _init(load_config('configs/pi_mnist.py', 'norm=batch,model.norm_logits=false'))[1]['params']
  assert 'norm_2' not in params and 'bias' in params['logits']


def test_hidden_sizes_and_activation_from_config():
  config = load_config('configs/pi_mnist.py', 'model.hidden_sizes=64:32:16,norm=none')
  config.unlock().model.activation = 'tanh'
  model, variables = _init(config)
  kernels = [variables['params'][name]['kernel'].shape
             for name in ('dense_0', 'dense_1', 'dense_2', 'logits')]
  assert kernels == [(784, 64), (64, 32), (32, 16), (16, 10)]
  assert model.activation is models.ACTIVATIONS['tanh']


def test_batch_norm_mlp_train_and_eval_differ_until_statistics_settle():
  config = load_config('configs/pi_mnist.py', 'norm=batch,model.hidden_sizes=8')
  model, variables = _init(config)
  x = np.random.default_rng(0).normal(size=(16, 784)).astype(np.float32)
  train_logits, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
  eval_logits = model.apply(variables, x, train=False)  # running stats still at init
  assert not np.allclose(train_logits, eval_logits)
  assert isinstance(model.norm(train=True), layers.BatchNorm)
  assert not np.allclose(updates['batch_stats']['norm_0']['mean'], 0.0)
