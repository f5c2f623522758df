"""DRAW on binarized MNIST (LN paper, Section 6.4): the baseline and the layer-normalized DRAW.

  python scripts/train.py --config=configs/draw_mnist.py --workdir=/tmp/draw_ln \
      --config.data.dir=../shared/data/mnist --config.norm=layer_c

The paper's settings: 64 glimpses, encoder and decoder LSTMs of 256 units, Adam with its default
settings, batch 128, 200 epochs; from DRAW's MNIST setup, 100-dimensional latents, 2x2 read and
5x5 write attention. `norm`: 'none' (the baseline), 'layer_c' (the paper's DRAW cell: LN of the
cell state only), 'layer' (the full LN-LSTM) or 'group'. Data: `data.source` 'sampled' (a fixed
Bernoulli binarization of the MNIST IDX files in data.dir), 'amat' (Larochelle's files), 'tfds'
or 'synthetic' (ln_jax/tasks/binarized_mnist.py).

Variants after the colon: `reduced` (a CPU-sized DRAW on the same data), `tiny` (synthetic, a
few seconds, for tests) and `key=value` overrides.
"""

import ml_collections

from ln_jax import configlib
from ln_jax.tasks import binarized_mnist

# The CPU-sized model of `reduced` (and of experiments/draw_mnist.py:cpu).
REDUCED_GLIMPSES = 16
REDUCED_UNITS = 128


def get_config(arg=None):
  config = configlib.base_config('draw')
  config.norm = 'layer_c'  # 'none' | 'layer_c' | 'layer' | 'group'

  config.model = ml_collections.ConfigDict()
  config.model.glimpses = 64
  config.model.encoder_units = 256
  config.model.decoder_units = 256
  config.model.latent_size = 100
  config.model.read_n = 2            # read attention: a read_n x read_n grid of filters
  config.model.write_n = 5           # write attention: a write_n x write_n patch
  config.model.attention = True      # False: read the whole image, write every pixel
  config.model.image_height = 28
  config.model.image_width = 28
  config.model.forget_bias = 1.0     # LSTM forget-gate bias init

  config.data = binarized_mnist.data_config()

  config.optimizer = 'adam'
  config.learning_rate = 1e-3
  # Not in the LN paper: global-norm clipping at 10 as in Bornschein's Blocks DRAW (and most
  # reimplementations); a bound summed over 784 pixels has large, spiky gradients early on.
  config.grad_clip_norm = 10.0
  config.batch_size = 128
  config.num_epochs = 200.0
  config.eval_every_epochs = 1.0
  config.eval_batch_size = 1000
  config.steps_per_call = 50

  configlib.apply_variant(config, arg, PRESETS)
  return config.lock()


def _reduced(config):
  config.model.glimpses = REDUCED_GLIMPSES
  config.model.encoder_units = REDUCED_UNITS
  config.model.decoder_units = REDUCED_UNITS


def _tiny(config):
  config.data.source = 'synthetic'
  config.data.synthetic_train_size = 256
  config.data.synthetic_valid_size = 64
  config.data.synthetic_test_size = 64
  config.model.glimpses = 3
  config.model.encoder_units = 16
  config.model.decoder_units = 16
  config.model.latent_size = 4
  config.model.write_n = 3
  config.batch_size = 32
  config.learning_rate = 1e-2        # a visible drop of the bound within a few steps
  config.num_epochs = 3.0
  config.eval_every_epochs = 1.0
  config.eval_batch_size = 64
  config.steps_per_call = 8


PRESETS = {'reduced': _reduced, 'tiny': _tiny}
