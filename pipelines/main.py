"""The command line: ``<prog> <pipeline> [flags] [Beam flags]``.

Run as ``python main.py`` from a checkout, or as the installed console script
``beam-pipelines`` (or ``python -m pipelines``).
"""

import argparse
import gc
import logging
import os
import sys

from pipelines import errors
from pipelines.registry import PIPELINES

# Start-up makes about a million objects that live as long as the process
# (Beam's modules, then the pipeline). At CPython's default gen-0 threshold
# (700 allocations) that cost every command three full collections and
# hundreds of partial ones, ~0.25 s, and a replay kept paying per message.
# Ten thousand keeps each collection small (~1 ms) and rare.
GC_THRESHOLD = (10000, 10, 10)

PROG = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'main.py'
if PROG in ('__main__.py', '-c', '-m', ''):
  PROG = 'python -m pipelines'


def usage():
  width = max(len(name) for name in PIPELINES)
  lines = ['usage: %s <pipeline> [flags] [Beam flags]' % PROG, '',
           'pipelines (and commands):']
  lines += ['  %-*s  %s' % (width, name, entry.about)
            for name, entry in PIPELINES.items()]
  lines += ['', "'%s <pipeline> --help' lists every flag of a pipeline." % PROG]
  return '\n'.join(lines)


def _quiet_beam_internals(record):
  """Beam's runners log every worker start at INFO: keep those for the log file."""
  return record.levelno >= logging.WARNING or not record.name.startswith(
      'apache_beam')


def setup_logging(argv):
  """Console at INFO; --log_file PATH at DEBUG as well."""
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument('--log_file')
  known, _ = pre.parse_known_args(argv)
  root = logging.getLogger()
  root.setLevel(logging.DEBUG if known.log_file else logging.INFO)
  formatter = logging.Formatter(
      '%(asctime)s %(levelname)s %(name)s: %(message)s')
  console = logging.StreamHandler(sys.stderr)
  console.setLevel(logging.INFO)
  console.setFormatter(formatter)
  console.addFilter(_quiet_beam_internals)
  root.addHandler(console)
  if known.log_file:
    to_file = logging.FileHandler(known.log_file)
    to_file.setLevel(logging.DEBUG)
    to_file.setFormatter(formatter)
    root.addHandler(to_file)


def main(argv=None):
  gc.set_threshold(*GC_THRESHOLD)  # before Beam is imported (registry.load)
  argv = sys.argv[1:] if argv is None else list(argv)
  if not argv or argv[0] in ('-h', '--help'):
    print(usage())
    return 0 if argv else 2
  name, rest = argv[0], argv[1:]
  if name not in PIPELINES:
    print('%s: error: unknown pipeline %r (choose from %s)' % (
        PROG, name, ', '.join(PIPELINES)), file=sys.stderr)
    return 2
  setup_logging(rest)
  try:
    module = PIPELINES[name].load()
  except ModuleNotFoundError as e:  # run outside the project's virtualenv
    print('%s %s: error: %s is not installed for %s; run ./run.sh demo once '
          '(it makes .venv), then .venv/bin/python main.py ... or '
          '. .venv/bin/activate' % (PROG, name, e.name, sys.executable),
          file=sys.stderr)
    return 2
  try:
    module.run(rest)
  except errors.UsageError as e:
    print('%s %s: error: %s' % (PROG, name, e), file=sys.stderr)
    return 2
  except errors.PipelineFailed as e:
    print('%s %s: error: %s' % (PROG, name, e), file=sys.stderr)
    return 1
  return 0
