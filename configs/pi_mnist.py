"""Permutation-invariant MNIST with a 784-1000-1000-10 MLP (LN paper, Section 6.6, Figure 6).

  python scripts/train.py --config=configs/pi_mnist.py --workdir=/tmp/pi_ln \
      --config.norm=layer --config.batch_size=4

Variants after the colon: `key=value` overrides (`configs/pi_mnist.py:norm=batch,batch_size=4`)
and the presets `quick` (fewer epochs) and `tiny` (small synthetic run, for tests and smoke checks).
"""

import ml_collections

from ln_jax import configlib
from ln_jax import data


def get_config(arg=None):
  config = configlib.base_config('classification')
  config.norm = 'layer'                     # 'layer' | 'batch' | 'rms' | 'weight' | 'none' |
                                            # 'group' | 'batch_renorm' (README: small batches)

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'
  config.model.hidden_sizes = (1000, 1000)
  config.model.num_classes = data.NUM_CLASSES
  config.model.activation = 'relu'
  config.model.api = 'linen'                # 'linen' | 'nnx': the same MLP written in Flax NNX
                                            # (ln_jax/models/mlp_nnx.py)
  config.model.norm_logits = ml_collections.config_dict.placeholder(bool)  # None: the paper's
                                            # placement (BN on the logits too, LN not)

  config.data = data.mnist_config(permute=True)

  configlib.apply_variant(config, arg, PRESETS)
  return config.lock()


def _quick(config):
  config.num_epochs = 2.0
  config.eval_every_epochs = 0.25


def _tiny(config):
  config.data.source = 'synthetic'
  config.data.synthetic_train_size = 600
  config.data.synthetic_test_size = 200
  config.data.valid_size = 100
  config.model.hidden_sizes = (32, 32)
  config.batch_size = 16
  config.num_epochs = 2.0
  config.eval_every_epochs = 0.5
  config.eval_batch_size = 64
  config.steps_per_call = 8
  config.norm_options.population_batches = 4


PRESETS = {'quick': _quick, 'tiny': _tiny}
