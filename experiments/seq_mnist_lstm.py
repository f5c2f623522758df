r"""The LN paper's recurrent claim on sequential MNIST: LN-LSTM against LSTM as the sequence gets
longer and the mini-batch smaller, each cell's learning rate tuned on the validation set, several
seeds. Every run of a variant takes the same number of updates, so a lower loss at the end means
faster convergence per update (the paper's recurrent curves are against updates).

  python scripts/sweep.py --experiment=experiments/seq_mnist_lstm.py:cpu --workdir=/tmp/seq \
      --parallel=2 --vmap_seeds --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/seq

The paper has no sequential-MNIST experiment; its conclusion states the claim tested here:
recurrent networks benefit the most from layer normalization, "especially for long sequences and
small mini-batches". CLAIMS states it where both variants have the cells: LN-LSTM ahead of LSTM
(lower final training NLL, lower test error) on the long sequences at the small batch, and LN's
gain over LSTM larger for the longer sequence and for the smaller batch. A claim on the short
sequences at the large batch is marked as not the paper's.

Sequence lengths: 28 steps of 28 pixels (rows), 112 steps of 7 pixels, 784 steps of 1 pixel.

Variants after the colon (sizes in the table below; docs/comparisons.md has measured costs):
  (none)  for a GPU: 28, 112 and 784 steps x batch 64 and 8, LSTM, LN-LSTM and BN-LSTM, 128
          units, 2,000 updates per run on the 55,000 training images, 3 learning rates, 3 seeds.
  cpu     (28 steps, batch 64), (28 steps, batch 8), (112 steps, batch 8); LSTM and LN-LSTM, 64
          units, 4,000 updates per run drawn from the first 20,000 training images (batch 8: 1.6
          epochs, batch 64: 12.8), 4 evaluations, 2 learning rates, 3 seeds (36 runs); about
          half an hour on 2 quiet cores with --parallel=2 --vmap_seeds.
"""

from ln_jax.errors import UserError

BASE_CONFIG = 'configs/seq_mnist.py:rows'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'model.pixels_per_step', 'batch_size')
TUNED = ('learning_rate',)
SELECT_BY = 'valid_error'
PANEL_BY = 'model.pixels_per_step'  # one panel per sequence length, both batch sizes in it


def _cell(norm, pixels, batch):
  return {'norm': norm, 'model.pixels_per_step': pixels, 'batch_size': batch}


NOT_THE_PAPERS = "(not the paper's claim) "
CLAIMS = (
    # "benefit the most ... especially for long sequences and small mini-batches": LN-LSTM is
    # ahead where the sequence is long and the batch small (training NLL at the final update,
    # the same for every run; test error at the best validation error) ...
    {'kind': 'less', 'a': _cell('layer', 7, 8), 'b': _cell('none', 7, 8), 'metric': 'train_loss',
     'at': 'final',
     'text': 'LN-LSTM has lower training NLL than LSTM after equal updates at 112 steps, batch 8'},
    {'kind': 'less', 'a': _cell('layer', 7, 8), 'b': _cell('none', 7, 8), 'metric': 'test_error',
     'text': 'LN-LSTM has lower test error than LSTM at 112 steps, batch 8'},
    # ... and its gain grows with the sequence length and as the batch shrinks.
    {'kind': 'gap_larger', 'a': _cell('layer', 7, 8), 'b': _cell('none', 7, 8),
     'than_a': _cell('layer', 28, 8), 'than_b': _cell('none', 28, 8), 'metric': 'test_error',
     'text': "LN-LSTM's gain over LSTM (batch 8) is larger at 112 steps than at 28"},
    {'kind': 'gap_larger', 'a': _cell('layer', 28, 8), 'b': _cell('none', 28, 8),
     'than_a': _cell('layer', 28, 64), 'than_b': _cell('none', 28, 64), 'metric': 'test_error',
     'text': "LN-LSTM's gain over LSTM (28 steps) is larger at batch 8 than at batch 64"},
    {'kind': 'less', 'a': _cell('layer', 28, 64), 'b': _cell('none', 28, 64),
     'metric': 'test_error',
     'text': NOT_THE_PAPERS + 'LN-LSTM has lower test error than LSTM at 28 steps, batch 64'},
)

# Sizes per variant: the same number of updates (`steps`) for every run whatever its batch size,
# `evals` evaluations per run; train_size None: the 55,000 training images.
# The cpu size comes from rates measured on 2 quiet cores (AMD EPYC, jax 0.10 CPU), two 3-seed
# vmapped processes side by side, 64 units: ~12 steps/s per process at 28 steps and batch 64
# (LN ~10), ~50 at 28 steps and batch 8, ~17 at 112 steps and batch 8; an evaluation of the
# 11,000 validation and test sequences x 3 seeds ~3 s at 28 steps, ~8 s at 112; ~10 s of start-up.
# 4,000 updates then take about 4 x (333 + 80 + 235) s of training plus ~200 s of evaluations and
# start-ups, over 2 processes: ~25 minutes.
VARIANTS = {
    None: {'norms': ('none', 'layer', 'batch'), 'cells': [(p, b) for p in (28, 7, 1)
                                                          for b in (64, 8)],
           'seeds': 3, 'steps': 2000, 'train_size': None, 'evals': 4,
           'learning_rates': {64: (1e-3, 2e-3, 5e-3), 8: (3e-4, 1e-3, 2e-3)}, 'run': {}},
    'cpu': {'norms': ('none', 'layer'), 'cells': [(28, 64), (28, 8), (7, 8)], 'seeds': 3,
            'steps': 4000, 'train_size': 20000, 'evals': 4,
            'learning_rates': {64: (2e-3, 5e-3), 8: (5e-4, 2e-3)},
            'run': {'model.hidden_size': 64, 'data.valid_size': 1000}},
}


def _epochs(variant, batch_size):
  """Epochs that make `variant['steps']` steps at this batch size."""
  images = variant['train_size'] or 55000
  return variant['steps'] * batch_size / images


def _steps_per_call(pixels):
  return {28: 50, 7: 25, 1: 10}[pixels]  # fewer for long sequences: smaller compiled programs


def members(arg=None):
  if arg not in VARIANTS:
    raise UserError(f'unknown variant {arg!r} of seq_mnist_lstm; choose cpu, or none for the '
                    'GPU sweep')
  variant = VARIANTS[arg]
  members = []
  for pixels, batch in variant['cells']:
    epochs = _epochs(variant, batch)
    run = {'num_epochs': epochs, 'eval_every_epochs': epochs / variant['evals'],
           'steps_per_call': _steps_per_call(pixels), **variant['run']}
    if variant['train_size']:
      run['data.train_size'] = variant['train_size']
    members += [{**_cell(norm, pixels, batch), 'learning_rate': lr, 'seed': seed, **run}
                for norm in variant['norms'] for lr in variant['learning_rates'][batch]
                for seed in range(variant['seeds'])]
  return members
