"""The two ways a command fails for the user, each printed on one line."""

import argparse


class UsageError(Exception):
  """A bad command line or input location: printed on one line, exit 2."""


class PipelineFailed(Exception):
  """The pipeline stopped on an error: printed on one line, exit 1."""


class OneLineErrors(object):
  """Mixed into an argparse parser: a bad command line raises UsageError
  (argparse's one-line message), never a usage dump and exit."""
  def error(self, message):
    raise UsageError(message)


class OneLineParser(OneLineErrors, argparse.ArgumentParser):
  """argparse with one-line errors."""
