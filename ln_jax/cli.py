"""What every entry point in scripts/ shares: one error line instead of a traceback."""

from __future__ import annotations

import os
import re
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


def _unknown_key_message(error: BaseException) -> str:
  """ml_collections' nested, quoted message reduced to the key and its suggestion."""
  text = str(error)
  key = re.search(r"([A-Za-z_][\w.]*)", text)
  suggestion = re.search(r'Did you mean "([\w.]+)"', text)
  message = f'unknown config key {key.group(1) if key else text!r}'
  if suggestion:
    message += f' (did you mean {suggestion.group(1)!r}?)'
  return message + '; see the config file for the valid names'


def run(main, flags_parser=app.parse_flags_with_usage) -> None:
  """`absl.app.run(main)`, printing one `error: ...` line on stderr and exiting with status 2
  for a UserError anywhere, and for a --config override that names no config field (which
  ml_collections reports as an AttributeError/KeyError while the flags are parsed)."""
  parsed = False

  def main_after_parsing(argv):
    nonlocal parsed
    parsed = True
    return main(argv)

  try:
    app.run(main_after_parsing, flags_parser=flags_parser)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    if parsed:
      raise
    print(f'error: {_unknown_key_message(e)}', file=sys.stderr)
    sys.exit(2)
