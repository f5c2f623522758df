"""The one exception type the command-line tools turn into a single error line."""


class UserError(Exception):
  """A mistake in the user's input (config, data, workdir): the message names it and the fix."""
