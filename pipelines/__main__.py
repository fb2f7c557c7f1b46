"""``python -m pipelines <pipeline> ...``: the same command line as main.py."""

import sys

from pipelines.main import main

sys.exit(main())
