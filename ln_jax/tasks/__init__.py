"""Tasks: what a run trains and how it is scored (`Task`, `Metric`), and `load_task(config)`.

`config.task` names a built-in task ('classification': the MNIST classifiers; 'draw': DRAW on
binarized MNIST) or a Python file of the user's, e.g.
`config.task = 'my_tasks/regression.py'`, that defines `get_task() -> ln_jax.tasks.Task`. A
relative path is read from the working directory, as experiment files are.
"""

from __future__ import annotations

import importlib.util
import os

from ln_jax.errors import UserError
from ln_jax.tasks.task import Metric
from ln_jax.tasks.task import Task

BUILTIN = ('classification', 'draw')
_LOADED = {}  # (path, mtime) -> Task: one object per file, so compiled steps are reused


def _builtin(name: str) -> Task:
  if name == 'classification':
    from ln_jax.tasks import classification
    return classification.TASK
  if name == 'draw':
    from ln_jax.tasks import draw
    return draw.TASK
  raise KeyError(name)


def _from_file(path: str) -> Task:
  where = os.path.abspath(path)
  if not os.path.isfile(where):
    raise UserError(f'task file {path} not found; set config.task to one of '
                    f'{", ".join(BUILTIN)} or to a .py file that defines get_task()')
  key = (where, os.path.getmtime(where))
  if key in _LOADED:
    return _LOADED[key]
  spec = importlib.util.spec_from_file_location(
      'ln_jax_user_task_' + os.path.splitext(os.path.basename(where))[0], where)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # the user's file: name it and the line instead of a traceback
    raise UserError(f'task file {path} failed to load ({type(e).__name__}: {e}); fix the '
                    'file') from None
  if not callable(getattr(module, 'get_task', None)):
    raise UserError(f'task file {path} defines no get_task(); add a get_task() that returns '
                    'an ln_jax.tasks.Task')
  task = module.get_task()
  check_task(task, path)
  _LOADED[key] = task
  return task


def check_task(task, where: str) -> None:
  """Raises UserError, naming `where`, for a task that cannot be trained."""
  if not isinstance(task, Task):
    raise UserError(f'get_task() of {where} returned {type(task).__name__}, not an '
                    'ln_jax.tasks.Task; return Task(...)')
  names = task.metric_names
  if 'loss' not in names:
    raise UserError(f"task {task.name!r} ({where}) reports no 'loss' metric; add "
                    "Metric('loss', ...): it is the objective training minimizes")
  if len(set(names)) != len(names):
    raise UserError(f'task {task.name!r} ({where}) names a metric twice ({", ".join(names)}); '
                    'give each metric its own name')
  if task.select_by not in names:
    raise UserError(f'task {task.name!r} ({where}) selects on {task.select_by!r}, which it does '
                    f'not report ({", ".join(names)}); set select_by to one of them')


def load_task(config) -> Task:
  """The task `config.task` names (see the module docstring)."""
  name = config.task
  if name in BUILTIN:
    return _builtin(name)
  if name.endswith('.py'):
    return _from_file(name)
  raise UserError(f'unknown task {name!r}; set config.task to one of {", ".join(BUILTIN)} or '
                  'to the path of a .py file that defines get_task()')
