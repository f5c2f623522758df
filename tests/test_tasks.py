"""Tasks: a researcher's own task (examples/regression) trains, sweeps (vmapped too), resumes
and compares with its own metrics; the built-in configs give the metrics they gave before the
task interface; vmapped seeds run through the one loop; data streamed from the host gives the
numbers of data kept on the device; bad tasks get one error line."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ln_jax import tasks
from ln_jax.errors import UserError
from ln_jax.training import metrics_repair
from ln_jax.training import resume_check
from ln_jax.training import rundir
from ln_jax.training import signals
from ln_jax.training import train

REPO = pathlib.Path(__file__).resolve().parents[1]
REGRESSION = REPO / 'examples' / 'regression'
GOLDEN = REPO / 'tests' / 'data' / 'golden_metrics.json'


def _config(path, arg=None):
  import importlib.util
  spec = importlib.util.spec_from_file_location('config_under_test', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def _run(args, cwd=REPO, env=None):
  return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=600)


def _metrics(workdir):
  return [{k: v for k, v in r.items() if k not in metrics_repair.WALL_CLOCK_KEYS}
          for r in rundir.read_metrics(str(workdir))]


def test_user_task_trains_with_its_own_metrics(tmp_path):
  config = _config(REGRESSION / 'config.py', 'tiny')
  final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert set(final) >= {'train_loss', 'train_abs_error', 'valid_loss', 'valid_abs_error',
                        'test_loss', 'test_abs_error'}
  assert 'test_error' not in final
  records = rundir.read_metrics(str(tmp_path / 'run'))
  assert records[-1]['train_loss'] < records[0]['train_loss']  # it learns
  described = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert described['task']['name'] == 'regression'
  assert described['task']['select_by'] == 'abs_error'
  assert [m['name'] for m in described['task']['metrics']] == ['loss', 'abs_error']


@pytest.mark.slow
def test_user_task_sweeps_vmapped_and_compares_with_its_units(tmp_path):
  sweep_dir = tmp_path / 'sweep'
  result = _run(['scripts/sweep.py', f'--experiment={REGRESSION / "experiment.py"}:tiny',
                 f'--workdir={sweep_dir}', '--vmap_seeds'])
  assert result.returncode == 0, result.stderr[-2000:]
  runs = sorted(p.name for p in sweep_dir.iterdir() if (p / 'summary.json').exists())
  assert len(runs) == 4
  result = _run(['scripts/compare.py', str(sweep_dir)])
  assert result.returncode == 0, result.stderr[-2000:]
  table = (sweep_dir / 'comparison_test_abs_error.md').read_text()
  assert 'test_abs_error at best valid_abs_error (target units)' in table
  assert '(%)' not in table
  claims = json.loads((sweep_dir / 'claims.json').read_text())
  assert claims[0]['metric'] == 'test_abs_error'
  assert claims[0]['verdict'] in ('holds', 'does not hold', 'inconclusive')
  assert (sweep_dir / 'comparison_test_abs_error.png').stat().st_size > 0
  bad = _run(['scripts/compare.py', str(sweep_dir), '--metric=test_error'])
  assert bad.returncode == 2
  assert bad.stderr.strip().splitlines()[-1].startswith(
      "error: --metric 'test_error' is not a metric of task 'regression'")


def _uninterrupted_and_stopped(configs, tmp_path, stop_after_checks: int):
  """Runs `configs` vmapped to the end in one folder, and in another stops them (as SIGTERM
  would) after `stop_after_checks` chunks and resumes them; returns both folders' runs."""
  names = [f'seed{c.seed}' for c in configs]
  reference = [str(tmp_path / 'reference' / n) for n in names]
  train.train_seeds(configs, reference)

  class StopLater(signals.StopRequest):
    checks = 0

    def __bool__(self):
      StopLater.checks += 1
      if StopLater.checks > stop_after_checks:
        self.signum = 15
      return self.signum is not None

  resumed = [str(tmp_path / 'resumed' / n) for n in names]
  original = signals.catch_stop_signals

  import contextlib

  @contextlib.contextmanager
  def stopping():
    yield StopLater()

  signals.catch_stop_signals = stopping
  try:
    with pytest.raises(Exception) as stopped:
      train.train_seeds(configs, resumed)
  finally:
    signals.catch_stop_signals = original
  assert 'SIGTERM' in str(stopped.value)
  assert not any(os.path.exists(os.path.join(w, rundir.SUMMARY_FILE)) for w in resumed)
  train.train_seeds(configs, resumed)
  return reference, resumed


@pytest.mark.slow
def test_vmapped_seeds_resume_exactly_after_a_stop(tmp_path):
  base = _config(REPO / 'configs' / 'pi_mnist.py',
                 'tiny,checkpoint_every_epochs=0.25,steps_per_call=4').unlock()
  configs = []
  for seed in (0, 1):
    c = base.copy_and_resolve_references()
    c.seed = seed
    configs.append(c.lock())
  reference, resumed = _uninterrupted_and_stopped(configs, tmp_path, stop_after_checks=7)
  for a, b in zip(reference, resumed):
    assert metrics_repair.metrics_differences(a, b) == []
    assert os.path.exists(os.path.join(b, rundir.SUMMARY_FILE))


