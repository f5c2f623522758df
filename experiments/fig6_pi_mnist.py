r"""Figure 6 of the LN paper: Baseline, BatchNorm and LayerNorm on permutation-invariant MNIST
(784-1000-1000-10, Adam) at batch sizes 128 and 4, each method's learning rate tuned per batch
size on the validation set, several seeds, the paper's claims put to the test.

  python scripts/sweep.py --experiment=experiments/fig6_pi_mnist.py:cpu --workdir=/tmp/f6 \
      --parallel=2 --vmap_seeds --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/f6

Variants after the colon (docs/comparisons.md has their costs):
  (none)  the paper's protocol for a GPU: 60 epochs on the 55,000 training images, 3 learning
          rates per batch size, 3 seeds (54 runs).
  cpu     the 55,000 training images, 2 learning rates per batch size, 3 seeds (36 runs); batch
          128 trains 1 epoch (429 steps), batch 4 a twentieth of an epoch (688 steps).
  quick   the first 10,000 training images, one learning rate, 2 seeds (12 runs, minutes).
  seeds4  LayerNorm at batch 4, 4 seeds, 2,000 steps: times --vmap_seeds against separate runs.
"""

from ln_jax.errors import UserError

BASE_CONFIG = 'configs/pi_mnist.py'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'batch_size')
TUNED = ('learning_rate',)     # compare picks, per group, the value with the best mean validation
SELECT_BY = 'valid_error'      # the evaluation each run is read at: its best validation error
NORMS = ('none', 'batch', 'layer')  # the paper's Baseline, BatchNorm, LayerNorm

LN4, BN4 = {'norm': 'layer', 'batch_size': 4}, {'norm': 'batch', 'batch_size': 4}
LN128, BASE128 = {'norm': 'layer', 'batch_size': 128}, {'norm': 'none', 'batch_size': 128}
CLAIMS = (
    {'kind': 'less', 'a': LN4, 'b': BN4, 'metric': 'test_error',
     'text': 'LayerNorm at batch 4 has lower test error than BatchNorm at batch 4'},
    {'kind': 'less', 'a': LN128, 'b': BASE128, 'metric': 'test_error',
     'text': 'LayerNorm at batch 128 has lower test error than the baseline'},
    {'kind': 'less', 'a': LN4, 'b': {'norm': 'none', 'batch_size': 4}, 'metric': 'test_error',
     'text': 'LayerNorm at batch 4 has lower test error than the baseline'},
    {'kind': 'less', 'a': LN128, 'b': BASE128, 'metric': 'train_loss',
     'text': 'LayerNorm at batch 128 trains faster (lower training NLL) than the baseline'},
    {'kind': 'within', 'a': LN4, 'b': LN128, 'metric': 'test_error', 'margin': 0.005,
     'text': "LayerNorm's test error at batch 4 is within 0.5 points of its error at batch 128"},
)

# Per variant: seeds, the learning-rate grid per batch size, and the training per batch size.
# Evaluations are few and fixed per run (eval_every_epochs set here), as each costs a pass over
# the 15,000 validation and test images.
VARIANTS = {
    None: {'seeds': 3, 'learning_rates': {128: (3e-4, 1e-3, 3e-3), 4: (3e-5, 1e-4, 3e-4)},
           'run': {128: {'num_epochs': 60.0, 'eval_every_epochs': 0.5},
                   4: {'num_epochs': 60.0, 'eval_every_epochs': 0.5}}},
    'cpu': {'seeds': 3, 'learning_rates': {128: (1e-3, 3e-3), 4: (1e-4, 3e-4)},
            'run': {128: {'num_epochs': 1.0, 'eval_every_epochs': 0.25},
                    4: {'num_epochs': 0.05, 'eval_every_epochs': 0.0125}}},
    'quick': {'seeds': 2, 'learning_rates': {128: (1e-3,), 4: (1e-4,)},
              'run': {128: {'num_epochs': 2.0, 'eval_every_epochs': 0.5,
                            'data.train_size': 10000},
                      4: {'num_epochs': 0.25, 'eval_every_epochs': 0.05,
                          'data.train_size': 10000}}},
}


def _member(norm, batch_size, learning_rate, seed, run):
  return {'norm': norm, 'batch_size': batch_size, 'learning_rate': learning_rate,
          'norm_options.unbiased_variance': batch_size == 4,  # as in the paper
          'seed': seed, **run}


def _grid(variant):
  return [_member(norm, batch_size, lr, seed, variant['run'][batch_size])
          for batch_size in (128, 4) for norm in NORMS
          for lr in variant['learning_rates'][batch_size] for seed in range(variant['seeds'])]


# ---- small_batch: the normalizers made for small batches, beside BatchNorm and LayerNorm -------
# Variants small_batch (3 seeds, 60 epochs, like the paper's sweep) and small_batch_quick (1 seed,
# 5 epochs on 20,000 images): LayerNorm, BatchNorm (running averages), BatchNorm with population
# statistics of the final weights at each evaluation (Wu & Johnson 2021), Batch Renorm (Ioffe
# 2017, the paper's r_max/d_max schedule) and Group Norm (8 groups), at batch sizes 128 and 4.
# Compare with the evaluation statistics as a curve key:
#   python scripts/compare.py /tmp/f6s --group_by=norm,batch_size,norm_options.eval_stats
SMALL_BATCH_METHODS = (
    {'norm': 'layer'},
    {'norm': 'batch'},
    {'norm': 'batch', 'norm_options.eval_stats': 'population'},
    {'norm': 'batch_renorm'},
    {'norm': 'group'},
)
POPULATION_EXAMPLES = 5120  # per population pass: 40 batches of 128, 1280 of 4
SMALL_BATCH_LEARNING_RATES = {128: 1e-3, 4: 1e-4}  # Adam, as for the Figure-6 runs


def small_batch_members(arg):
  seeds, run = {
      'small_batch': (3, {'num_epochs': 60.0, 'eval_every_epochs': 0.5}),
      'small_batch_quick': (1, {'num_epochs': 5.0, 'eval_every_epochs': 0.5,
                                'data.train_size': 20000}),
  }[arg]
  return [{'norm_options.eval_stats': 'running', **method, 'batch_size': batch_size,
           'seed': seed, **run,
           'learning_rate': SMALL_BATCH_LEARNING_RATES[batch_size],
           'norm_options.unbiased_variance': batch_size == 4,  # the LN paper's BN at batch 4
           'norm_options.population_batches': POPULATION_EXAMPLES // batch_size}
          for batch_size in (128, 4) for method in SMALL_BATCH_METHODS for seed in range(seeds)]


def members(arg=None):
  if arg in ('small_batch', 'small_batch_quick'):
    return small_batch_members(arg)
  if arg == 'seeds4':
    return [_member('layer', 4, 1e-4, seed, {'num_epochs': 1.0, 'eval_every_epochs': 0.5,
                                             'data.train_size': 8000}) for seed in range(4)]
  if arg not in VARIANTS:
    raise UserError(f'unknown variant {arg!r} of fig6_pi_mnist; choose cpu, quick, seeds4, '
                    'small_batch, small_batch_quick or none for the full sweep')
  return _grid(VARIANTS[arg])
