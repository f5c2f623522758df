"""The config of the NNX sequence classifier in task.py (beside this file).

  python scripts/train.py --config=examples/nnx_model/config.py --workdir=/tmp/nnx_seq \
      --config.norm=layer

`norm` is the LSTM cell's: none, layer (the paper's LN-LSTM), layer_c (LN of the cell state),
group, batch (recurrent BN) or batch_renorm. Variants after the colon: `tiny` (seconds, for
tests) and `key=value` overrides.
"""

import os

import ml_collections

from ln_jax import configlib

TASK_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'task.py')


def get_config(arg=None):
  config = configlib.base_config(TASK_FILE)
  config.norm = 'layer'
  config.model = ml_collections.ConfigDict()
  config.model.hidden_size = 64
  config.data = ml_collections.ConfigDict()
  config.data.seed = 0
  config.data.num_steps = 20
  config.data.num_features = 8
  config.data.num_train = 8192
  config.data.num_valid = 1024
  config.data.num_test = 1024
  config.batch_size = 64
  config.num_epochs = 10.0
  config.eval_every_epochs = 1.0
  config.learning_rate = 3e-3
  config.steps_per_call = 64
  configlib.apply_variant(config, arg, {'tiny': _tiny})
  return config.lock()


def _tiny(config):
  config.model.hidden_size = 16
  config.data.num_steps = 8
  config.data.num_train = 512
  config.data.num_valid = 128
  config.data.num_test = 128
  config.batch_size = 32
  config.num_epochs = 2.0
  config.eval_every_epochs = 0.5
  config.steps_per_call = 8