@pytest.mark.slow
def test_vmapped_seeds_match_separate_runs_and_call_sizes(tmp_path):
  """Each seed of a vmapped group follows its separate run (up to float rounding in batched
  products), and the group's numbers do not depend on steps_per_call, bit for bit."""
  def configs(variant):
    base = _config(REPO / 'configs' / 'pi_mnist.py', f'tiny,{variant}').unlock()
    out = []
    for seed in (3, 4):
      c = base.copy_and_resolve_references()
      c.seed = seed
      out.append(c.lock())
    return out
  grouped = configs('steps_per_call=8')
  train.train_seeds(grouped, [str(tmp_path / 'a' / str(c.seed)) for c in grouped])
  regrouped = configs('steps_per_call=3')
  train.train_seeds(regrouped, [str(tmp_path / 'b' / str(c.seed)) for c in regrouped])
  for c in grouped:
    assert _metrics(tmp_path / 'a' / str(c.seed)) == _metrics(tmp_path / 'b' / str(c.seed))
    train.train_and_evaluate(c, str(tmp_path / 'alone' / str(c.seed)))
    alone = _metrics(tmp_path / 'alone' / str(c.seed))
    together = _metrics(tmp_path / 'a' / str(c.seed))
    for x, y in zip(alone, together):
      for key in ('train_loss', 'valid_loss', 'test_loss'):
        assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_data_streamed_from_the_host_gives_the_same_numbers(tmp_path):
  task_file = tmp_path / 'streamed_task.py'
  task_file.write_text(
      'import dataclasses\n'
      'from ln_jax.tasks import classification\n'
      'def get_task():\n'
      '  return dataclasses.replace(classification.TASK, name="streamed",\n'
      '                             stream_from_host=True)\n')
  config = _config(REPO / 'configs' / 'pi_mnist.py', 'tiny,norm=batch')
  train.train_and_evaluate(config, str(tmp_path / 'device'))
  streamed = config.unlock()
  streamed.task = str(task_file)
  train.train_and_evaluate(streamed.lock(), str(tmp_path / 'host'))
  assert _metrics(tmp_path / 'device') == _metrics(tmp_path / 'host')


@pytest.mark.slow
def test_user_task_resumes_identically_after_sigkill(tmp_path):
  variant = 'tiny,num_epochs=6,checkpoint_every_epochs=0.75,steps_per_call=4,checkpoint_keep=3'
  result = resume_check.run_check([f'--config={REGRESSION / "config.py"}:{variant}'],
                                  str(tmp_path / 'runs'), signals=['KILL'], timeout=300)
  assert result['returncodes'] == (0, 0)
  assert result['stages'][0]['returncode'] == -9
  assert result['differences'] == []
  assert result['resumed_steps'] == result['reference_steps']


@pytest.mark.slow
@pytest.mark.parametrize('name', ['pi_mnist_tiny_layer', 'pi_mnist_tiny_batch_population',
                                  'pi_mnist_tiny_batch4', 'seq_mnist_tiny_batch',
                                  'seq_mnist_tiny_gru_layer'])
def test_builtin_configs_give_the_metrics_recorded_before_tasks(name, tmp_path):
  """tests/data/golden_metrics.json holds the metrics.jsonl of the tiny presets as the code
  before the task interface wrote them (the same numbers, bit for bit, on the machine that
  recorded them; other CPUs may round differently, hence the tolerance)."""
  golden = json.loads(GOLDEN.read_text())[name]
  config_arg, *overrides = golden['command'].split()
  path, variant = config_arg.split(':')
  result = _run(['scripts/train.py', f'--config={path}:{variant}', f'--workdir={tmp_path}/run',
                 *overrides], env={'LN_JAX_DATA_DIR': ''})
  assert result.returncode == 0, result.stderr[-2000:]
  got = _metrics(tmp_path / 'run')
  assert [r['step'] for r in got] == [r['step'] for r in golden['metrics']]
  for new, old in zip(got, golden['metrics']):
    assert new.keys() == old.keys()
    for key, value in old.items():
      assert new[key] == pytest.approx(value, rel=2e-3, abs=1e-5), (key, new['step'])


