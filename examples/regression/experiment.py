"""Does LayerNorm help on badly scaled regression inputs? A sweep of the task in task.py.

  python scripts/sweep.py --experiment=examples/regression/experiment.py --workdir=/tmp/reg_sweep
  python scripts/compare.py /tmp/reg_sweep

Baseline, LayerNorm, RMSNorm and BatchNorm, 3 seeds each; runs are read at their best validation
mean absolute error. `:tiny` is a seconds-long version for tests.
"""

BASE_CONFIG = 'config.py'   # beside this file
METRICS = ('test_abs_error', 'train_loss')
GROUP_BY = ('norm',)
SELECT_BY = 'valid_abs_error'
CLAIMS = (
    {'kind': 'less', 'a': {'norm': 'layer'}, 'b': {'norm': 'none'}, 'metric': 'test_abs_error',
     'text': 'LayerNorm reaches a lower test absolute error than the baseline'},
)


def members(arg=None):
  norms, seeds, extra = ('none', 'layer', 'rms', 'batch'), 3, {}
  if arg == 'tiny':
    norms, seeds = ('none', 'layer'), 2
    extra = {'model.hidden_sizes': (16, 16), 'data.num_train': 512, 'data.num_valid': 128,
             'data.num_test': 128, 'batch_size': 32, 'num_epochs': 2.0,
             'eval_every_epochs': 0.5, 'steps_per_call': 8}
  return [{'norm': norm, 'seed': seed, **extra} for norm in norms for seed in range(seeds)]
