r"""Section 6.7 of the LN paper, convolutional networks: Baseline, BatchNorm and LayerNorm (with
GroupNorm and RMSNorm beside them) on MNIST with a small conv net, each method's learning rate
tuned on the validation set, several seeds, the paper's sentence put to the test.

  python scripts/sweep.py --experiment=experiments/conv_mnist.py:cpu --workdir=/tmp/conv \
      --vmap_seeds --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/conv

The paper reports no protocol for these experiments (no architecture, data or numbers), only:
"layer normalization offers a speedup over the baseline model without normalization, but batch
normalization outperforms the other methods." The runs here are an illustration at our settings
(configs/conv_mnist.py: two 3x3 conv layers of 32 and 64 channels, a dense layer of 128, Adam,
batch 128), not a reproduction.

Variants after the colon:
  (none)  for a GPU: none, batch, layer, group, rms; 20 epochs; 3 learning rates; 3 seeds (45 runs).
  cpu     none, batch, layer; 2 learning rates; 3 seeds (18 runs) on the 55,000 training images,
          sized to about 45 minutes on 2 quiet cores (docs/comparisons.md has the measured cost).
  quick   none, batch, layer; 1 learning rate; 3 seeds; 1 epoch on the first 10,000 images.
"""

from ln_jax.errors import UserError

BASE_CONFIG = 'configs/conv_mnist.py'
METRICS = ('test_error', 'train_loss')
GROUP_BY = ('norm',)
TUNED = ('learning_rate',)
SELECT_BY = 'valid_error'

BN, LN, BASE = {'norm': 'batch'}, {'norm': 'layer'}, {'norm': 'none'}
CLAIMS = (
    # The paper's sentence, in two parts: LN speeds training up over the baseline ...
    {'kind': 'less', 'a': LN, 'b': BASE, 'metric': 'train_loss',
     'text': "LayerNorm trains faster than the baseline (lower training NLL at equal epochs)"},
    # ... but BN outperforms the other methods.
    {'kind': 'less', 'a': BN, 'b': LN, 'metric': 'test_error',
     'text': 'BatchNorm has lower test error than LayerNorm'},
    {'kind': 'less', 'a': BN, 'b': BASE, 'metric': 'test_error',
     'text': 'BatchNorm has lower test error than the baseline'},
    {'kind': 'less', 'a': BN, 'b': LN, 'metric': 'train_loss',
     'text': 'BatchNorm trains faster than LayerNorm (lower training NLL at equal epochs)'},
    # Not the paper's claim: does LN also end with a lower test error than the baseline?
    {'kind': 'less', 'a': LN, 'b': BASE, 'metric': 'test_error',
     'text': '(not the paper\'s) LayerNorm has lower test error than the baseline'},
)

VARIANTS = {
    None: {'norms': ('none', 'batch', 'layer', 'group', 'rms'), 'seeds': 3,
           'learning_rates': (3e-4, 1e-3, 3e-3),
           'run': {'num_epochs': 20.0, 'eval_every_epochs': 0.5}},
    'cpu': {'norms': ('none', 'batch', 'layer'), 'seeds': 3, 'learning_rates': (1e-3, 3e-3),
            'run': {'num_epochs': 1.0, 'eval_every_epochs': 0.25}},
    'quick': {'norms': ('none', 'batch', 'layer'), 'seeds': 3, 'learning_rates': (1e-3,),
              'run': {'num_epochs': 1.0, 'eval_every_epochs': 0.25, 'data.train_size': 10000}},
}


def members(arg=None):
  if arg not in VARIANTS:
    raise UserError(f'unknown variant {arg!r} of conv_mnist; choose cpu, quick or none for the '
                    'full sweep')
  v = VARIANTS[arg]
  return [{'norm': norm, 'learning_rate': lr, 'seed': seed, **v['run']}
          for norm in v['norms'] for lr in v['learning_rates'] for seed in range(v['seeds'])]
