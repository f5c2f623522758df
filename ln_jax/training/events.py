"""TensorBoard event files of a run: grouped scalars against examples seen, and HParams.

Scalars go under `train/`, `valid/`, `test/` and `perf/` (wall-clock figures and counters), and
their step is the number of training examples seen (optimizer step x batch_size), so curves of
batch 128 and batch 4 line up in TensorBoard: an epoch is the same distance on the x-axis for
both. The optimizer step itself is the scalar `perf/step`.

The HParams dashboard reads three summaries of the hparams plugin from each run: the experiment
(every hparam and metric name), the session start (this run's flattened config) and the session
end (written when the run finishes). Its metric columns are scalar tags of the same run: the last
value of each of the task's curves, plus `best/valid_<m>` and `best/test_<m>` for the task's
selection metric m (for classification `best/valid_error` and `best/test_error`: the test error at
the evaluation with the best validation error so far). A task's pictures (`Task.pictures`) are
images under `pictures/`, on the same step axis.
"""

from __future__ import annotations

import sys
import time

SPLITS = ('train', 'valid', 'test')
# The hparams plugin's names for its summaries (tensorboard/plugins/hparams/metadata.py).
PLUGIN_NAME = 'hparams'
EXPERIMENT_TAG = '_hparams_/experiment'
SESSION_START_TAG = '_hparams_/session_start_info'
SESSION_END_TAG = '_hparams_/session_end_info'


def summary_writer(workdir: str):
  """tensorboardX's writer (event files without TensorFlow), imported without torch: it imports
  torch when installed only to accept torch tensors, and that takes seconds; we log floats."""
  hide_torch = 'torch' not in sys.modules
  if hide_torch:
    sys.modules['torch'] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter
  finally:
    if hide_torch:
      del sys.modules['torch']
  return SummaryWriter(logdir=workdir, flush_secs=30)


def scalar_tag(key: str) -> str:
  """'train_loss' -> 'train/loss', 'valid_error' -> 'valid/error', 'steps_per_s' -> 'perf/...'."""
  split, _, rest = key.partition('_')
  return f'{split}/{rest}' if split in SPLITS and rest else f'perf/{key}'


def hparam_values(flat_config: dict) -> dict:
  """The flattened config as hparams: numbers, strings and bools; tuples as '1000x1000'; unset
  placeholders (None) left out, since the plugin has no value for them."""
  values = {}
  for key, value in sorted(flat_config.items()):
    if isinstance(value, (tuple, list)):
      value = 'x'.join(str(v) for v in value)
    if value is not None:
      values[key] = value
  return values


def _plugin_summary(tag: str, **plugin_data):
  from tensorboardX.proto import plugin_hparams_pb2
  from tensorboardX.proto.summary_pb2 import Summary
  from tensorboardX.proto.summary_pb2 import SummaryMetadata
  content = plugin_hparams_pb2.HParamsPluginData(version=0, **plugin_data).SerializeToString()
  metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME,
                                                                    content=content))
  return Summary(value=[Summary.Value(tag=tag, metadata=metadata)])


def metric_tags(task) -> tuple:
  """The HParams metric columns of a run of `task`."""
  select = task.select_by
  return tuple(f'{split}/{name}' for split in SPLITS for name in task.metric_names) + (
      f'best/valid_{select}', f'best/test_{select}')


def _hparams_summaries(hparams: dict, tags):
  """The experiment and session-start summaries for one run's hparams."""
  from tensorboardX.proto import api_pb2
  from tensorboardX.proto import plugin_hparams_pb2
  start = plugin_hparams_pb2.SessionStartInfo(start_time_secs=time.time())
  infos = []
  for key, value in hparams.items():
    if isinstance(value, bool):
      start.hparams[key].bool_value, kind = value, api_pb2.DATA_TYPE_BOOL
    elif isinstance(value, (int, float)):
      start.hparams[key].number_value, kind = float(value), api_pb2.DATA_TYPE_FLOAT64
    else:
      start.hparams[key].string_value, kind = str(value), api_pb2.DATA_TYPE_STRING
    infos.append(api_pb2.HParamInfo(name=key, type=kind))
  experiment = api_pb2.Experiment(
      hparam_infos=infos,
      metric_infos=[api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t)) for t in tags])
  return (_plugin_summary(EXPERIMENT_TAG, experiment=experiment),
          _plugin_summary(SESSION_START_TAG, session_start_info=start))


class EventWriter:
  """Writes one run's evaluations as grouped scalars and its config as HParams.

  `previous`: the metrics.jsonl records a resumed run already holds, so that the best validation
  value of the task's selection metric carries over.
  """

  def __init__(self, workdir: str, flat_config: dict, task, previous=()):
    self._tb = summary_writer(workdir)
    self._batch_size = flat_config['batch_size']
    select = task.metric(task.select_by)
    self._keys = (f'valid_{select.name}', f'test_{select.name}')
    self._sign = 1.0 if select.lower_is_better else -1.0
    self._best = None  # (valid, test) at the best valid value of the selection metric
    for record in previous:
      self._track_best(record)
    for summary in _hparams_summaries(hparam_values(flat_config), metric_tags(task)):
      self._tb._get_file_writer().add_summary(summary)  # pylint: disable=protected-access

  def _track_best(self, record: dict) -> bool:
    valid = record.get(self._keys[0])
    if valid is None or (self._best is not None
                         and self._sign * valid >= self._sign * self._best[0]):
      return False
    self._best = (valid, record.get(self._keys[1]))
    return True

  def write(self, record: dict) -> None:
    examples = record['step'] * self._batch_size
    for key, value in record.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(scalar_tag(key), value, global_step=examples)
    if record.get('steps_per_s') is not None:
      self._tb.add_scalar('perf/examples_per_s', record['steps_per_s'] * self._batch_size,
                          global_step=examples)
    self._track_best(record)
    if self._best is not None:
      for key, value in zip(self._keys, self._best):
        tag = 'best/' + key
        if value is not None:
          self._tb.add_scalar(tag, value, global_step=examples)

  def write_pictures(self, pictures: dict, step: int) -> None:
    """Images [H, W] or [H, W, C] (uint8) under `pictures/<name>`, at the examples seen."""
    for name, image in pictures.items():
      self._tb.add_image(f'pictures/{name}', image, global_step=step * self._batch_size,
                         dataformats='HW' if image.ndim == 2 else 'HWC')

  def finish(self) -> None:
    """Marks the run's HParams session as ended successfully."""
    from tensorboardX.proto import api_pb2
    from tensorboardX.proto import plugin_hparams_pb2
    end = plugin_hparams_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS,
                                            end_time_secs=time.time())
    self._tb._get_file_writer().add_summary(  # pylint: disable=protected-access
        _plugin_summary(SESSION_END_TAG, session_end_info=end))

  def close(self) -> None:
    self._tb.flush()
    self._tb.close()
