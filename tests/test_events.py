"""TensorBoard event files as TensorBoard reads them: grouped scalars against examples seen, and
the HParams plugin's experiment, session start and session end."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import classification_task
from conftest import load_config
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from ln_jax.training import events
from ln_jax.training import rundir
from ln_jax.training import train


def _load(workdir):
  accumulator = event_accumulator.EventAccumulator(workdir, size_guidance={'scalars': 0})
  accumulator.Reload()
  return accumulator


def _hparams_data(accumulator):
  return accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  config = load_config('configs/pi_mnist.py', 'tiny').unlock()
  config.batch_size, config.num_epochs, config.eval_every_epochs = 25, 1.0, 0.5
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_scalars_are_grouped_and_stepped_by_examples_seen(tiny_run):
  config, workdir = tiny_run
  accumulator = _load(workdir)
  tags = set(accumulator.Tags()['scalars'])
  assert {'train/loss', 'train/error', 'valid/loss', 'valid/error', 'test/loss', 'test/error',
          'perf/elapsed_s', 'perf/steps_per_s', 'perf/examples_per_s', 'perf/epoch',
          'perf/step', 'best/valid_error', 'best/test_error'} <= tags
  assert all(t.split('/')[0] in ('train', 'valid', 'test', 'perf', 'best') for t in tags)
  records = rundir.read_metrics(workdir)
  test_error = accumulator.Scalars('test/error')
  # 500 training images at batch 25: 20 steps per epoch, evaluations at steps 10 and 20.
  assert [e.step for e in test_error] == [r['step'] * config.batch_size for r in records] \
      == [250, 500]
  assert [e.value for e in test_error] == pytest.approx([r['test_error'] for r in records])
  assert [e.value for e in accumulator.Scalars('perf/step')] == [10, 20]
  best = min(records, key=lambda r: r['valid_error'])
  assert accumulator.Scalars('best/valid_error')[-1].value == pytest.approx(best['valid_error'])
  assert accumulator.Scalars('best/test_error')[-1].value == pytest.approx(best['test_error'])


def test_hparams_hold_the_flattened_config_and_the_metrics(tiny_run):
  config, workdir = tiny_run
  content = _hparams_data(_load(workdir))
  assert set(content) == {events.EXPERIMENT_TAG, events.SESSION_START_TAG,
                          events.SESSION_END_TAG}
  start = hparams_metadata.parse_session_start_info_plugin_data(
      content[events.SESSION_START_TAG])
  assert start.hparams['norm'].string_value == config.norm
  assert start.hparams['batch_size'].number_value == 25
  assert start.hparams['learning_rate'].number_value == pytest.approx(config.learning_rate)
  assert start.hparams['seed'].number_value == 0
  assert start.hparams['data.source'].string_value == 'synthetic'
  assert start.hparams['model.hidden_sizes'].string_value == '32x32'
  assert start.hparams['data.permute'].bool_value is True
  assert 'data.train_size' not in start.hparams  # unset placeholder
  experiment = hparams_metadata.parse_experiment_plugin_data(content[events.EXPERIMENT_TAG])
  assert {h.name for h in experiment.hparam_infos} == set(start.hparams)
  kinds = {h.name: h.type for h in experiment.hparam_infos}
  assert kinds['norm'] == api_pb2.DATA_TYPE_STRING
  assert kinds['batch_size'] == api_pb2.DATA_TYPE_FLOAT64
  assert [m.name.tag for m in experiment.metric_infos] == list(
      events.metric_tags(classification_task())) == [
          'train/loss', 'train/error', 'valid/loss', 'valid/error', 'test/loss', 'test/error',
          'best/valid_error', 'best/test_error']
  end = hparams_metadata.parse_session_end_info_plugin_data(content[events.SESSION_END_TAG])
  assert end.status == api_pb2.STATUS_SUCCESS


def test_an_unfinished_run_has_no_session_end_and_a_resumed_one_keeps_its_best(tmp_path):
  flat = {'batch_size': 4, 'norm': 'layer', 'learning_rate': 1e-3}
  first = str(tmp_path / 'first')
  os.makedirs(first)
  writer = events.EventWriter(first, flat, classification_task())
  writer.write({'step': 10, 'valid_error': 0.2, 'test_error': 0.25})
  writer.close()
  assert set(_hparams_data(_load(first))) == {events.EXPERIMENT_TAG, events.SESSION_START_TAG}

  resumed = str(tmp_path / 'resumed')
  os.makedirs(resumed)
  previous = [{'step': 10, 'valid_error': 0.1, 'test_error': 0.12}]
  writer = events.EventWriter(resumed, flat, classification_task(), previous)
  writer.write({'step': 20, 'valid_error': 0.15, 'test_error': 0.11})
  writer.finish()
  writer.close()
  accumulator = _load(resumed)
  assert accumulator.Scalars('best/valid_error')[-1].value == pytest.approx(0.1)
  assert accumulator.Scalars('best/test_error')[-1].value == pytest.approx(0.12)
  assert accumulator.Scalars('valid/error')[-1].step == 80
  assert len(glob.glob(os.path.join(resumed, 'events.out.tfevents.*'))) == 1


def test_scalar_tags_and_hparam_values():
  assert [events.scalar_tag(k) for k in ('train_loss', 'valid_error', 'test_error',
                                         'elapsed_s', 'skipped_steps', 'epoch')] == \
      ['train/loss', 'valid/error', 'test/error', 'perf/elapsed_s', 'perf/skipped_steps',
       'perf/epoch']
  assert events.hparam_values({'a': (1, 2), 'b': None, 'c': 'x'}) == {'a': '1x2', 'c': 'x'}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
  request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                   headers={'Content-Type': 'application/json'})
  with urllib.request.urlopen(request, timeout=30) as response:
    return json.loads(response.read())


def test_the_hparams_dashboard_lists_each_run_as_tensorboard_serves_it(tmp_path):
  """A real TensorBoard server over two run folders: what its HParams tab fetches, and (where
  headless Chromium is installed) a screenshot of the tab."""
  for norm, batch_size in (('layer', 4), ('batch', 128)):
    workdir = tmp_path / f'norm-{norm}_bs-{batch_size}'
    workdir.mkdir()
    writer = events.EventWriter(str(workdir), {'norm': norm, 'batch_size': batch_size,
                                               'learning_rate': 1e-3, 'seed': 0},
                                classification_task())
    writer.write({'step': 10, 'train_loss': 0.5, 'valid_error': 0.1, 'test_error': 0.2})
    writer.finish()
    writer.close()
  port = _free_port()
  server = subprocess.Popen(
      [sys.executable, '-m', 'tensorboard.main', f'--logdir={tmp_path}', f'--port={port}',
       '--host=127.0.0.1', '--reload_interval=1'],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  url = f'http://127.0.0.1:{port}'
  try:
    groups, deadline = [], time.time() + 120
    while len(groups) < 2 and time.time() < deadline:
      time.sleep(1)
      try:
        groups = _post(f'{url}/data/plugin/hparams/session_groups', {
            'experimentName': '', 'startIndex': 0, 'sliceSize': 10, 'colParams': [],
            'allowedStatuses': ['STATUS_UNKNOWN', 'STATUS_SUCCESS', 'STATUS_FAILURE',
                                'STATUS_RUNNING']}).get('sessionGroups', [])
      except OSError:  # not listening yet
        continue
    by_name = {g['name']: g for g in groups}
    assert set(by_name) == {'norm-layer_bs-4', 'norm-batch_bs-128'}
    assert by_name['norm-layer_bs-4']['hparams'] == {'norm': 'layer', 'batch_size': 4.0,
                                                    'learning_rate': 0.001, 'seed': 0.0}
    metrics = {m['name']['tag']: m for m in by_name['norm-batch_bs-128']['metricValues']}
    assert metrics['valid/error']['value'] == pytest.approx(0.1)
    assert metrics['valid/error']['trainingStep'] == 10 * 128  # examples seen
    assert metrics['best/test_error']['value'] == pytest.approx(0.2)
    chromium = shutil.which('chromium') or shutil.which('chromium-browser')
    if chromium:
      screenshot = tmp_path / 'hparams.png'
      subprocess.run([chromium, '--headless', '--no-sandbox', '--disable-gpu',
                      '--disable-dev-shm-usage', f'--screenshot={screenshot}',
                      '--window-size=1400,800', '--virtual-time-budget=20000',
                      f'{url}/#hparams'], capture_output=True, timeout=180, check=True)
      assert screenshot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  finally:
    server.terminate()
    server.wait(timeout=30)
