"""Failing well: each bad input gets one `error:` line, exit status 2 and an untouched workdir;
a non-finite loss stops the run naming the step and the last good checkpoint, or is skipped."""

from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import re
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from ln_jax.training import checkpoint
from ln_jax import data as data_lib
from ln_jax.training import rundir
from ln_jax.training import step as step_lib
from ln_jax.training import train
from ln_jax.training import workdir as workdir_lib
from ln_jax.errors import UserError
from conftest import classification_task
from conftest import load_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY = 'configs/pi_mnist.py:tiny'
IDX_SIZES = {'train': 120, 'test': 30}


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + b''.join(n.to_bytes(4, 'big') for n in array.shape)
  path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(folder: pathlib.Path) -> pathlib.Path:
  """A small, valid set of the four MNIST IDX files."""
  folder.mkdir()
  rng = np.random.default_rng(0)
  for split, (images_name, labels_name) in data_lib.IDX_FILES.items():
    n = IDX_SIZES[split]
    _write_idx(folder / images_name, rng.integers(0, 256, (n, 28, 28)))
    _write_idx(folder / labels_name, rng.integers(0, 10, n))
  return folder


def _corrupt(folder: pathlib.Path, how: str) -> pathlib.Path:
  path = folder / data_lib.IDX_FILES['train'][0]
  raw = path.read_bytes()
  path.write_bytes(b'PK\x03\x04' + raw[4:] if how == 'magic' else raw[:-100])
  return folder


def _tree(root: pathlib.Path) -> dict:
  """Every path under `root`, with the bytes of the files: equal trees mean nothing changed."""
  return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
          for p in sorted(root.rglob('*'))}


