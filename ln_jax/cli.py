"""What every entry point in scripts/ shares: one line instead of a traceback or a usage dump.

`run(main)` exits with status 2 and one `error: ...` line for a user mistake (flags and config
values included), and with 128 + the signal number after SIGTERM or Ctrl-C stopped a run.
"""

from __future__ import annotations

import os
import re
import signal
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from ln_jax.errors import Interrupted
from ln_jax.errors import UserError


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and checks that a run can be written there."""
  from ln_jax.training import resume  # imports JAX: keep flag errors fast
  resume.check_workdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise UserError(f'cannot create workdir {workdir} ({e.strerror}); choose another '
                    '--workdir') from None


def _one_line(error: BaseException) -> str:
  return ' '.join(line.strip() for line in str(error).splitlines() if line.strip())


def _unknown_key(error: BaseException, argv: list[str]) -> UserError:
  """ml_collections reports an unknown --config.KEY as a KeyError or AttributeError whose text
  holds the (escaped) missing name and maybe a 'Did you mean "name"' hint."""
  text = str(error).replace("\\'", "'")
  names = re.findall(r"'([\w-]+)", text)
  name = names[0] if names else '?'
  for arg in argv:  # name the whole dotted flag the user typed, not just its last part
    dotted = arg.lstrip('-').split('=', 1)[0]
    if arg.startswith('--') and name in dotted.split('.')[1:]:
      name = dotted.split('.', 1)[1]
      break
  hint = re.search(r'Did you mean "([^"]+)"', text)
  hint = f" (did you mean '{hint.group(1)}'?)" if hint else ''
  return UserError(f"unknown config key '{name}'{hint}; see the config file for the valid names")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, raising UserError for unknown or ill-typed flags and config keys."""
  try:
    rest = flags.FLAGS(argv)
  except flags.Error as e:
    raise UserError(f'{_one_line(e)}; fix the flag (--helpshort lists them)') from None
  except (KeyError, AttributeError) as e:
    raise _unknown_key(e, argv) from None
  for name in flags.FLAGS:
    try:
      path = config_flags.get_config_filename(flags.FLAGS[name])
    except TypeError:  # not a config flag
      continue
    path = (path or '').split(':', 1)[0]  # drop the variant after the colon
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
      raise UserError(f'config file {path} not found or unreadable; pass --{name}=PATH to one '
                      'of the files in configs/')
  return rest


def run(main, flags_parser=parse_flags) -> None:
  """`absl.app.run(main)` with one-line errors for user mistakes and interruptions."""
  try:
    app.run(main, flags_parser=flags_parser)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except Interrupted as e:
    print(f'stopped: {e}', file=sys.stderr)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:
    print('stopped: interrupted; re-run the same command to resume from the latest checkpoint',
          file=sys.stderr)
    sys.exit(128 + signal.SIGINT)
