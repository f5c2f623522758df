r"""Figure 6 of the LN paper: Baseline, BatchNorm and LayerNorm on permutation-invariant MNIST
(784-1000-1000-10, Adam) at batch sizes 128 and 4.

  python scripts/sweep.py --experiment=experiments/fig6_pi_mnist.py:quick --workdir=/tmp/f6 \
      --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/f6

Variants after the colon:
  (none)  the paper's sweep: 3 seeds, 60 epochs on the 55,000 training images (18 runs).
  quick   1 seed, 5 epochs on the first 20,000 training images (6 runs, minutes on a CPU).
  seeds4  LayerNorm at batch 4, 4 seeds, 2,000 steps: times --vmap_seeds against separate runs.
"""

from ln_jax.errors import UserError

BASE_CONFIG = 'configs/pi_mnist.py'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm', 'batch_size')
NORMS = ('none', 'batch', 'layer')  # the paper's Baseline, BatchNorm, LayerNorm
# The paper gives no learning rate: Adam's usual 1e-3 at batch 128, and a smaller step at batch 4
# where each gradient averages only four examples.
LEARNING_RATES = {128: 1e-3, 4: 1e-4}


def _member(norm, batch_size, seed, **run):
  return {'norm': norm, 'batch_size': batch_size, 'learning_rate': LEARNING_RATES[batch_size],
          'bn_unbiased_variance': batch_size == 4,  # as in the paper
          'seed': seed, **run}


def members(arg=None):
  if arg == 'seeds4':
    return [_member('layer', 4, seed, num_epochs=1.0, eval_every_epochs=0.5,
                    **{'data.train_size': 8000}) for seed in range(4)]
  if arg == 'quick':
    seeds, run = 1, {'num_epochs': 5.0, 'eval_every_epochs': 0.5, 'data.train_size': 20000}
  elif not arg:
    seeds, run = 3, {'num_epochs': 60.0, 'eval_every_epochs': 0.5}
  else:
    raise UserError(f'unknown variant {arg!r} of fig6_pi_mnist; choose quick or seeds4, or none')
  return [_member(norm, batch_size, seed, **run)
          for batch_size in (128, 4) for norm in NORMS for seed in range(seeds)]


# ---- small_batch: the normalizers made for small batches, beside BatchNorm and LayerNorm -------
# Variants small_batch (3 seeds, 60 epochs, like the paper's sweep) and small_batch_quick (1 seed,
# 5 epochs on 20,000 images): LayerNorm, BatchNorm (running averages), BatchNorm with population
# statistics of the final weights at each evaluation (Wu & Johnson 2021), Batch Renorm (Ioffe
# 2017, the paper's r_max/d_max schedule) and Group Norm (8 groups), at batch sizes 128 and 4.
# Compare with the evaluation statistics as a curve key:
#   python scripts/compare.py /tmp/f6s --group_by=norm,batch_size,bn_eval_stats
SMALL_BATCH_METHODS = (
    {'norm': 'layer'},
    {'norm': 'batch'},
    {'norm': 'batch', 'bn_eval_stats': 'population'},
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
  return [{'bn_eval_stats': 'running', **method, 'batch_size': batch_size, 'seed': seed, **run,
           'learning_rate': SMALL_BATCH_LEARNING_RATES[batch_size],
           'bn_unbiased_variance': batch_size == 4,  # the LN paper's BN at batch 4
           'bn_population_batches': POPULATION_EXAMPLES // batch_size}
          for batch_size in (128, 4) for method in SMALL_BATCH_METHODS for seed in range(seeds)]


_figure6_members = members


def members(arg=None):  # noqa: F811 -- the small-batch variants, then the ones above
  if arg in ('small_batch', 'small_batch_quick'):
    return small_batch_members(arg)
  return _figure6_members(arg)
