"""A researcher's own task, outside the ln_jax package: regression on badly scaled inputs.

Each example has 32 input features whose scales span three orders of magnitude (as raw sensor
readings or unnormalized tabular data do) and a target made by a fixed random teacher network plus
noise. The model is ln_jax's MLP with one output; the loss is the squared error, and runs are
selected on the mean absolute error. ln_jax trains, sweeps, resumes and compares it like a
built-in task: its config (config.py beside this file) names this file in `config.task`.
"""

import jax.numpy as jnp
import numpy as np

from ln_jax import models
from ln_jax import norms
from ln_jax.tasks import Metric
from ln_jax.tasks import Task


def load_splits(config):
  """Train / valid / test arrays, the same for every seed of a run (config.data.seed fixes them)."""
  d = config.data
  rng = np.random.default_rng(d.seed)
  scales = np.logspace(-1.5, 1.5, d.num_features)  # feature scales from 0.03 to 30
  teacher_in = rng.standard_normal((d.num_features, 64)) / np.sqrt(d.num_features)
  teacher_out = rng.standard_normal(64) / 8.0

  def make(n):
    z = rng.standard_normal((n, d.num_features))
    y = np.tanh(z @ teacher_in) @ teacher_out + d.noise * rng.standard_normal(n)
    return {'x': (z * scales).astype(np.float32), 'y': y.astype(np.float32)}
  return {'train': make(d.num_train), 'valid': make(d.num_valid), 'test': make(d.num_test)}


def create_model(config):
  m = config.model
  return models.MLP(hidden_sizes=tuple(m.hidden_sizes), num_classes=1,
                    activation=models.ACTIVATIONS[m.activation], norm=norms.make_norm(config),
                    norm_logits=False, dense=norms.make_dense(config))


def loss(outputs, batch):
  error = outputs[:, 0] - batch['y']
  return {'loss': jnp.square(error), 'abs_error': jnp.abs(error)}


def check_config(config):
  d = config.data
  return [(d.num_train > 0 and d.num_valid >= 0 and d.num_test >= 0,
           f'data.num_train={d.num_train} must be positive, num_valid and num_test >= 0'),
          (d.num_features > 0, f'data.num_features={d.num_features} must be positive')]


def get_task():
  return Task(name='regression', load_splits=load_splits, create_model=create_model, loss=loss,
              metrics=(Metric('loss', 'squared error', log_scale=True),
                       Metric('abs_error', 'target units')),
              select_by='abs_error', model_inputs=lambda batch: batch['x'],
              check_config=check_config,
              normalized_widths=lambda config: tuple(config.model.hidden_sizes))