def _pi_mnist_config(variant: str):
  spec = importlib.util.spec_from_file_location('pi_mnist_config', REPO / 'configs/pi_mnist.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _config(variant: str):
  # 20 steps per epoch, 40 in all: evaluations and checkpoints every 10 steps.
  return _pi_mnist_config('tiny,data.valid_size=200,batch_size=20,num_epochs=2,steps_per_call=5,'
                          'eval_every_epochs=0.5,checkpoint_every_epochs=0.5,' + variant)


def _existing_run(workdir: pathlib.Path) -> pathlib.Path:
  """A workdir holding the start of a `tiny` run (norm=layer)."""
  workdir.mkdir()
  rundir.write_json_atomic(str(workdir / rundir.CONFIG_FILE),
                           rundir.describe_run(_pi_mnist_config('tiny'), classification_task()))
  (workdir / rundir.METRICS_FILE).write_text('{"step": 16, "train_loss": 1.5}\n')
  return workdir


# Each case runs scripts/train.py: name -> (its arguments given the case's folder, text its error
# line must hold). Unless a case says otherwise: --config=configs/pi_mnist.py:tiny and
# --workdir=<folder>/run. One case per place a mistake is caught: flag parsing, the config file's
# variant, check_config, the data, the workdir.
CASES = {
    'unknown_key': (lambda d: ['--config.nrom=layer'],
                    "unknown config key 'nrom' (did you mean 'norm'?)"),
    'unknown_nested_key': (lambda d: ['--config.model.widht=3'],
                           "unknown config key 'model.widht'"),
    'unknown_key_in_variant': (lambda d: [f'--config={TINY},nrom=layer'],
                               "unknown config key 'nrom'"),
    # Keys that moved into norm_options (or model.) name their new place.
    'moved_key': (lambda d: ['--config.bn_momentum=0.9'],
                  "config key 'bn_momentum' moved to 'norm_options.momentum'; use "
                  '--config.norm_options.momentum=VALUE'),
    'moved_key_in_variant': (lambda d: [f'--config={TINY},gn_groups=2'],
                             "config key 'gn_groups' moved to 'norm_options.groups'; use "
                             '--config.norm_options.groups=VALUE'),
    'moved_nested_key': (lambda d: ['--config.model.bn_max_steps=3'],
                         "config key 'model.bn_max_steps' moved to 'norm_options.max_steps'; use "
                         '--config.norm_options.max_steps=VALUE'),
    'wrong_type': (lambda d: ['--config.batch_size=abc'], 'batch_size=abc'),
    'wrong_type_in_variant': (lambda d: [f'--config={TINY},learning_rate=fast'],
                              "learning_rate='fast' should be of type float"),
    'missing_config_file': (lambda d: ['--config=configs/no_such.py'],
                            'config file configs/no_such.py not found'),
    'zero_learning_rate': (lambda d: ['--config.learning_rate=0'],
                           'learning_rate=0.0 must be positive'),
    'batch_larger_than_training_set': (lambda d: ['--config.batch_size=501'],
                                       'larger than the 500 training examples'),
    'missing_data_dir': (lambda d: ['--config.data.source=idx', f'--config.data.dir={d}/none'],
                         'is not a directory'),
    'idx_bad_magic': (lambda d: ['--config.data.source=idx', '--config.data.valid_size=20',
                                 f'--config.data.dir={_corrupt(_fake_mnist(d / "idx"), "magic")}'],
                      'bad magic number'),
    'idx_truncated': (lambda d: ['--config.data.source=idx', '--config.data.valid_size=20',
                                 f'--config.data.dir={_corrupt(_fake_mnist(d / "idx"), "cut")}'],
                      'truncated or corrupt'),
    'workdir_is_a_file': (lambda d: [f'--workdir={_touch(d / "file")}'], 'is not a directory'),
    'missing_config_file_with_key_flags': (
        lambda d: ['--config=configs/no_such.py', '--config.norm=layer'],
        'config file configs/no_such.py not found'),
    'config_file_syntax_error': (lambda d: [f'--config={_write(d / "bad.py", "def get(:")}'],
                                 'bad.py (--config) fails at line 1: SyntaxError'),
    'get_config_raises': (
        lambda d: [f'--config={_write(d / "raises.py", RAISING_CONFIG)}'],
        'raises.py (--config) fails at line 2: RuntimeError: no such variant'),
    'infinite_learning_rate': (lambda d: ['--config.learning_rate=inf'],
                               'learning_rate=inf must be a finite number'),
    'nan_num_epochs': (lambda d: ['--config.num_epochs=nan'],
                       'num_epochs=nan must be a finite number'),
    'empty_hidden_sizes': (lambda d: [f'--config={TINY},model.hidden_sizes=()'],
                           'model.hidden_sizes=() is empty'),
    'workdir_cannot_be_created': (lambda d: ['--workdir=/proc/ln_jax_none/run'],
                                  'cannot create workdir /proc/ln_jax_none/run'),
    # scripts/sweep.py: nothing, not even an empty sweep folder, is left behind.
    'experiment_fails_to_import': (
        lambda d: [f'--experiment={_write(d / "exp.py", "import no_such_module")}'],
        'exp.py fails at line 1: ModuleNotFoundError'),
    'experiment_members_raise': (
        lambda d: [f'--experiment={_write(d / "exp.py", RAISING_EXPERIMENT)}'],
        'exp.py fails at line 3: ZeroDivisionError'),
    'sweep_parallel_zero': (lambda d: [f'--experiment={FIG6}', '--parallel=0'],
                            '--parallel=0 must be at least 1'),
    'sweep_unknown_member': (lambda d: [f'--experiment={FIG6}', '--only=norm-lyaer'],
                             "unknown member 'norm-lyaer'"),
    'sweep_unknown_key': (lambda d: [f'--experiment={FIG6}', '--config.nrom=layer'],
                          "unknown config key 'nrom'"),
    'workdir_with_another_config': (
        lambda d: [f'--workdir={_existing_run(d / "run")}', '--config.norm=batch'],
        'holds a run with a different config (norm: layer -> batch); pass --fresh'),
}
if os.geteuid() != 0:  # root reads and writes whatever the permissions say
  CASES['workdir_unreadable'] = (lambda d: [f'--workdir={_locked(d / "run")}'],
                                 'is not readable and writable')

# A bad value for every key of configs/pi_mnist.py, seq_mnist.py and conv_mnist.py, checked in
# this process on each config file that has the key: key -> (the `tiny` variant's overrides, text
# of the UserError). test_every_config_key_has_a_bad_value_case fails for a key missing here.
BAD_VALUES = {
    'task': ('task=regression', "unknown task 'regression'"),
    'norm': ('norm=instance', "unknown norm 'instance'"),
    'model.norm_logits': ('model.norm_logits=maybe', "model.norm_logits='maybe' is not a boolean"),
    'norm_options.epsilon': ('norm_options.epsilon=-1.0',
                             'norm_options.epsilon=-1.0 must be >= 0'),
    'norm_options.fast_variance': ('norm_options.fast_variance=maybe',
                                   "norm_options.fast_variance='maybe' is not a"),
    # BatchNorm's settings are checked for the norms they apply to.
    'norm_options.momentum': ('norm=batch,norm_options.momentum=1.0',
                              'norm_options.momentum=1.0 must be in [0, 1)'),
    'norm_options.unbiased_variance': ('norm_options.unbiased_variance=2',
                                       "norm_options.unbiased_variance='2' is not a"),
    'norm_options.eval_stats': ('norm=batch,norm_options.eval_stats=mean',
                                "norm_options.eval_stats='mean' must be one of running, batch"),
    'norm_options.population_batches': (
        'norm=batch,norm_options.eval_stats=population,norm_options.population_batches=0',
        'norm_options.population_batches=0 must be a positive number of batches'),
    'norm_options.groups': ('norm=group,norm_options.groups=3',
                            'norm_options.groups=3 must be a positive divisor'),
    'norm_options.renorm_r_max': ('norm=batch_renorm,norm_options.renorm_r_max=0.5',
                                  'norm_options.renorm_r_max=0.5 must be >= 1'),
    'norm_options.renorm_d_max': ('norm=batch_renorm,norm_options.renorm_d_max=-1.0',
                                  'norm_options.renorm_d_max=-1.0 must be >= 0'),
    'norm_options.renorm_start_step': ('norm=batch_renorm,norm_options.renorm_start_step=-1',
                                       'norm_options.renorm_start_step=-1 must be >= 0'),
    'norm_options.renorm_r_max_step': (
        'norm=batch_renorm,norm_options.renorm_start_step=10,norm_options.renorm_r_max_step=5',
        'norm_options.renorm_r_max_step=5 and renorm_d_max_step='),
    'norm_options.renorm_d_max_step': (
        'norm=batch_renorm,norm_options.renorm_start_step=30000,'
        'norm_options.renorm_d_max_step=20000',
        'renorm_d_max_step=20000 must be >= renorm_start_step=30000'),
    'norm_options.ghost_batches': ('norm_options.ghost_batches=3',
                                   'norm_options.ghost_batches=3 must divide batch_size=16'),
    'norm_options.gamma_init': ('norm_options.gamma_init=0.0',
                                'norm_options.gamma_init=0.0 must be positive'),
    'norm_options.max_steps': ('norm_options.max_steps=0',
                               'norm_options.max_steps=0 must be positive'),
    'model.name': ('model.name=cnn', "unknown model.name 'cnn'"),
    'model.hidden_sizes': ('model.hidden_sizes=()', 'model.hidden_sizes=() is empty'),
    'model.num_classes': ('model.num_classes=5', 'model.num_classes=5 must be 10'),
    'model.activation': ('model.activation=swish9', "unknown model.activation 'swish9'"),
    'model.api': ('model.api=haiku', "unknown model.api 'haiku'; choose one of linen, nnx"),
    'model.features': ('model.features=0', 'model.features=(0,) must be one or more positive'),
    'model.cell': ('model.cell=lstm2', "unknown model.cell 'lstm2'"),
    'model.hidden_size': ('model.hidden_size=0', 'model.hidden_size=0 must be positive'),
    'model.num_layers': ('model.num_layers=0', 'model.num_layers=0 must be positive'),
    'model.pixels_per_step': ('model.pixels_per_step=5', 'model.pixels_per_step=5 must divide'),
    'model.forget_bias': ('model.forget_bias=1e999', 'model.forget_bias=inf must be a finite'),
    'model.initial_state': ('model.initial_state=ones', "unknown model.initial_state 'ones'"),
    'model.step_wise': ('model.step_wise=maybe', "model.step_wise='maybe' is not a boolean"),
    'data.name': ('data.name=cifar10', "unknown data.name 'cifar10'"),
    'data.source': ('data.source=web', "unknown data.source 'web'"),
    'data.dir': ('data.source=idx,data.dir=/no/such/dir', 'data.dir=/no/such/dir is not a'),
    'data.valid_size': ('data.valid_size=-1', 'data.valid_size=-1 must be >= 0'),
    'data.train_size': ('data.train_size=0', 'data.train_size=0 must be positive'),
    'data.permute': ('data.permute=maybe', "data.permute='maybe' is not a boolean"),
    'data.permutation_seed': ('data.permutation_seed=-1', 'data.permutation_seed=-1 must be in'),
    'data.synthetic_train_size': ('data.synthetic_train_size=0',
                                  'data.synthetic_train_size=0 and'),
    'data.synthetic_test_size': ('data.synthetic_test_size=-5',
                                 'data.synthetic_test_size=-5 must be positive'),
    'optimizer': ('optimizer=adagrad', "unknown optimizer 'adagrad'"),
    'learning_rate': ('learning_rate=1e999', 'learning_rate=inf must be a finite number'),
    'weight_decay': ('weight_decay=-0.1', 'weight_decay=-0.1 must be >= 0'),
    'grad_clip_norm': ('grad_clip_norm=-1.0', 'grad_clip_norm=-1.0 must be >= 0'),
    'batch_size': ('batch_size=0', 'batch_size=0 must be positive'),
    'num_epochs': ('num_epochs=1e999', 'num_epochs=inf must be a finite number'),
    'seed': ('seed=-1', 'seed=-1 must be in [0, 2**32)'),
    'dtype': ('dtype=float8', "dtype='float8' must be"),
    'fuse_weight_grad': ('fuse_weight_grad=maybe', "fuse_weight_grad='maybe' is not a boolean"),
    'eval_every_epochs': ('eval_every_epochs=0.0', 'eval_every_epochs=0.0 must be positive'),
    'num_evals': ('num_evals=0', 'num_evals=0 must be at least 1'),
    'eval_batch_size': ('eval_batch_size=0', 'eval_batch_size=0 must be positive'),
    'steps_per_call': ('steps_per_call=0', 'steps_per_call=0 must be positive'),
    'num_devices': ('num_devices=99', 'num_devices=99 but'),
    'log_every_seconds': ('log_every_seconds=-1.0', 'log_every_seconds=-1.0 must be >= 0'),
    'checkpoint_every_epochs': ('checkpoint_every_epochs=0.0',
                                'checkpoint_every_epochs=0.0 must be positive'),
    'checkpoint_keep': ('checkpoint_keep=0', 'checkpoint_keep=0 must be at least 1'),
    'on_nonfinite': ('on_nonfinite=ignore', "on_nonfinite='ignore' must be one of stop, skip"),
}
CONFIG_FILES = ('configs/pi_mnist.py', 'configs/seq_mnist.py', 'configs/conv_mnist.py')


def _config_keys(config_file: str) -> list[str]:
  return sorted(rundir.flatten(load_config(config_file, 'tiny').to_dict()))


FIG6 = 'experiments/fig6_pi_mnist.py:quick'
RAISING_CONFIG = 'def get_config(arg=None):\n  raise RuntimeError(f"no such variant {arg}")\n'
RAISING_EXPERIMENT = 'BASE_CONFIG = "configs/pi_mnist.py:tiny"\ndef members(arg=None):\n  1 / 0\n'


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text)
  return path


