"""The config of the regression task in task.py (beside this file).

  python scripts/train.py --config=examples/regression/config.py --workdir=/tmp/reg \
      --config.norm=layer

Variants after the colon: `tiny` (seconds, for tests) and `key=value` overrides.
"""

import os

import ml_collections

from ln_jax import configlib

TASK_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'task.py')


def get_config(arg=None):
  config = configlib.base_config(TASK_FILE)
  config.norm = 'layer'
  config.model = ml_collections.ConfigDict()
  config.model.hidden_sizes = (128, 128)
  config.model.activation = 'relu'
  config.data = ml_collections.ConfigDict()
  config.data.seed = 0
  config.data.num_features = 32
  config.data.num_train = 8192
  config.data.num_valid = 1024
  config.data.num_test = 1024
  config.data.noise = 0.05
  config.batch_size = 64
  config.num_epochs = 10.0
  config.eval_every_epochs = 1.0
  config.learning_rate = 1e-3
  config.steps_per_call = 64
  configlib.apply_variant(config, arg, {'tiny': _tiny})
  return config.lock()


def _tiny(config):
  config.model.hidden_sizes = (16, 16)
  config.data.num_train = 512
  config.data.num_valid = 128
  config.data.num_test = 128
  config.batch_size = 32
  config.num_epochs = 2.0
  config.eval_every_epochs = 0.5
  config.steps_per_call = 8
