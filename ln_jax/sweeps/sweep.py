"""Sweeps: an experiment file enumerates members; each member trains into its own run directory.

An experiment file (see experiments/fig6_pi_mnist.py) holds:
  BASE_CONFIG = 'configs/pi_mnist.py'   # path relative to the repository root, optional ':variant'
  def members(arg) -> list[dict]        # dotted config key -> value, one dict per member
  METRICS = ('test_error', 'train_loss')  # what scripts/compare.py shows first
  GROUP_BY = ('norm', 'batch_size')       # optional: how compare groups runs into curves
  TUNED = ('learning_rate',)              # optional: keys compare selects per group
  SELECT_BY = 'valid_error'               # optional: the metric selection reads
  CLAIMS = ({'kind': 'less', ...}, ...)   # optional: claims to test (ln_jax/analysis/claims.py)

A member's config is the base config, then its overrides, then the sweep's command-line
`--config.key=value` overrides (which apply to every member and win). A member is named after the
overrides that tell it apart from the others, e.g. `norm-batch_bs-4_seed-0`, so its directory name
is readable and stays the same when the command is run again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import json
import os
import re
import traceback

import ml_collections

from ln_jax import configlib
from ln_jax import data as data_lib
from ln_jax.training import rundir
from ln_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP_FILE = 'sweep.json'
SHORT_KEYS = {'batch_size': 'bs', 'learning_rate': 'lr', 'num_epochs': 'ep'}


@dataclasses.dataclass(frozen=True)
class Member:
  name: str
  overrides: dict


@dataclasses.dataclass(frozen=True)
class Experiment:
  spec: str                 # what --experiment said: path[:arg]
  base_config: str          # config file path[:variant]: absolute, or relative to the
                            # experiment file's folder or else to the repository root
  members: tuple[Member, ...]
  metrics: tuple[str, ...]
  group_by: tuple[str, ...]
  tuned: tuple[str, ...] = ()
  select_by: str | None = None
  claims: tuple[dict, ...] = ()


def _load_module(path: str, what: str):
  if not os.path.isfile(path):
    raise UserError(f'{what} {path} does not exist; check the path')
  spec = importlib.util.spec_from_file_location(
      '_ln_jax_' + re.sub(r'\W', '_', os.path.splitext(os.path.basename(path))[0]), path)
  module = importlib.util.module_from_spec(spec)
  with _errors_in(path, what):
    spec.loader.exec_module(module)
  return module


@contextlib.contextmanager
def _errors_in(path: str, what: str):
  """Turns an exception raised by the code of the file at `path` into one line naming the file
  and the line; a UserError it raises on purpose passes as it is."""
  try:
    yield
  except UserError:
    raise
  except Exception as e:  # the file's own code: SyntaxError, ImportError, anything
    if isinstance(e, SyntaxError) and e.filename == path:
      line, message = e.lineno, e.msg
    else:
      lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
      line, message = (lines[-1] if lines else '?'), ' '.join(str(e).split())[:200]
    raise UserError(f'{what} {path} fails at line {line}: {type(e).__name__}: {message}; fix '
                    'the file') from None


def _split_spec(spec: str) -> tuple[str, str | None]:
  path, _, arg = spec.partition(':')
  return path, (arg or None)


def _resolve(path: str) -> str:
  return path if os.path.isabs(path) else os.path.join(REPO_ROOT, path)


def load_experiment(spec: str) -> Experiment:
  """Loads `path[:arg]` and enumerates its members for `arg`."""
  path, arg = _split_spec(spec)
  if not os.path.isfile(path) and not os.path.isfile(_resolve(path)):
    raise UserError(f'experiment file {path} does not exist; check the --experiment path')
  module = _load_module(path if os.path.isfile(path) else _resolve(path), 'experiment file')
  for name in ('BASE_CONFIG', 'members'):
    if not hasattr(module, name):
      raise UserError(f'experiment file {path} defines no {name}; see '
                      'experiments/fig6_pi_mnist.py for the expected shape')
  with _errors_in(module.__file__, 'experiment file'):
    overrides = [dict(o) for o in module.members(arg)]
  if not overrides:
    raise UserError(f'experiment {spec} has no members; check its variant {arg!r}')
  names = member_names(overrides)
  return Experiment(spec=spec, base_config=_base_config_path(module),
                    members=tuple(Member(n, o) for n, o in zip(names, overrides)),
                    # Unset: compare uses the task's selection metric.
                    metrics=tuple(getattr(module, 'METRICS', ())),
                    group_by=tuple(getattr(module, 'GROUP_BY', ('norm', 'batch_size'))),
                    tuned=tuple(getattr(module, 'TUNED', ())),
                    select_by=getattr(module, 'SELECT_BY', None),
                    claims=tuple(dict(c) for c in getattr(module, 'CLAIMS', ())))


def _base_config_path(module) -> str:
  """The experiment's BASE_CONFIG, found beside the experiment file (a researcher's own
  experiment and config) before the repository root (the built-in ones)."""
  path, arg = _split_spec(module.BASE_CONFIG)
  beside = os.path.join(os.path.dirname(os.path.abspath(module.__file__)), path)
  if not os.path.isabs(path) and os.path.isfile(beside):
    return beside + (f':{arg}' if arg else '')
  return module.BASE_CONFIG


def _format_value(value) -> str:
  if isinstance(value, (tuple, list)):
    return 'x'.join(_format_value(v) for v in value)
  if isinstance(value, bool):
    return str(value).lower()
  return re.sub(r'[^A-Za-z0-9.+=-]', '-', str(value))


def member_names(overrides: list[dict]) -> list[str]:
  """Names from the keys that tell members apart, e.g. 'norm-batch_bs-4_seed-0'.

  A key that varies only together with keys already named (a learning rate chosen per batch size)
  is left out: the name stays short and still unique.
  """
  keys = list(dict.fromkeys(k for o in overrides for k in o))
  named = []
  for key in keys:
    seen = {}
    for o in overrides:
      known = tuple(repr(o.get(k)) for k in named)
      if seen.setdefault(known, repr(o.get(key))) != repr(o.get(key)):
        named.append(key)
        break
  names = []
  for o in overrides:
    parts = [f'{SHORT_KEYS.get(k.split(".")[-1], k.split(".")[-1])}-{_format_value(o.get(k))}'
             for k in named]
    names.append('_'.join(parts) or 'run')
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise UserError(f'the experiment lists identical members ({", ".join(duplicates)}); make '
                    'every member\'s overrides differ')
  return names


def load_base_config(base_config: str) -> ml_collections.ConfigDict:
  path, arg = _split_spec(base_config)
  module = _load_module(_resolve(path), 'config file')
  with _errors_in(module.__file__, 'config file'):
    return module.get_config(arg)


def set_values(config: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
  """Sets dotted keys to Python values; the config's types and lock catch mistakes."""
  for key, value in overrides.items():
    if key in configlib.MOVED_KEYS:
      raise UserError(f'{where}: {configlib.unknown_key_message(key)}')
    try:
      config.update_from_flattened_dict({key: value})
    except (KeyError, AttributeError, TypeError) as e:
      raise UserError(f'{where}: cannot set {key}={value!r} ({str(e).splitlines()[0]}); '
                      'fix the key or the value type') from None


