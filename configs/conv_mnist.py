"""MNIST with a small convolutional network (LN paper, Section 6.7: convolutional networks).

  python scripts/train.py --config=configs/conv_mnist.py --workdir=/tmp/conv_ln \
      --config.norm=layer

Two 3x3 conv layers (32 and 64 channels, each followed by the norm, ReLU and 2x2 max-pooling), a
dense layer of 128 units with the norm, and the logits. `norm`: none, batch, layer (LN over each
example's H, W and C, one gain and bias per channel), group, rms or batch_renorm. The images are
not permuted. Variants after the colon: `quick`, `tiny` and `key=value` overrides.
"""

import ml_collections

from ln_jax import configlib
from ln_jax import data


def get_config(arg=None):
  config = configlib.base_config('classification')
  config.norm = 'layer'

  config.model = ml_collections.ConfigDict()
  config.model.name = 'conv'
  config.model.features = (32, 64)       # channels of the conv layers
  config.model.hidden_size = 128         # the dense layer before the logits
  config.model.num_classes = data.NUM_CLASSES

  config.data = data.mnist_config(permute=False)

  config.batch_size = 128
  config.num_epochs = 5.0
  config.eval_every_epochs = 0.5
  # On the CPU the loop runs a conv net one step per call and unrolls its evaluation batches
  # (XLA:CPU runs convolutions inside a loop several times slower): few, large ones keep
  # compilation short.
  config.eval_batch_size = 2500

  configlib.apply_variant(config, arg, PRESETS)
  return config.lock()


def _quick(config):
  config.num_epochs = 1.0
  config.eval_every_epochs = 0.25


def _tiny(config):
  config.data.source = 'synthetic'
  config.data.synthetic_train_size = 320
  config.data.synthetic_test_size = 64
  config.data.valid_size = 64
  config.model.features = (4, 8)
  config.model.hidden_size = 16
  config.batch_size = 16
  config.num_epochs = 2.0
  config.eval_every_epochs = 1.0
  config.eval_batch_size = 64
  config.steps_per_call = 8
  config.norm_options.groups = 4
  config.norm_options.population_batches = 4


PRESETS = {'quick': _quick, 'tiny': _tiny}
