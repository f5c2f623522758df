"""Checks that a run interrupted and resumed ends with the same metrics.jsonl as an uninterrupted one.

  python scripts/check_resume.py --workdir=/tmp/resume_check --signals=KILL,TERM -- \
      --config=configs/pi_mnist.py:tiny,num_epochs=12,checkpoint_every_epochs=0.6

The flags after `--` go to scripts/train.py. It trains into <workdir>/uninterrupted and, meanwhile,
into <workdir>/interrupted once per signal in --signals (KILL, TERM or INT): each time, as soon as
that run has saved a checkpoint past the previous stop and written a metrics line past that
checkpoint, it sends the signal; a last run goes to the end. The two metrics.jsonl files must then
be identical apart from the wall-clock fields (elapsed_s, steps_per_s). Exit status 0 when they
are, 1 otherwise.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags

from ln_jax import cli
from ln_jax.training import metrics_repair
from ln_jax.training import resume_check

_WORKDIR = flags.DEFINE_string('workdir', None, 'Folder for the two runs (an earlier check\'s '
                               'folder is replaced).')
_SIGNALS = flags.DEFINE_list('signals', ['KILL'], 'Signals to interrupt the run with, in order: '
                             'KILL, TERM or INT (Ctrl-C).')
_TIMEOUT = flags.DEFINE_float('timeout', 3600.0, 'Seconds to wait for any one stage.',
                              lower_bound=1.0)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  result = resume_check.run_check(argv[1:], _WORKDIR.value, _SIGNALS.value, _TIMEOUT.value)
  for stage in result['stages']:
    print(f'{stage["signal"]}: exit status {stage["returncode"]}, checkpoints '
          f'{stage["checkpoints"]}, metrics lines up to step {max(stage["metrics_steps"] or [0])}')
  if result['returncodes'] != (0, 0):
    print(f'a run failed (exit statuses {result["returncodes"]}); see {_WORKDIR.value}/*.stderr')
    return 1
  if result['differences']:
    print('metrics.jsonl differ:\n  ' + '\n  '.join(result['differences']))
    return 1
  print(f'identical: {len(result["reference_steps"])} metrics lines (wall-clock fields '
        f'{", ".join(metrics_repair.WALL_CLOCK_KEYS)} aside)')
  return 0


if __name__ == '__main__':
  cli.run(main)
