"""Process-wide counts for progress logs on local runners.

Beam's metrics counters are wrong on the local streaming runner (they keep
the first bundle's values), and local runners run our DoFns in this process,
so a plain thread-safe tally serves the progress log. On Dataflow, use Beam
metrics instead: this tally stays in each worker.
"""

import collections
import threading

_lock = threading.Lock()
_counts = collections.Counter()


def add(name, n=1):
  with _lock:
    _counts[name] += n


def snapshot():
  with _lock:
    return dict(_counts)


def reset():
  with _lock:
    _counts.clear()
