"""The run directory: config.json, metrics.jsonl, TensorBoard events and checkpoints/."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata

import jax

from ln_jax.errors import UserError

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'  # written last: its presence means the run finished
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml_collections', 'absl-py',
            'tensorflow-datasets', 'numpy', 'tensorboardX')


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes through a synced temporary file and a rename, so readers never see half a file."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix='.tmp_')
  os.chmod(tmp, 0o644)
  with os.fdopen(fd, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
  write_bytes_atomic(path, text.encode('utf-8'))


def write_json_atomic(path: str, obj) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def package_versions() -> dict[str, str]:
  versions = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return versions


def git_commit() -> str | None:
  """The commit of the ln_jax code that runs, with '-dirty' for uncommitted changes."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=root,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ('-dirty' if dirty else '')


def device_info() -> dict:
  devices = jax.devices()
  return {'backend': jax.default_backend(), 'count': len(devices),
          'kind': devices[0].device_kind, 'platform': platform.platform()}


def describe_run(config, task) -> dict:
  """config.json's content: the resolved config, the task's metrics (names, units, direction,
  the selection metric: what compare reads) and what produced the run."""
  return {'config': config.to_dict(), 'task': task.describe(), 'versions': package_versions(),
          'git_commit': git_commit(), 'device': device_info()}


def flatten(tree: dict, prefix: str = '') -> dict:
  """A nested config dict as {'data.source': 'idx', ...}, lists as tuples (JSON stores tuples
  as lists)."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f'{prefix}{key}.'))
    else:
      flat[prefix + key] = tuple(value) if isinstance(value, list) else value
  return flat


def _finite_or_none(value):
  return value if not isinstance(value, float) or math.isfinite(value) else None


class MetricsWriter:
  """Appends one JSON object per evaluation to metrics.jsonl and mirrors it to TensorBoard
  (`events`: grouped tags against examples seen, the config as HParams)."""

  def __init__(self, workdir: str, config, task):
    from ln_jax.training import events
    self._workdir = workdir
    self._path = os.path.join(workdir, METRICS_FILE)
    self._events = events.EventWriter(workdir, flatten(config.to_dict()), task,
                                      read_metrics(workdir))

  def write(self, record: dict) -> None:
    record = {k: _finite_or_none(v) for k, v in record.items()}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())
    self._events.write({k: v for k, v in record.items() if v is not None})

  def write_pictures(self, pictures: dict, step: int, final: bool) -> None:
    """The task's pictures of the evaluation at `step`: PNG files and TensorBoard images."""
    from ln_jax.training import pictures as pictures_lib
    pictures_lib.save(self._workdir, pictures, final)
    self._events.write_pictures(pictures, step)

  def finish(self) -> None:
    """The run completed: its HParams session ends."""
    self._events.finish()

  def close(self) -> None:
    self._events.close()


class NoMetricsWriter:
  """MetricsWriter's stand-in on the processes other than 0 of a multi-process run: they compute
  every record too, but one copy of the run's files is written, by process 0."""

  def write(self, record: dict) -> None:
    del record

  def write_pictures(self, pictures: dict, step: int, final: bool) -> None:
    del pictures, step, final

  def finish(self) -> None:
    pass

  def close(self) -> None:
    pass


def parse_metrics_line(line: str) -> tuple[dict | None, str]:
  """(the record, '') for a whole metrics.jsonl line, else (None, what is wrong with it)."""
  if not line.endswith('\n'):
    return None, 'it is cut short'
  try:
    record = json.loads(line)
  except ValueError as e:
    return None, f'it is not JSON: {e}'
  if not isinstance(record, dict) or type(record.get('step')) is not int:
    return None, 'it has no integer "step"'
  return record, ''


def metrics_lines(workdir: str) -> list[str]:
  """The lines of metrics.jsonl, with their line ends ([] when there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  try:
    with open(path, errors='replace') as f:
      return f.read().splitlines(keepends=True)
  except FileNotFoundError:
    return []
  except OSError as e:
    raise UserError(f'cannot read {path} ({e.strerror}); fix its permissions') from None


def describe_line(workdir: str, number: int, line: str, problem: str) -> str:
  """'<workdir>/metrics.jsonl line 3 is damaged (...): '<start of it>''."""
  shown = line.rstrip('\n')
  shown = shown[:60] + ('...' if len(shown) > 60 else '')
  return f'{os.path.join(workdir, METRICS_FILE)} line {number} is damaged ({problem}): {shown!r}'


def read_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl's records; a damaged line raises UserError naming it and the fix."""
  records = []
  for number, line in enumerate(metrics_lines(workdir), 1):
    if not line.strip():
      continue
    record, problem = parse_metrics_line(line)
    if record is None:
      raise UserError(describe_line(workdir, number, line, problem) + '; repair or delete that '
                      'line (running the same training command again rewrites the lines after '
                      'the checkpoint of an unfinished run)')
    records.append(record)
  return records


def read_config(workdir: str) -> dict:
  """config.json's content; an unreadable one raises UserError naming the file and the fix."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      described = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'cannot read {path} ({e}); restore it, or delete the run') from None
  if not isinstance(described, dict) or not isinstance(described.get('config'), dict):
    raise UserError(f'{path} holds no "config" object; restore it, or delete the run')
  return described


def is_complete(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, SUMMARY_FILE))
