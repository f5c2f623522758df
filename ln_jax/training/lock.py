"""One writer per folder: an exclusive `fcntl.flock` on a lock file inside it.

The kernel drops a flock when its holder's file descriptor closes, so also when the holder dies,
even by SIGKILL: a lock left by a dead process is free again with nothing to clean up, and two
processes that both find it free cannot both take it (the kernel grants it to one). The lock file
stays in the folder between runs; its text names the latest holder (pid, host, start time) so that
a process that finds the lock taken can say who holds it.

On NFS (v4, or v3 with its lock manager) Linux turns flock into a byte-range lock the server
enforces for every client. A filesystem that cannot lock at all gets one warning, and the run
goes on unlocked. In a multi-process run, process 0 alone holds the lock of the run directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time

from absl import logging

from ln_jax.errors import UserError

LOCK_FILE = 'lock'
# flock's errors for "this filesystem cannot lock" (as opposed to "someone holds it").
_NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class FolderLock:
  """Holds `<folder>/lock` from `acquire()` until `release()` (or the process's end)."""

  def __init__(self, folder: str, what: str = 'workdir', fix: str = '', name: str = LOCK_FILE):
    self.path = os.path.join(folder, name)
    self._what, self._fix = what, fix
    self._fd = None

  def acquire(self) -> 'FolderLock':
    """Takes the lock, or raises UserError naming the process that holds it."""
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise UserError(f'cannot create the lock file {self.path} ({e.strerror}); choose a '
                      f'writable {self._what}') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in _NO_LOCKING:
        logging.warning('the filesystem of %s cannot lock files (%s): nothing stops a second '
                        'process from writing there at the same time', self.path, e.strerror)
        self._fd = fd
        return self
      holder = read_holder(fd)
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise UserError(f'{self._what} {os.path.dirname(self.path)} is in use by {holder}; '
                      f'{self._fix or "wait for it to finish or stop it, or choose another"}')
    holder = {'pid': os.getpid(), 'host': socket.gethostname(),
              'start_time': time.strftime('%Y-%m-%dT%H:%M:%S%z')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(holder) + '\n').encode(), 0)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      os.close(self._fd)  # also drops the flock
      self._fd = None

  def __enter__(self) -> 'FolderLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def read_holder(fd: int) -> str:
  """'process 123 on host h (since ...)' from the lock file's text, as far as it is written."""
  try:
    holder = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
    return (f'process {holder["pid"]} on host {holder["host"]} (since '
            f'{holder["start_time"]})')
  except (OSError, ValueError, KeyError, TypeError):
    return 'another process (starting up)'
