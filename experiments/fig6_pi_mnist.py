r"""Figure 6 of the LN paper: Baseline, BatchNorm and LayerNorm on permutation-invariant MNIST
(784-1000-1000-10, Adam) at batch sizes 128 and 4, both trained for the same number of epochs,
each method's learning rate tuned per batch size on the validation set, several seeds, the
paper's claims put to the test.

  python scripts/sweep.py --experiment=experiments/fig6_pi_mnist.py:cpu --workdir=/tmp/f6 \
      --parallel=2 --vmap_seeds --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/f6

The paper's protocol (the variant without a suffix) on a GPU, stopping cleanly when an allocation
runs out (rerun the same command to go on; not run here, where no GPU was available):

  python scripts/sweep.py --experiment=experiments/fig6_pi_mnist.py --workdir=runs/fig6 \
      --vmap_seeds --time_budget=4:00:00

The paper (Section 6.6): "layer normalization is robust to the batch-sizes and exhibits a faster
training convergence comparing to batch normalization that is applied to all layers". CLAIMS
states that sentence at equal epochs: LN's final training NLL below BN's at batch 128 and at
batch 4 (faster convergence), LN's loss of test accuracy from batch 128 to batch 4 smaller than
BN's (robustness), and LN's test error below BN's at batch 4. The paper claims nothing there
against the un-normalized baseline; the claims that compare with it are marked as not the
paper's.

Variants after the colon (sizes in the table below; docs/comparisons.md has measured costs):
  (none)  the paper's protocol for a GPU: 60 epochs at both batch sizes on the 55,000 training
          images, 3 learning rates per batch size, 3 seeds (54 runs).
  cpu     about an hour on 2 quiet cores: 2 epochs at both batch sizes on the 55,000 training
          images, 2 learning rates per batch size, 3 seeds (36 runs).
  quick   about 3 minutes on 2 quiet cores: 2 epochs at both batch sizes on the first 3,000
          training images, one learning rate, 3 seeds (18 runs); it shows the pipeline.
  seeds4  LayerNorm at batch 4, 4 seeds, 2,000 steps: times --vmap_seeds against separate runs.
"""

from ln_jax.errors import UserError

BASE_CONFIG = 'configs/pi_mnist.py'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'batch_size')
TUNED = ('learning_rate',)     # compare picks, per group, the value with the best mean validation
SELECT_BY = 'valid_error'      # the evaluation each run is read at: its best validation error
NORMS = ('none', 'batch', 'layer')  # the paper's Baseline, BatchNorm, LayerNorm
BATCH_SIZES = (128, 4)
# The figure: one panel per batch size with every method in it, on the paper's axes (NLL on a
# log scale; test error on 0.5-2.5% where the runs end inside it).
PANEL_BY = 'batch_size'
PLOT = {'train_loss': {'log': True}, 'test_error': {'ylim': (0.005, 0.025)}}


def _groups(norm):
  return {size: {'norm': norm, 'batch_size': size} for size in BATCH_SIZES}


