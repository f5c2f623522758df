"""Sequential MNIST with recurrent networks: LN-LSTM (LN paper), BN-LSTM (Cooijmans et al.), LSTM.

  python scripts/train.py --config=configs/seq_mnist.py:rows --workdir=/tmp/seq_ln \
      --config.norm=layer

Variants after the colon: `rows` (28 steps of 28 pixels, the default), `pixels` (784 steps of
1 pixel), `permuted` (pixels in a fixed seeded order), `tiny` (small synthetic run, for tests and
smoke checks), and `key=value` overrides (`configs/seq_mnist.py:pixels,model.cell=gru`).
The norm, data, optimizer and loop fields are those of configs/pi_mnist.py.
"""

import importlib.util
import os

import ml_collections

from ln_jax import configlib
from ln_jax import data


def _shared_defaults():
  """configs/pi_mnist.py's config: its norm, data, optimizer and loop fields are shared."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pi_mnist.py')
  spec = importlib.util.spec_from_file_location('pi_mnist_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config(arg=None):
  config = _shared_defaults()
  with config.unlocked():
    # 'layer' | 'batch' | 'none' | 'group' | 'batch_renorm': the cell variant
    config.norm = 'layer'
    config.norm_options.gamma_init = 0.1  # recurrent BN's (and batch renorm's) gain init
    # Recurrent BN evaluates with population statistics of the current weights, per time step
    # (norm_options.population_batches training batches). The blank top rows of MNIST make
    # features that are (almost) constant over the batch; running averages, which lag the
    # changing weights, miss them by up to hundreds of their standard deviations (see
    # docs/recurrent.md).
    config.norm_options.eval_stats = 'population'

    config.model = ml_collections.ConfigDict()
    config.model.name = 'recurrent'
    config.model.cell = 'lstm'            # 'lstm' | 'gru' | 'rnn'
    config.model.hidden_size = 128
    config.model.num_layers = 1
    config.model.num_classes = data.NUM_CLASSES
    config.model.pixels_per_step = 28     # 28: row by row (28 steps); 1: pixel by pixel (784)
    config.model.forget_bias = 1.0        # LSTM forget-gate bias init
    # 'zeros' | 'input_mean'; None: 'input_mean' for norm=batch, which needs states that differ
    # over the batch from the first step (see ln_jax/models/recurrent.py), 'zeros' otherwise.
    config.model.initial_state = ml_collections.config_dict.placeholder(str)
    # True: nn.RNN over the step-wise cells (ln_jax.LSTMCell, ...) instead of the whole-sequence
    # layer; the same model, for measuring the path a model stepping its own cells takes.
    config.model.step_wise = False

    config.data.permute = False
    config.learning_rate = 2e-3
    config.grad_clip_norm = 1.0
    config.batch_size = 64
    config.num_epochs = 1.0
    config.eval_every_epochs = 0.25
    config.steps_per_call = 50

  configlib.apply_variant(config, arg, PRESETS)
  return config.lock()


def _rows(config):
  config.model.pixels_per_step = 28
  config.data.permute = False


def _pixels(config):
  config.model.pixels_per_step = 1
  config.data.permute = False
  config.eval_every_epochs = 1.0   # an evaluation runs 15,000 sequences of 784 steps
  config.steps_per_call = 10


def _permuted(config):
  _pixels(config)
  config.data.permute = True       # data.permutation_seed fixes the order


def _tiny(config):
  config.data.source = 'synthetic'
  config.data.synthetic_train_size = 320
  config.data.synthetic_test_size = 64
  config.data.valid_size = 64
  config.model.hidden_size = 16
  config.batch_size = 16
  config.num_epochs = 2.0
  config.eval_every_epochs = 1.0
  config.eval_batch_size = 64
  config.steps_per_call = 8
  config.norm_options.population_batches = 4


PRESETS = {'rows': _rows, 'pixels': _pixels, 'permuted': _permuted, 'tiny': _tiny}
