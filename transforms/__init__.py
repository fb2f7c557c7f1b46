"""Reusable Beam transforms: each module does one job and is tested alone."""

import sys

from transforms.emulators import use_emulators

# Every process that runs Beam has imported it by the time it unpickles or
# builds our transforms; a process that only reads DuckDB (main.py query)
# need not pay the ~1.3 s of importing Beam.
if 'apache_beam' in sys.modules:
  use_emulators()
