"""The convolutional classifier (LN paper Section 6.7): each norm's statistics over the axes the
paper names, and training through the loop's unrolled steps on the CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax import norms
from ln_jax import tasks
from ln_jax.models import conv
from ln_jax.training import metrics_repair
from ln_jax.training import rundir
from ln_jax.training import step as step_lib
from ln_jax.training import train
from tests.conftest import load_config, new_train_state

EPS = 1e-5


def _norm_output(norm: str, x, **options):
  config = load_config('configs/conv_mnist.py', f'norm={norm}').unlock()
  for key, value in options.items():
    config.norm_options[key] = value
  layer = norms.make_norm(config)(True, spatial=True)
  variables = layer.init(jax.random.PRNGKey(0), x)
  y, _ = layer.apply(variables, x, mutable=['batch_stats'])
  return np.asarray(y, np.float64)


def test_layer_norm_of_a_conv_layer_spans_each_examples_h_w_and_c():
  x = np.random.default_rng(0).normal(3.0, 2.0, (4, 5, 6, 8)).astype(np.float32)
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  var = x.var(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(_norm_output('layer', x), (x - mean) / np.sqrt(var + EPS),
                             rtol=1e-4, atol=1e-5)


def test_group_norm_of_a_conv_layer_spans_h_w_and_the_groups_channels():
  x = np.random.default_rng(1).normal(-1.0, 3.0, (3, 4, 4, 8)).astype(np.float32)
  g = x.reshape(3, 4, 4, 2, 4)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  expected = ((g - mean) / np.sqrt(var + EPS)).reshape(x.shape)
  np.testing.assert_allclose(_norm_output('group', x, groups=2), expected, rtol=1e-4, atol=1e-5)


def test_batch_norm_of_a_conv_layer_spans_the_batch_h_and_w_per_channel():
  x = np.random.default_rng(2).normal(0.5, 1.5, (6, 3, 3, 4)).astype(np.float32)
  mean = x.mean(axis=(0, 1, 2), keepdims=True)
  var = x.var(axis=(0, 1, 2), keepdims=True)
  np.testing.assert_allclose(_norm_output('batch', x), (x - mean) / np.sqrt(var + EPS),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('norm', ['none', 'batch', 'layer', 'group', 'rms', 'batch_renorm'])
def test_conv_net_builds_with_every_norm_it_has(norm):
  config = load_config('configs/conv_mnist.py', f'tiny,norm={norm}')
  model = tasks.load_task(config).create_model(config)
  assert isinstance(model, conv.ConvNet)
  x = jnp.zeros((2, 784))
  variables = model.init(jax.random.PRNGKey(0), x)
  assert model.apply(variables, x).shape == (2, 10)
  has_norm = norm != 'none'
  assert ('norm_0' in variables['params']) == has_norm
  assert ('bias' in variables['params']['conv_0']) != has_norm


@pytest.mark.slow
def test_the_loop_unrolls_conv_steps_on_the_cpu_and_keeps_results_exact(tmp_path):
  """The unrolled fused steps of a conv net give the same numbers whatever their number."""
  config = load_config('configs/conv_mnist.py', 'tiny,norm=batch')
  state = new_train_state(config, jax.random.PRNGKey(0), np.zeros((1, 784), np.uint8))
  batch = {'image': np.zeros((4, 784), np.uint8), 'label': np.zeros((4,), np.int32)}
  assert step_lib.has_convolution(state, batch)
  mlp = load_config('configs/pi_mnist.py', 'tiny')
  mlp_state = new_train_state(mlp, jax.random.PRNGKey(0), np.zeros((1, 784), np.uint8))
  assert not step_lib.has_convolution(mlp_state, batch)
  for calls in (2, 8):
    train.train_and_evaluate(load_config('configs/conv_mnist.py',
                                         f'tiny,norm=batch,steps_per_call={calls}'),
                             str(tmp_path / str(calls)))
  assert metrics_repair.metrics_differences(str(tmp_path / '2'), str(tmp_path / '8')) == []
  records = rundir.read_metrics(str(tmp_path / '2'))
  assert records[-1]['train_loss'] < records[0]['train_loss']