def _touch(path: pathlib.Path) -> pathlib.Path:
  path.write_text('not a folder')
  return path


def _locked(path: pathlib.Path) -> pathlib.Path:
  path.mkdir()
  path.chmod(0)
  return path


def _run_case(name: str, folder: pathlib.Path) -> dict:
  folder.mkdir()
  args = CASES[name][0](folder)
  script = 'sweep.py' if any(a.startswith('--experiment=') for a in args) else 'train.py'
  if script == 'train.py' and not any(a.startswith('--config=') for a in args):
    args = [f'--config={TINY}', *args]
  if not any(a.startswith('--workdir=') for a in args):
    args.append(f'--workdir={folder / "run"}')
  before = _tree(folder)
  proc = subprocess.run([sys.executable, f'scripts/{script}', *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120)
  after = _tree(folder)
  if (folder / 'run').exists():
    (folder / 'run').chmod(0o755)  # let pytest clean up a locked folder
  return {'returncode': proc.returncode, 'stderr': proc.stderr, 'touched': before != after}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(CASES))
def test_bad_input_gets_one_error_line_and_changes_nothing(tmp_path, name):
  # One case per test, so that pytest-xdist spreads the cases (each a few seconds of imports)
  # over its workers instead of every worker running all of them.
  result, expected = _run_case(name, tmp_path / name), CASES[name][1]
  lines = result['stderr'].strip().splitlines()
  assert result['returncode'] == 2, result['stderr'][-2000:]
  assert 'Traceback' not in result['stderr']
  assert [line for line in lines if line.startswith('error:')] == [lines[-1]]
  assert expected in lines[-1]
  assert not result['touched'], 'the workdir or its folder changed'


