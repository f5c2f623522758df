"""SIGTERM and Ctrl-C as a request the training loop answers at its next step boundary."""

from __future__ import annotations

import contextlib
import signal
import threading

from absl import logging


class StopRequest:
  """Set by SIGTERM or SIGINT (Ctrl-C) while `catch_stop_signals` is active."""

  def __init__(self):
    self.signum = None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name

  def __bool__(self) -> bool:
    return self.signum is not None


@contextlib.contextmanager
def catch_stop_signals():
  """Turns SIGTERM and Ctrl-C into a request the training loop answers at its next step
  boundary (saving a checkpoint), instead of killing it mid-write. A second signal acts as usual."""
  request = StopRequest()
  if threading.current_thread() is not threading.main_thread():
    yield request  # signal handlers can only be installed from the main thread
    return
  signums = (signal.SIGTERM, signal.SIGINT)
  previous = {s: signal.getsignal(s) for s in signums}

  def handler(signum, frame):
    del frame
    request.signum = signum
    for s in signums:
      signal.signal(s, previous[s])
    logging.warning('%s received: saving a checkpoint after the current steps, then stopping '
                    '(send it again to stop at once)', signal.Signals(signum).name)

  for s in signums:
    signal.signal(s, handler)
  try:
    yield request
  finally:
    for s in signums:
      signal.signal(s, previous[s])
