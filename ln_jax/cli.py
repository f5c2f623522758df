"""What every entry point in scripts/ shares: one line instead of a traceback or a usage dump.

`run(main)` exits with status 2 and one `error: ...` line for a user mistake (flags and config
values included), and with 128 + the signal number after SIGTERM or Ctrl-C stopped a run.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import signal
import sys
import traceback

from absl import app
from absl import flags
from ml_collections import config_flags

from ln_jax import configlib
from ln_jax.errors import Interrupted
from ln_jax.errors import UserError


def prepare_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and checks that a run can be written there."""
  from ln_jax.training import workdir as workdir_lib  # imports JAX: keep flag errors fast
  workdir_lib.check_workdir(workdir)
  workdir_lib.make_workdir(workdir)


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
  if name in configlib.MOVED_KEYS:
    return UserError(configlib.unknown_key_message(name))
  hint = re.search(r'Did you mean "([^"]+)"', text)
  hint = f" (did you mean '{hint.group(1)}'?)" if hint else ''
  return UserError(f"unknown config key '{name}'{hint}; see the config file for the valid names")


def _config_files(argv: list[str]) -> dict[str, str]:
  """{flag name: config file path} for the config-file flags given in `argv` (read from the
  arguments themselves, so that it works when parsing them failed)."""
  files = {}
  for name in flags.FLAGS:
    if not config_flags.config_flags.is_config_flag(flags.FLAGS[name]):
      continue
    for i, arg in enumerate(argv):
      if arg.startswith(f'--{name}='):
        files[name] = arg.split('=', 1)[1]
      elif arg == f'--{name}' and i + 1 < len(argv):
        files[name] = argv[i + 1]
  return {name: path.split(':', 1)[0] for name, path in files.items()}  # drop the variant


def _check_config_files(argv: list[str]) -> None:
  for name, path in _config_files(argv).items():
    if path and not (os.path.isfile(path) and os.access(path, os.R_OK)):
      raise UserError(f'config file {path} not found or unreadable; pass --{name}=PATH to one '
                      'of the files in configs/')


def _config_file_error(error: Exception, argv: list[str]) -> UserError | None:
  """The one line for a config file that fails to load or whose get_config raises, naming the
  file and the line; None when the error did not come from a config file."""
  for name, path in _config_files(argv).items():
    where = os.path.abspath(path)
    if isinstance(error, SyntaxError) and os.path.abspath(error.filename or '') == where:
      line = error.lineno
    else:
      lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
               if os.path.abspath(frame.filename) == where]
      if not lines:
        continue
      line = lines[-1]
    message = error.msg if isinstance(error, SyntaxError) else _one_line(error)
    return UserError(f'config file {path} (--{name}) fails at line {line}: '
                     f'{type(error).__name__}: {message}; fix the file')
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, raising UserError for unknown or ill-typed flags and config keys, and
  for config files that are missing, or fail to load."""
  try:
    _check_config_files(argv)
    rest = flags.FLAGS(argv)
  except UserError:
    raise
  except flags.Error as e:
    raise UserError(f'{_one_line(e)}; fix the flag (--helpshort lists them)') from None
  except (KeyError, AttributeError) as e:
    raise _config_file_error(e, argv) or _unknown_key(e, argv) from None
  except Exception as e:  # a config file's own error: SyntaxError, ImportError, anything
    user_error = _config_file_error(e, argv)
    if user_error is None:
      raise
    raise user_error from None
  return rest


def _cpu_fingerprint() -> str:
  """The CPU's model and instruction-set flags, hashed: a compiled CPU executable may use
  instructions another host lacks, so hosts sharing a home directory get separate caches."""
  try:
    with open('/proc/cpuinfo') as f:
      lines = [line for line in f if line.startswith(('model name', 'flags'))][:2]
  except OSError:
    lines = []
  text = platform.machine() + platform.processor() + ''.join(lines)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def use_compilation_cache() -> None:
  """Keeps compiled programs on disk so that the next run of the same program (another seed of
  a sweep, a resumed run) skips XLA's compilation, several seconds per run. The cache lives in
  $LN_JAX_COMPILATION_CACHE (default ~/.cache/ln_jax/xla-<cpu>); set it to 'off' to disable.
  JAX_COMPILATION_CACHE_DIR, when set, wins. A cached executable is the same program, so the
  numbers do not change."""
  import jax  # pylint: disable=g-import-not-at-top
  where = os.environ.get('LN_JAX_COMPILATION_CACHE', '')
  if where == 'off' or jax.config.jax_compilation_cache_dir:
    return
  if not where:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    where = os.path.join(base, 'ln_jax', f'xla-{_cpu_fingerprint()}')
  try:
    os.makedirs(where, exist_ok=True)
  except OSError:
    return  # an unwritable home: compile every time, as without a cache
  jax.config.update('jax_compilation_cache_dir', where)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)


def run(main, flags_parser=parse_flags) -> None:
  """`absl.app.run(main)` with one-line errors for user mistakes and interruptions."""
  use_compilation_cache()
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