def member_config(base: ml_collections.ConfigDict, member: Member,
                  common: dict[str, str]) -> ml_collections.ConfigDict:
  """Base config + the member's overrides + the command line's `--config.key=value` texts."""
  config = copy.deepcopy(base)
  set_values(config, member.overrides, f'member {member.name}')
  for key, text in common.items():
    configlib.override(config, key, text)
  return data_lib.with_absolute_dir(config)


def parse_common_overrides(args: list[str]) -> dict[str, str]:
  """['--config.data.source=idx'] -> {'data.source': 'idx'}."""
  common = {}
  for arg in args:
    match = re.fullmatch(r'--config\.([\w.]+)=(.*)', arg)
    if not match:
      raise UserError(f'cannot read {arg!r}; write config overrides as --config.key=value')
    common[match.group(1)] = match.group(2)
  return common


def parse_shard(text: str) -> tuple[int, int]:
  """'1/4' -> (1, 4): this machine runs members 1, 5, 9, ... (counting from 0)."""
  match = re.fullmatch(r'\s*(\d+)\s*/\s*(\d+)\s*', text or '')
  if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
    raise UserError(f'--shard={text!r} must be i/n with 0 <= i < n, e.g. --shard=0/4')
  return int(match.group(1)), int(match.group(2))


def select(members, shard: tuple[int, int] = (0, 1), only: list[str] | None = None):
  """The members a process runs: every n-th from the i-th, or the ones named in `only`."""
  if only:
    known = {m.name for m in members}
    unknown = [n for n in only if n not in known]
    if unknown:
      raise UserError(f'unknown member {unknown[0]!r}; the experiment has '
                      f'{", ".join(sorted(known))}')
    return [m for m in members if m.name in only]
  i, n = shard
  return list(members[i::n])


def seed_groups(members) -> list[list[Member]]:
  """Members grouped by everything but their seed, in first-appearance order."""
  groups = {}
  for m in members:
    rest = json.dumps({k: v for k, v in m.overrides.items() if k != 'seed'}, sort_keys=True,
                      default=repr)
    groups.setdefault(rest, []).append(m)
  return list(groups.values())


def _stored(config) -> dict:
  return json.loads(json.dumps(config.to_dict()))  # the form sweep.json and config.json store


def check_sweep_file(workdir: str, configs: dict, common: dict[str, str]) -> None:
  """Refuses a DIR that holds a sweep whose members resolve to other configs than `configs`
  (member name -> config), whose runs a compare would otherwise mix with these. The resolved
  configs are compared, not the flags: `LN_JAX_DATA_DIR` and `--config.data.dir` naming the same
  folder are the same sweep. Reads only."""
  from ln_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, SWEEP_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = json.load(f)
  fix = f'use another --workdir (or delete {path} to mix the two)'
  if 'configs' not in previous:  # written before sweep.json held the resolved configs
    if previous.get('common_overrides') != common:
      raise UserError(f'{workdir} holds a sweep run with --config overrides '
                      f'{previous.get("common_overrides")}, not {common}; {fix}')
    return
  for name, saved in previous['configs'].items():
    if name in configs:
      differences = workdir_lib.config_differences(saved, configs[name])
      if differences:
        shown = '; '.join(differences[:3]) + ('; ...' if len(differences) > 3 else '')
        raise UserError(f'{workdir} holds a sweep whose member {name} has another config '
                        f'({shown}); {fix}')


def write_sweep_file(workdir: str, experiment: Experiment, common: dict[str, str],
                     configs: dict) -> None:
  """Writes DIR/sweep.json: the experiment, its members and their resolved configs."""
  rundir.write_json_atomic(os.path.join(workdir, SWEEP_FILE), {
      'experiment': experiment.spec,
      'base_config': experiment.base_config,
      'common_overrides': common,
      'metrics': list(experiment.metrics),
      'group_by': list(experiment.group_by),
      'tuned': list(experiment.tuned),
      'select_by': experiment.select_by,
      'claims': list(experiment.claims),
      'members': [{'name': m.name, 'overrides': m.overrides} for m in experiment.members],
      'configs': {name: _stored(config) for name, config in configs.items()},
  })
