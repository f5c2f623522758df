"""DRAW on binarized MNIST (LN paper, Section 6.4): the variational bound, in nats per image.

Batches are {'image': uint8 [B, 784] of 0/1} (`binarized_mnist`); the model is
`ln_jax.models.draw.DRAW` built from `config.model` and `config.norm` ('none', 'layer_c' (the
paper's DRAW cell), 'layer' or 'group'). Per image, the negative variational bound is
  loss = reconstruction + kl,
  reconstruction = -log p(x | z) = sum over pixels of the Bernoulli cross entropy of the canvas,
  kl = sum over glimpses of KL(Q(z_t | x) || N(0, I)) in closed form.
All three are reported in nats ('loss' is what the paper plots), and runs are selected on the
validation bound. Each evaluation draws an 8x8 grid of samples and the canvas of 8 of them over
the glimpses (`pictures`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ln_jax import norms
from ln_jax.models import draw as draw_model
from ln_jax.tasks import binarized_mnist
from ln_jax.tasks.task import Metric
from ln_jax.tasks.task import Task

SAMPLE_GRID = 8       # the 'samples' picture: SAMPLE_GRID x SAMPLE_GRID samples from the prior
STRIP_SAMPLES = 8     # the 'glimpses' picture: this many samples, one per row ...
STRIP_STEPS = 16      # ... at this many glimpses, evenly spaced up to the last


def create_model(config) -> draw_model.DRAW:
  m = config.model
  return draw_model.DRAW(
      glimpses=m.glimpses, encoder_units=m.encoder_units, decoder_units=m.decoder_units,
      latent_size=m.latent_size, read_n=m.read_n, write_n=m.write_n, height=m.image_height,
      width=m.image_width, attention=m.attention, norm=norms.recurrent_spec(config),
      forget_bias=m.forget_bias, dtype=jnp.dtype(config.dtype))


def load_splits(config) -> dict:
  return binarized_mnist.load_splits(config.data)


def model_inputs(batch):
  return jnp.asarray(batch['image'], jnp.float32)


def loss(outputs, batch) -> dict:
  """Per-example negative bound, reconstruction and KL, in nats."""
  targets = jnp.asarray(batch['image'], jnp.float32)
  reconstruction = jnp.sum(optax.sigmoid_binary_cross_entropy(outputs['logits'], targets), -1)
  kl = jnp.sum(outputs['kl'], -1)
  return {'loss': reconstruction + kl, 'reconstruction': reconstruction, 'kl': kl}


@functools.lru_cache(maxsize=8)
def _generator(model, num_samples: int):
  """The compiled `DRAW.generate` of `model` (one program per model, reused at each evaluation)."""
  return jax.jit(lambda variables, key: model.apply(
      variables, num_samples, method=draw_model.DRAW.generate, rngs={'latent': key}))


def pictures(model, variables, config, key) -> dict:
  """'samples': a grid of final canvases; 'glimpses': the canvas of a few samples over the steps
  (rows: samples; columns: glimpses, the last one at the right). Gray levels are sigmoid(c)."""
  from ln_jax.training import pictures as pictures_lib
  m = config.model
  canvases = np.asarray(_generator(model, SAMPLE_GRID ** 2)(variables, key))  # [N, T, P]
  images = pictures_lib.to_uint8(canvases).reshape(canvases.shape[:2] + (m.image_height,
                                                                         m.image_width))
  steps = np.unique(np.linspace(0, m.glimpses - 1, min(STRIP_STEPS, m.glimpses)).round())
  strip = images[:STRIP_SAMPLES][:, steps.astype(int)]
  return {'samples': pictures_lib.tile(images[:, -1], SAMPLE_GRID),
          'glimpses': pictures_lib.tile(strip.reshape((-1,) + strip.shape[2:]), len(steps))}


def _at_least_one(config, key: str) -> tuple[bool, str]:
  value = config.model[key]
  return (isinstance(value, int) and value >= 1, f'model.{key}={value} must be at least 1')


def _window_fits(config, key: str) -> tuple[bool, str]:
  m = config.model
  n, side = m[key], min(m.image_height, m.image_width)
  return (isinstance(n, int) and 1 <= n <= side,
          f'model.{key}={n}: the attention window must be 1..{side} pixels wide, within the '
          f'{m.image_height}x{m.image_width} image')


def check_config(config) -> list[tuple[bool, str]]:
  m = config.model
  return binarized_mnist.config_checks(config.data) + [
      (config.norm in draw_model.NORMS,
       f'norm={config.norm!r} is not a DRAW cell; choose one of {", ".join(draw_model.NORMS)} '
       '(recurrent batch norm would need per-glimpse statistics DRAW does not keep)'),
      _at_least_one(config, 'glimpses'),
      _at_least_one(config, 'encoder_units'),
      _at_least_one(config, 'decoder_units'),
      _at_least_one(config, 'latent_size'),
      _window_fits(config, 'read_n'),
      _window_fits(config, 'write_n'),
      (m.image_height * m.image_width == binarized_mnist.NUM_PIXELS,
       f'model.image_height x model.image_width = {m.image_height}x{m.image_width} must hold '
       f'the {binarized_mnist.NUM_PIXELS} pixels of an MNIST image (28x28)'),
  ]


def normalized_widths(config) -> tuple:
  """The LSTMs' units, for group norm (the cells normalize H or 4H of them)."""
  return (config.model.encoder_units, config.model.decoder_units)


TASK = Task(
    name='draw',
    load_splits=load_splits,
    create_model=create_model,
    loss=loss,
    metrics=(Metric('loss', 'nats'), Metric('reconstruction', 'nats'), Metric('kl', 'nats')),
    select_by='loss',
    model_inputs=model_inputs,
    rngs=('latent',),
    check_config=check_config,
    normalized_widths=normalized_widths,
    pictures=pictures,
)