@pytest.mark.parametrize('config_file', CONFIG_FILES)
def test_every_config_key_has_a_bad_value_case(config_file):
  assert [key for key in _config_keys(config_file) if key not in BAD_VALUES] == []


@pytest.mark.parametrize('config_file,key', [(f, k) for f in CONFIG_FILES
                                             for k in _config_keys(f)])
def test_bad_value_of_each_config_key_is_refused_before_anything_is_written(config_file, key,
                                                                           tmp_path):
  variant, message = BAD_VALUES[key]
  workdir = tmp_path / 'run'
  with pytest.raises(UserError, match=re.escape(message)):
    train.train_and_evaluate(load_config(config_file, f'tiny,{variant}'), str(workdir))
  assert not workdir.exists()


def test_wrong_type_inside_a_tuple_is_refused(tmp_path):
  config = _config('')
  with config.unlocked():
    config.model.hidden_sizes = ('a', 'b')  # what --config.model.hidden_sizes=a,b gives
  with pytest.raises(UserError, match=re.escape("model.hidden_sizes=('a', 'b') must be positive")):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def test_workdir_that_cannot_be_created_is_refused(tmp_path):
  (tmp_path / 'file').write_text('not a folder')
  with pytest.raises(UserError, match='cannot create workdir .*file is not a writable directory'):
    workdir_lib.check_workdir(str(tmp_path / 'file' / 'run'))