@pytest.mark.parametrize('body,message', [
    ('', 'defines no get_task()'),
    ('def get_task():\n  return 3\n', 'not an ln_jax.tasks.Task'),
    ('from ln_jax.tasks import Task, Metric\n'
     'def get_task():\n'
     '  return Task("t", None, None, None, metrics=(Metric("mse"),))\n', "reports no 'loss'"),
    ('from ln_jax.tasks import Task, Metric\n'
     'def get_task():\n'
     '  return Task("t", None, None, None, select_by="accuracy")\n',
     "selects on 'accuracy', which it does not report"),
    ('raise RuntimeError("broken")\n', 'failed to load (RuntimeError: broken)'),
])
def test_bad_task_files_get_one_line(tmp_path, body, message):
  task_file = tmp_path / 'task.py'
  task_file.write_text(body)
  config = _config(REPO / 'configs' / 'pi_mnist.py', 'tiny').unlock()
  config.task = str(task_file)
  with pytest.raises(UserError) as error:
    tasks.load_task(config)
  assert message in str(error.value)
  assert '\n' not in str(error.value)


def _bad_loss_task(tmp_path, loss_body: str) -> str:
  task_file = tmp_path / 'bad_loss.py'
  task_file.write_text(
      'import dataclasses\n'
      'import jax.numpy as jnp\n'
      'from ln_jax.tasks import classification\n'
      'def loss(logits, batch):\n'
      f'  {loss_body}\n'
      'def get_task():\n'
      '  return dataclasses.replace(classification.TASK, name="bad", loss=loss)\n')
  return str(task_file)


@pytest.mark.slow
@pytest.mark.parametrize('loss_body,message', [
    ("return {'loss': jnp.mean(logits), 'error': logits[:, 0]}",
     "returned 'loss' with shape () for a batch of 16; return one value per example"),
    ("return {'loss': logits[:, 0]}", "does not return the metric 'error' it declares"),
    ("return logits[:, 0]", 'return a dict'),
])
def test_bad_losses_stop_before_anything_is_written(tmp_path, loss_body, message):
  workdir = tmp_path / 'run'
  result = _run(['scripts/train.py', '--config=configs/pi_mnist.py:tiny', f'--workdir={workdir}',
                 f'--config.task={_bad_loss_task(tmp_path, loss_body)}'])
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, last
  assert not workdir.exists()


@pytest.mark.slow
@pytest.mark.parametrize('flag,message', [
    ('--config.task=nope', "error: unknown task 'nope'"),
    ('--config.bn_momentum=0.9',
     "error: config key 'bn_momentum' moved to 'norm_options.momentum'"),
    ('--config.norm_logits=true', "error: config key 'norm_logits' moved to 'model.norm_logits'"),
    ('--config.norm_options.groups=7', 'error: norm_options.groups=7 must be a positive divisor'),
])
def test_bad_task_and_norm_settings_get_one_line(tmp_path, flag, message):
  workdir = tmp_path / 'run'
  result = _run(['scripts/train.py', '--config=configs/pi_mnist.py:tiny', f'--workdir={workdir}',
                 flag, '--config.norm=group'])
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert not workdir.exists()


@pytest.mark.slow
def test_a_moved_key_in_an_experiment_names_its_new_place(tmp_path):
  experiment = tmp_path / 'old_experiment.py'
  experiment.write_text("BASE_CONFIG = 'configs/pi_mnist.py:tiny'\n"
                        "def members(arg=None):\n"
                        "  return [{'bn_momentum': 0.9, 'seed': 0}]\n")
  result = _run(['scripts/sweep.py', f'--experiment={experiment}',
                 f'--workdir={tmp_path / "sweep"}'])
  assert result.returncode == 2
  assert "config key 'bn_momentum' moved to 'norm_options.momentum'" in result.stderr
  assert not (tmp_path / 'sweep').exists()


def test_metric_descriptions_round_trip():
  task = tasks.load_task(_config(REPO / 'configs' / 'pi_mnist.py', 'tiny'))
  described = task.describe()
  assert described['select_by'] == 'error'
  error = next(m for m in described['metrics'] if m['name'] == 'error')
  assert error['scale'] == 100.0 and error['unit'] == '%' and error['lower_is_better']
  replaced = dataclasses.replace(task, select_by='loss')
  assert replaced.describe()['select_by'] == 'loss'
  assert np.isclose(task.metric('loss').scale, 1.0)


@pytest.mark.slow
def test_vmapped_seeds_evaluate_with_population_statistics(tmp_path):
  """Population statistics (once refused by vmapped seeds) give each seed its separate run's
  evaluations: each seed draws its own population batches from its own data."""
  base = _config(REPO / 'configs' / 'pi_mnist.py',
                 'tiny,norm=batch,norm_options.eval_stats=population').unlock()
  configs = []
  for seed in (0, 1):
    c = base.copy_and_resolve_references()
    c.seed = seed
    configs.append(c.lock())
  train.train_seeds(configs, [str(tmp_path / f'v{c.seed}') for c in configs])
  for c in configs:
    train.train_and_evaluate(c, str(tmp_path / f's{c.seed}'))
    for x, y in zip(_metrics(tmp_path / f'v{c.seed}'), _metrics(tmp_path / f's{c.seed}')):
      assert x['test_loss'] == pytest.approx(y['test_loss'], rel=1e-5)
      assert x['valid_error'] == pytest.approx(y['valid_error'], abs=1e-6)