LN, BN, BASE = _groups('layer'), _groups('batch'), _groups('none')
NOT_THE_PAPERS = "(not the paper's claim) "
CLAIMS = (
    # "faster training convergence": at equal epochs, LN's training NLL is lower (read at each
    # run's final evaluation: every run trains the same number of epochs).
    {'kind': 'less', 'a': LN[128], 'b': BN[128], 'metric': 'train_loss', 'at': 'final',
     'text': 'LayerNorm has lower training NLL than BatchNorm at batch 128 after equal epochs'},
    {'kind': 'less', 'a': LN[4], 'b': BN[4], 'metric': 'train_loss', 'at': 'final',
     'text': 'LayerNorm has lower training NLL than BatchNorm at batch 4 after equal epochs'},
    # "robust to the batch-sizes": from batch 128 to 4, LN loses less test accuracy than BN,
    # (BN4 - BN128) - (LN4 - LN128) > 0.
    {'kind': 'gap_larger', 'a': BN[128], 'b': BN[4], 'than_a': LN[128], 'than_b': LN[4],
     'metric': 'test_error',
     'text': 'LayerNorm loses less test error than BatchNorm from batch 128 to batch 4'},
    {'kind': 'less', 'a': LN[4], 'b': BN[4], 'metric': 'test_error',
     'text': 'LayerNorm has lower test error than BatchNorm at batch 4'},
    # Against the baseline, and LN's own robustness in absolute terms: not in the paper.
    {'kind': 'less', 'a': LN[128], 'b': BASE[128], 'metric': 'test_error',
     'text': NOT_THE_PAPERS + 'LayerNorm has lower test error than the baseline at batch 128'},
    {'kind': 'less', 'a': LN[4], 'b': BASE[4], 'metric': 'test_error',
     'text': NOT_THE_PAPERS + 'LayerNorm has lower test error than the baseline at batch 4'},
    {'kind': 'less', 'a': LN[128], 'b': BASE[128], 'metric': 'train_loss', 'at': 'final',
     'text': NOT_THE_PAPERS + 'LayerNorm has lower training NLL than the baseline at batch 128 '
             'after equal epochs'},
    {'kind': 'within', 'a': LN[4], 'b': LN[128], 'metric': 'test_error', 'margin': 0.005,
     'text': NOT_THE_PAPERS + "LayerNorm's test error at batch 4 is within 0.5 points of its "
             'error at batch 128'},
)

# Sizes per variant. Every variant trains both batch sizes for the same `epochs`; evaluations
# (each a pass over the validation and the 10,000 test images) every `eval_every_epochs`.
# train_images / valid_images None: the 55,000 / 5,000 of the standard split.
# Sized from steps/s measured on 2 quiet cores (AMD EPYC, jax 0.10 CPU), two 3-seed vmapped
# processes side by side as `--parallel=2 --vmap_seeds` runs them: ~28 steps/s per process at
# batch 4 and ~10 at batch 128 (either norm), ~4 s per evaluation of 15,000 images x 3 seeds,
# ~20 s of start-up per process. Training E epochs on 55,000 images with 2 learning rates then
# takes about 6 x (13,750 E / 28 + 430 E / 10 + 2 x (20 + 4 x (4E + 1))) / 2 s of wall time:
# ~60 minutes at E = 2.
VARIANTS = {
    None: {'seeds': 3, 'epochs': 60.0, 'eval_every_epochs': 0.5, 'train_images': None,
           'valid_images': None,
           'learning_rates': {128: (3e-4, 1e-3, 3e-3), 4: (3e-5, 1e-4, 3e-4)}},
    'cpu': {'seeds': 3, 'epochs': 2.0, 'eval_every_epochs': 0.25, 'train_images': None,
            'valid_images': None, 'learning_rates': {128: (1e-3, 3e-3), 4: (1e-4, 3e-4)}},
    'quick': {'seeds': 3, 'epochs': 2.0, 'eval_every_epochs': 0.5, 'train_images': 3000,
              'valid_images': 1000, 'learning_rates': {128: (1e-3,), 4: (1e-4,)}},
}


def _member(norm, batch_size, learning_rate, seed, run):
  return {'norm': norm, 'batch_size': batch_size, 'learning_rate': learning_rate,
          'norm_options.unbiased_variance': batch_size == 4,  # as in the paper
          'seed': seed, **run}


def _grid(variant):
  run = {'num_epochs': variant['epochs'], 'eval_every_epochs': variant['eval_every_epochs']}
  if variant['train_images']:
    run['data.train_size'] = variant['train_images']
  if variant['valid_images']:
    run['data.valid_size'] = variant['valid_images']
  return [_member(norm, batch_size, lr, seed, run)
          for batch_size in BATCH_SIZES for norm in NORMS
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