@pytest.fixture
def poison_inputs(monkeypatch):
  """poison_inputs(steps) makes the model's inputs NaN in those training steps (counted from 1),
  so that the loss, the gradients and BatchNorm's batch statistics all turn NaN."""
  real_train_step = step_lib.train_step

  def poison(steps):
    def train_step(state, batch):
      bad = jnp.isin(state.step + 1, jnp.asarray(steps))
      apply = state.apply_fn

      def poisoned_apply(variables, inputs, **kwargs):
        return apply(variables, jnp.where(bad, jnp.nan, inputs), **kwargs)

      new_state, metrics = real_train_step(state.replace(apply_fn=poisoned_apply), batch)
      return new_state.replace(apply_fn=apply), metrics

    monkeypatch.setattr(step_lib, 'train_step', train_step)
    step_lib.train_steps.clear_cache()

  yield poison
  monkeypatch.undo()
  step_lib.train_steps.clear_cache()


@pytest.mark.slow
def test_nonfinite_loss_stops_naming_the_step_and_last_good_checkpoint(tmp_path, poison_inputs):
  poison_inputs([21])
  with pytest.raises(train.TrainingDiverged) as diverged:
    train.train_and_evaluate(_config('on_nonfinite=stop'), str(tmp_path))
  message = str(diverged.value)
  assert 'non-finite at step 21 ' in message
  assert f'last good checkpoint is step 20 in {tmp_path}/checkpoints/20' in message
  assert [r['step'] for r in rundir.read_metrics(str(tmp_path))] == [10, 20]
  assert checkpoint.manager(str(tmp_path), 2).all_steps() == [10, 20]
  assert not rundir.is_complete(str(tmp_path))


@pytest.mark.slow
def test_nonfinite_loss_with_skip_skips_the_update_and_counts_it(tmp_path, poison_inputs):
  poison_inputs([13, 27])
  # BatchNorm: a skipped step must also leave the running averages (used to evaluate) alone.
  train.train_and_evaluate(_config('norm=batch,on_nonfinite=skip'), str(tmp_path))
  records = rundir.read_metrics(str(tmp_path))
  assert [r['skipped_steps'] for r in records] == [0, 1, 2, 2]
  assert all(r[key] is not None and math.isfinite(r[key])
             for r in records for key in ('train_loss', 'test_loss'))
  assert rundir.is_complete(str(tmp_path))
