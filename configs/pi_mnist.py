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
  config = ml_collections.ConfigDict()
  config.norm = 'layer'                     # 'layer' | 'batch' | 'rms' | 'weight' | 'none' |
                                            # 'group' | 'batch_renorm' (README: small batches)
  config.norm_logits = ml_collections.config_dict.placeholder(bool)  # None: paper's placement
  config.norm_epsilon = 1e-5                # inside the sqrt; the paper's original code value
  config.norm_fast_variance = False         # one-pass variance (loses precision at large means)
  config.bn_momentum = 0.99                 # Flax convention: ra <- m * ra + (1 - m) * batch
  config.bn_unbiased_variance = False       # the paper uses the unbiased variance at batch 4
  config.bn_eval_stats = 'running'          # 'running' averages, 'batch' statistics or
                                            # 'population' statistics of the current weights
                                            # (Wu & Johnson 2021) at eval
  config.bn_population_batches = 20         # training batches of that population pass
  config.bn_ghost_batches = 1               # BN statistics per batch_size / n examples ("ghost"
                                            # batches); n = num_devices: per-device statistics
  config.gn_groups = 8                      # group norm: groups of hidden units (1 = LayerNorm);
                                            # must divide every normalized width
  # Batch renorm (Ioffe 2017): r clipped to [1/r_max, r_max], d to [-d_max, d_max]; plain BN
  # until renorm_start_step, then linear ramps to r_max, d_max (the paper's steps and values).
  config.renorm_r_max = 3.0
  config.renorm_d_max = 5.0
  config.renorm_start_step = 5000
  config.renorm_r_max_step = 40000
  config.renorm_d_max_step = 25000

  config.model = ml_collections.ConfigDict()
  config.model.name = 'mlp'
  config.model.hidden_sizes = (1000, 1000)
  config.model.num_classes = data.NUM_CLASSES
  config.model.activation = 'relu'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'mnist'
  config.data.source = data.default_source()   # 'tfds' | 'idx' | 'synthetic'
  config.data.dir = data.default_data_dir()     # IDX folder, or TFDS data_dir ('' = TFDS default)
  config.data.valid_size = 5000
  config.data.train_size = ml_collections.config_dict.placeholder(int)  # cap, for quick runs
  config.data.permute = True
  config.data.permutation_seed = 0
  config.data.synthetic_train_size = 6000
  config.data.synthetic_test_size = 1000

  config.optimizer = 'adam'                 # 'adam' | 'adamw' | 'sgd' | 'momentum' | 'rmsprop'
  config.learning_rate = 1e-3
  config.weight_decay = 0.0                 # adamw only
  config.grad_clip_norm = 0.0               # 0 disables global-norm clipping
  config.batch_size = 128
  config.num_epochs = 10.0
  config.seed = 0
  config.dtype = 'float32'                  # compute dtype; norm statistics stay float32
  config.fuse_weight_grad = True            # batch <= 8: weight gradients fused into the
                                            # optimizer (ln_jax/layers/dense.py); False: one matmul

  config.num_evals = 20                     # evaluations per run, evenly spaced in steps
  config.eval_every_epochs = ml_collections.config_dict.placeholder(float)  # set: overrides
                                            # num_evals; fractions allowed (0.1: 10x per epoch)
  config.eval_batch_size = 1000
  config.steps_per_call = 100               # optimizer steps fused into one compiled call
  config.num_devices = 0                    # data parallel over this many devices (0: all);
                                            # batch_size must be a multiple of it
  config.log_every_seconds = 10.0
  config.checkpoint_every_epochs = 1.0      # fractions allowed; also saved at the end
  config.checkpoint_keep = 2                # newest checkpoints kept
  config.on_nonfinite = 'stop'              # 'stop' the run, or 'skip' the update and count it

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
  config.bn_population_batches = 4


PRESETS = {'quick': _quick, 'tiny': _tiny}
