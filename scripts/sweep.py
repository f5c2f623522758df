r"""Trains every member of an experiment, each into DIR/<member name>/; re-running skips finished
members and re-runs unfinished ones.

  python scripts/sweep.py --experiment=experiments/fig6_pi_mnist.py:quick --workdir=/tmp/f6 \
      --config.data.source=idx --config.data.dir=../shared/data/mnist
  python scripts/compare.py /tmp/f6

`--config.key=value` flags apply to every member. `--parallel=N` runs N members at once,
`--shard=i/n` only every n-th member from the i-th (one machine of n writing to shared storage).
`--launcher=slurm` submits one SLURM array task per unfinished member (`--slurm_partition`,
`--slurm_time`, `--slurm_gpus_per_task`, `--slurm_array_parallelism`) and waits for them;
`--launcher=local` runs the same jobs through submitit on this machine, `--parallel` at a time.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

from ln_jax import cli
from ln_jax.errors import UserError

_EXPERIMENT = flags.DEFINE_string('experiment', None, 'Experiment file (path[:variant]).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory; one run directory per member.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Members trained at once, each in its own '
                                 'process (1: one after another in this process).')
_SHARD = flags.DEFINE_string('shard', '0/1', 'i/n: run only members i, i+n, i+2n, ...')
_ONLY = flags.DEFINE_list('only', None, 'Run only these members (names as in sweep.json).')
_VMAP_SEEDS = flags.DEFINE_bool('vmap_seeds', None, 'Train members that differ only in seed as '
                                'one vmapped program (default: per backend, as measured).')
_LAUNCHER = flags.DEFINE_enum('launcher', 'inprocess', ['inprocess', 'local', 'slurm'],
                              'inprocess: this process (or --parallel subprocesses); local: '
                              "submitit's local executor; slurm: one SLURM array task per member.")
_SLURM_PARTITION = flags.DEFINE_string('slurm_partition', None, 'SLURM partition (default: the '
                                       "cluster's).")
_SLURM_TIME = flags.DEFINE_string('slurm_time', '24:00:00', 'SLURM time limit per member '
                                  '(minutes, H:MM:SS or D-HH:MM:SS).')
_SLURM_GPUS = flags.DEFINE_integer('slurm_gpus_per_task', 1, 'GPUs per SLURM task (0: none).')
_SLURM_ARRAY_PARALLELISM = flags.DEFINE_integer('slurm_array_parallelism', None, 'SLURM array '
                                                'tasks running at once (default: all).')
_TIME_BUDGET = flags.DEFINE_string(
    'time_budget', None, 'Start no run (or vmapped seed group) that would end past this much '
    'time after the start (minutes, H:MM:SS or D-HH:MM:SS), judged by the finished ones of its '
    'batch size and model; the same command later trains the rest.')
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
  from ln_jax.sweeps import launchers
  from ln_jax.sweeps import sweep
  from ln_jax.sweeps import sweep_runner
  budget_s = None
  if _TIME_BUDGET.value is not None:
    try:
      budget_s = float(launchers.duration_seconds(_TIME_BUDGET.value))
    except ValueError:
      raise UserError(f'--time_budget={_TIME_BUDGET.value!r} is not a duration; write minutes, '
                      'H:MM:SS or D-HH:MM:SS') from None
    if budget_s <= 0:
      raise UserError(f'--time_budget={_TIME_BUDGET.value!r} must be positive')
  common = sweep.parse_common_overrides([a for a in argv[1:] if a.startswith('--config.')])
  shard = sweep.parse_shard(_SHARD.value)
  experiment = sweep.load_experiment(_EXPERIMENT.value)
  slurm = {'slurm_partition': _SLURM_PARTITION.value, 'slurm_time': _SLURM_TIME.value,
           'slurm_gpus_per_task': _SLURM_GPUS.value or None,
           'slurm_array_parallelism': _SLURM_ARRAY_PARALLELISM.value}
  sweep_runner.run_sweep(experiment, _WORKDIR.value, common, parallel=_PARALLEL.value,
                         shard=shard, only=_ONLY.value, vmap_seeds=_VMAP_SEEDS.value,
                         launcher=_LAUNCHER.value, slurm=slurm, time_budget_s=budget_s)


if __name__ == '__main__':
  cli.run(main, flags_parser=_parse_flags)
