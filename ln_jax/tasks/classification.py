"""MNIST classification: the paper's feed-forward, convolutional and recurrent classifiers.

Batches are {'image': uint8 [B, 784], 'label': int32 [B]} (see `ln_jax.data`); the model named by
`config.model.name` ('mlp', 'conv' or 'recurrent') maps the images, scaled to [0, 1], to logits.
Metrics: the negative log-likelihood ('loss', nats) and the 0/1 error; runs are selected on the
validation error.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from ln_jax import data as data_lib
from ln_jax import models
from ln_jax.tasks.task import Metric
from ln_jax.tasks.task import Task


def preprocess(images):
  """uint8 pixels (kept that way on the device: 4x less memory and gather traffic) to [0, 1]."""
  return jnp.asarray(images, jnp.float32) / 255.0


def load_splits(config) -> dict:
  splits = data_lib.load_splits(config.data, config.seed)
  return {name: {'image': split.images, 'label': split.labels} for name, split in splits.items()}


def loss(logits, batch) -> dict:
  """Per-example negative log-likelihood and 0/1 error."""
  labels = batch['label']
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return {'loss': nll, 'error': (jnp.argmax(logits, -1) != labels).astype(jnp.float32)}


def model_inputs(batch):
  return preprocess(batch['image'])


def check_config(config) -> list[tuple[bool, str]]:
  d = config.data
  return [
      (d.source in data_lib.SOURCES,
       f'unknown data.source {d.source!r}; choose one of {", ".join(data_lib.SOURCES)}'),
      (d.name in data_lib.DATASETS,
       f'unknown data.name {d.name!r}; choose one of {", ".join(data_lib.DATASETS)}'),
      (0 <= d.permutation_seed < 2**32,
       f'data.permutation_seed={d.permutation_seed} must be in [0, 2**32)'),
      (config.model.num_classes == data_lib.NUM_CLASSES,
       f'model.num_classes={config.model.num_classes} must be {data_lib.NUM_CLASSES}, the '
       f'classes of {d.name}'),
      (d.source != 'synthetic' or (d.synthetic_train_size > 0 and d.synthetic_test_size > 0),
       f'data.synthetic_train_size={d.synthetic_train_size} and '
       f'data.synthetic_test_size={d.synthetic_test_size} must be positive'),
      (d.valid_size >= 0, f'data.valid_size={d.valid_size} must be >= 0'),
  ] + models.config_checks(config)


TASK = Task(
    name='classification',
    load_splits=load_splits,
    create_model=models.create_model,
    loss=loss,
    metrics=(Metric('loss', 'nats', log_scale=True), Metric('error', '%', scale=100.0)),
    select_by='error',
    model_inputs=model_inputs,
    check_config=check_config,
    normalized_widths=models.normalized_widths,
)
