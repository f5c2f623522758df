r"""The LN paper's recurrent claim on sequential MNIST: LN-LSTM against LSTM as the sequence gets
longer and the mini-batch smaller, each cell's learning rate tuned on the validation set, several
seeds. Every run sees the same number of training examples, so a lower error at the end means
faster convergence per example.

  python scripts/sweep.py --experiment=experiments/seq_mnist_lstm.py:cpu --workdir=/tmp/seq \
      --parallel=2 --vmap_seeds --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/seq

Sequence lengths: 28 steps of 28 pixels (rows), 112 steps of 7 pixels, 784 steps of 1 pixel.

Variants after the colon (docs/comparisons.md has their costs):
  (none)  for a GPU: 28, 112 and 784 steps, batch 64 and 8, LSTM, LN-LSTM and BN-LSTM,
          128 units, one epoch of the 55,000 training images, 3 learning rates, 3 seeds.
  cpu     28 and 112 steps, batch 64 and 8, LSTM and LN-LSTM, 64 units, one pass over the first
          2,400 training images, evaluated at its end, 2 learning rates, 3 seeds (48 runs).
"""

from ln_jax.errors import UserError

BASE_CONFIG = 'configs/seq_mnist.py:rows'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'model.pixels_per_step', 'batch_size')
TUNED = ('learning_rate',)
SELECT_BY = 'valid_error'


def _cell(norm, pixels, batch):
  return {'norm': norm, 'model.pixels_per_step': pixels, 'batch_size': batch}


# LN's gain over the LSTM: there in the hardest cell, larger for the longer sequence, larger for
# the smaller batch (the paper: "especially for long sequences and small mini-batches").
CLAIMS = (
    {'kind': 'less', 'a': _cell('layer', 7, 8), 'b': _cell('none', 7, 8), 'metric': 'test_error',
     'text': 'LN-LSTM has lower test error than LSTM at 112 steps, batch 8'},
    {'kind': 'less', 'a': _cell('layer', 28, 64), 'b': _cell('none', 28, 64),
     'metric': 'test_error', 'text': 'LN-LSTM has lower test error than LSTM at 28 steps, batch 64'},
    {'kind': 'gap_larger', 'a': _cell('layer', 7, 64), 'b': _cell('none', 7, 64),
     'than_a': _cell('layer', 28, 64), 'than_b': _cell('none', 28, 64), 'metric': 'test_error',
     'text': "LN-LSTM's gain over LSTM (batch 64) is larger at 112 steps than at 28"},
    {'kind': 'gap_larger', 'a': _cell('layer', 28, 8), 'b': _cell('none', 28, 8),
     'than_a': _cell('layer', 28, 64), 'than_b': _cell('none', 28, 64), 'metric': 'test_error',
     'text': "LN-LSTM's gain over LSTM (28 steps) is larger at batch 8 than at batch 64"},
)

VARIANTS = {
    None: {'norms': ('none', 'layer', 'batch'), 'pixels': (28, 7, 1), 'seeds': 3,
           'learning_rates': {64: (1e-3, 2e-3, 5e-3), 8: (3e-4, 1e-3, 2e-3)},
           'run': {'num_epochs': 1.0, 'eval_every_epochs': 0.25}},
    'cpu': {'norms': ('none', 'layer'), 'pixels': (28, 7), 'seeds': 3,
            'learning_rates': {64: (2e-3, 5e-3), 8: (5e-4, 2e-3)},
            'run': {'num_epochs': 1.0, 'eval_every_epochs': 1.0, 'data.train_size': 2400,
                    'model.hidden_size': 64}},
}


def _steps_per_call(pixels):
  return {28: 50, 7: 25, 1: 10}[pixels]  # fewer for long sequences: smaller compiled programs


def members(arg=None):
  if arg not in VARIANTS:
    raise UserError(f'unknown variant {arg!r} of seq_mnist_lstm; choose cpu, or none for the '
                    'GPU sweep')
  variant = VARIANTS[arg]
  return [{**_cell(norm, pixels, batch), 'learning_rate': lr, 'seed': seed,
           'steps_per_call': _steps_per_call(pixels), **variant['run']}
          for pixels in variant['pixels'] for batch in (64, 8) for norm in variant['norms']
          for lr in variant['learning_rates'][batch] for seed in range(variant['seeds'])]
