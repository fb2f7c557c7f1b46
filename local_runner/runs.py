"""This process's local runs, each with its own counts and leases.

The parse steps and sinks of a local run hold small hooks (``CountRead``,
``AcknowledgeStored``) that are pickled into their DoFns like any argument;
a hook reaches its run's state by the run's id, and does nothing for a run
that is not in this process (it ended, or the DoFn runs elsewhere). Two
pipelines run in one process, as in tests, never share counts or leases.
"""

import threading
import uuid

from local_runner import beam_patches
from local_runner.leases import Leases

_lock = threading.Lock()
_runs = {}  # run id -> Run


class Run(object):
  """One local run's state: messages read, and the leases of its reader."""
  def __init__(self):
    self.id = uuid.uuid4().hex
    self.leases = Leases()
    self._read = self._dropped = 0
    self._files = self._bytes = 0
    self._lock = threading.Lock()

  def __enter__(self):
    with _lock:
      _runs[self.id] = self
    return self

  def __exit__(self, *unused):
    with _lock:
      _runs.pop(self.id, None)
    beam_patches.forget(AcknowledgeStored(self.id))

  def add_read(self, n, dropped=0):
    with self._lock:
      self._read += n
      self._dropped += dropped

  @property
  def messages_read(self):
    with self._lock:
      return self._read

  def add_file(self, size):
    with self._lock:
      self._files += 1
      self._bytes += size

  @property
  def files_done(self):
    """(files, bytes) of a replay read to their end."""
    with self._lock:
      return self._files, self._bytes

  @property
  def messages_dropped(self):
    """Messages a UDF dropped (neither a row nor a dead letter)."""
    with self._lock:
      return self._dropped

  def count_read(self):
    """The hook a parse step counts the messages it read with."""
    return CountRead(self.id)

  def acknowledge_stored(self):
    """The hook a sink tells of the rows it stored (``on_commit``)."""
    return AcknowledgeStored(self.id)


def _run(run_id):
  with _lock:
    return _runs.get(run_id)


class _Hook(object):
  def __init__(self, run_id):
    self.run_id = run_id

  def __eq__(self, other):
    return type(self) is type(other) and self.run_id == other.run_id

  def __hash__(self):
    return hash((type(self).__name__, self.run_id))


class CountRead(_Hook):
  """``add(n, dropped)``: n more messages read by the run, ``dropped`` of
  them by a UDF."""
  def add(self, n, dropped=0):
    run = _run(self.run_id)
    if run is not None:
      run.add_read(n, dropped)

  def file_done(self, size):
    """A replayed file read to its end (``size`` bytes)."""
    run = _run(self.run_id)
    if run is not None:
      run.add_file(size)


class AcknowledgeStored(_Hook):
  """A sink's ``on_commit``: rows carrying ``message_id`` are stored, so the
  run's reader may acknowledge their messages."""
  def __call__(self, rows):
    run = _run(self.run_id)
    if run is not None:
      run.leases.committed([row['message_id'] for row in rows
                            if row.get('message_id') is not None])

  def watch_bigquery_table(self, table):
    """Hear of the rows Beam's streaming inserts store in ``table``."""
    beam_patches.report_bigquery_inserts(table, self)
