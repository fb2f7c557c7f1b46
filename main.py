"""Entry point from a checkout: ``python main.py <pipeline> [flags] [Beam flags]``.

The same command line is installed as ``beam-pipelines`` (see setup.py).
"""

import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
# Local worker processes (multi-process runs) must import our packages too.
if ROOT not in os.environ.get('PYTHONPATH', '').split(os.pathsep):
  os.environ['PYTHONPATH'] = os.pathsep.join(
      p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from pipelines.main import main  # noqa: E402  pylint: disable=wrong-import-position

if __name__ == '__main__':
  sys.exit(main())
