r"""Trains every member of an experiment, each into DIR/<member name>/; re-running skips finished
members and re-runs unfinished ones.

  python scripts/sweep.py --experiment=experiments/fig6_pi_mnist.py:quick --workdir=/tmp/f6 \
      --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/f6

`--config.key=value` flags apply to every member. `--parallel=N` runs N members at once,
`--shard=i/n` only every n-th member from the i-th (one machine of n writing to shared storage).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from ln_jax import cli

_EXPERIMENT = flags.DEFINE_string('experiment', None, 'Experiment file (path[:variant]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory; one run directory per member.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Members trained at once, each in its own '
                                 'process (1: one after another in this process).')
_SHARD = flags.DEFINE_string('shard', '0/1', 'i/n: run only members i, i+n, i+2n, ...')
_ONLY = flags.DEFINE_list('only', None, 'Run only these members (names as in sweep.json).')
_VMAP_SEEDS = flags.DEFINE_bool('vmap_seeds', None, 'Train members that differ only in seed as '
                                'one vmapped program (default: per backend, as measured).')
flags.mark_flags_as_required(['experiment', 'workdir'])


def _parse_flags(argv):
  """absl flags, plus the `--config.key=value` overrides, which go to main untouched."""
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  rest = cli.parse_flags([a for a in argv if a not in overrides])
  return rest + overrides


def main(argv):
  extra = [a for a in argv[1:] if not a.startswith('--config.')]
  if extra:
    raise app.UsageError(f'unexpected arguments: {" ".join(extra)}')
  from ln_jax.sweeps import sweep
  from ln_jax.sweeps import sweep_runner
  common = sweep.parse_common_overrides([a for a in argv[1:] if a.startswith('--config.')])
  shard = sweep.parse_shard(_SHARD.value)
  experiment = sweep.load_experiment(_EXPERIMENT.value)
  from ln_jax.training import resume
  resume.check_workdir(_WORKDIR.value)  # run_sweep creates it once every value is checked
  sweep_runner.run_sweep(experiment, _WORKDIR.value, common, parallel=_PARALLEL.value,
                         shard=shard, only=_ONLY.value, vmap_seeds=_VMAP_SEEDS.value)


if __name__ == '__main__':
  cli.run(main, flags_parser=_parse_flags)
