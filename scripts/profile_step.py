"""Where the time of a training step goes, per compiled XLA operation.

  python scripts/profile_step.py --config=configs/pi_mnist.py:batch_size=4
  python scripts/profile_step.py --config=configs/pi_mnist.py:batch_size=4,norm=batch --top=30

Runs the fused training loop on synthetic MNIST-shaped data under `jax.profiler` and prints the
operations by time per step (the optimized HLO, for reading the names, comes from
XLA_FLAGS=--xla_dump_to=DIR --xla_dump_hlo_as_text).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags
from ml_collections import config_flags

from ln_jax import cli
from ln_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                          lock_config=True)
_STEPS = flags.DEFINE_integer('steps', 300, 'Traced training steps (whole fused calls).')
_TOP = flags.DEFINE_integer('top', 15, 'How many operations to list.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _STEPS.value < 1 or _TOP.value < 1:
    raise UserError('--steps and --top must be >= 1')
  from benchmarks import profile  # imports JAX, after XLA_FLAGS is set below
  from ln_jax.training import config_checks
  from ln_jax import tasks
  config_checks.check_config(_CONFIG.value, tasks.load_task(_CONFIG.value))
  result = profile.profile_steps(_CONFIG.value, _STEPS.value)
  print(f"{result['ms_per_step']:.3f} ms per step over {result['steps']} traced steps "
        '(tracing included)')
  print(f"{'ms/step':>9}  {'calls/step':>10}  operation class")
  for kind, ms, calls in profile.by_class(result['operations']):
    print(f'{ms:9.3f}  {calls:10.2f}  {kind}')
  print(f"{'ms/step':>9}  {'calls/step':>10}  operation")
  for name, ms, calls in result['operations'][:_TOP.value]:
    print(f'{ms:9.3f}  {calls:10.2f}  {name}')


if __name__ == '__main__':
  # Per-operation trace events on the CPU; read when JAX starts, so set before any import of it.
  os.environ['XLA_FLAGS'] = ' '.join(
      filter(None, (os.environ.get('XLA_FLAGS', ''), '--xla_cpu_enable_xprof_traceme=true')))
  cli.run(main)
