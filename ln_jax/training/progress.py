"""Terminal progress for long runs: steps/s, examples/s, ETA and the latest metrics."""

from __future__ import annotations

import datetime
import time

from absl import logging
import jax

from ln_jax.training import parallel


def _format_duration(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class Progress:
  """Logs at most every `every_s` seconds; the rate is measured over the last interval.

  In a multi-process run only process 0 logs at INFO; the others, whose lines would be the same,
  log at DEBUG.
  """

  def __init__(self, total_steps: int, batch_size: int, every_s: float, first_step: int = 0,
               shown: tuple = ('train_loss', 'valid_error', 'test_loss', 'test_error')):
    self._total = total_steps
    self._batch = batch_size
    self._every = every_s
    self._start = time.time()
    self._mark_time, self._mark_step = self._start, first_step
    self._rate = 0.0
    self._last_print = self._start
    self._level = logging.INFO if parallel.is_primary() else logging.DEBUG
    self._shown = ('epoch',) + tuple(shown)  # the metrics each evaluation's line shows

  def elapsed(self) -> float:
    return time.time() - self._start

  def rate(self) -> float:
    return self._rate

  def update(self, step: int, latest=None) -> None:
    """Called after each compiled call with its output `latest`, which it waits for: without the
    wait the host runs ahead of the device (asynchronous dispatch), so the clock checked here
    would pass `every_s` long before the device reached `step`, and the lines, each waiting for
    the device, would come at irregular, longer intervals. A call is tens of steps or more, so
    the wait costs the device little idle time."""
    if latest is not None:
      jax.block_until_ready(latest)
    now = time.time()
    if now - self._last_print < self._every and step < self._total:
      return
    if now > self._mark_time:
      self._rate = (step - self._mark_step) / (now - self._mark_time)
    self._mark_time, self._mark_step, self._last_print = now, step, now
    eta = (self._total - step) / self._rate if self._rate > 0 else float('nan')
    logging.log(self._level, 'step %d/%d (%.1f%%) | %.1f steps/s, %.0f examples/s | ETA %s',
                step, self._total, 100.0 * step / self._total, self._rate,
                self._rate * self._batch, _format_duration(eta) if eta == eta else '?')

  def report(self, record: dict) -> None:
    logging.log(self._level, 'step %d | %s | elapsed %s', record['step'],
                ', '.join(f'{k} {record[k]:.4g}' for k in self._shown
                          if record.get(k) is not None),
                _format_duration(record['elapsed_s']))
