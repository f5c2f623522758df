"""The exceptions the command-line tools turn into a single line instead of a traceback."""


class UserError(Exception):
  """A mistake in the user's input (config, data, workdir): the message names it and the fix."""


class Interrupted(Exception):
  """SIGTERM or Ctrl-C stopped a run after saving a checkpoint; re-running resumes it."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
