"""What every entry point in scripts/ shares: one error line instead of a traceback."""

from __future__ import annotations

import os
import sys

from absl import app

from ln_jax.errors import UserError


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and checks that a run can be written there."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create workdir {workdir} ({e.strerror}); choose another '
                    '--workdir') from None
  if not os.access(workdir, os.W_OK | os.X_OK):
    raise UserError(f'workdir {workdir} is not writable; fix its permissions or choose '
                    'another --workdir')


def run(main, flags_parser=app.parse_flags_with_usage) -> None:
  """`absl.app.run(main)`, turning a UserError anywhere (config parsing included) into one
  line on stderr and exit status 2."""
  try:
    app.run(main, flags_parser=flags_parser)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
