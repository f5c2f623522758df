"""optax optimizers by config name, with optional global-norm gradient clipping."""

from __future__ import annotations

import optax


OPTIMIZERS = {
    'adam': optax.adam,
    'adamw': optax.adamw,
    'sgd': optax.sgd,
    'momentum': lambda lr: optax.sgd(lr, momentum=0.9),
    'rmsprop': optax.rmsprop,
}


def make_optimizer(config) -> optax.GradientTransformation:
  if config.optimizer == 'adamw':
    tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  else:
    tx = OPTIMIZERS[config.optimizer](config.learning_rate)
  if config.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return tx
