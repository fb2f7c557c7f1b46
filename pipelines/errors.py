"""The two ways a command fails for the user, each printed on one line."""


class UsageError(Exception):
  """A bad command line or input location: printed on one line, exit 2."""


class PipelineFailed(Exception):
  """The pipeline stopped on an error: printed on one line, exit 1."""
