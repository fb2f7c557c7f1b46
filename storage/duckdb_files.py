"""DuckDB files shared by a long-running writer and other processes' readers.

A DuckDB file has one writer process at a time, and while a process holds it
open for writing no other process can open it, even read-only. A streaming
run that held its warehouse for its whole life would make it unreadable
until it stopped; one that opened and closed it per batch would pay a
checkpoint and a reopen (~50 ms) every time. So a writer here:

- shares one connection per file across its threads (``DuckDBFiles.use``
  hands out a cursor), reopened only when it was released;
- releases the file (a background thread checks every 50 ms) once it has
  been held for ``hold_seconds`` (1.5 s by default): if threads still use
  it, new users wait until those finish, so a busy stream whose threads
  overlap cannot keep it forever; then leaves it free for ``GAP_SECONDS``
  before reopening: a reader retrying every 50 ms gets in within
  ``hold_seconds`` + one batch + a little;
- releases it at once when a reader announces itself (``wait_to_read``
  leaves a file in ``<warehouse>.readers/``), as ``main.py query`` does;
- while a reader holds the file, waits for it (saying so once), however
  long: nothing in flight is lost, it is only stored later.
"""

import contextlib
import logging
import os
import threading
import time

_LOG = logging.getLogger(__name__)

HOLD_SECONDS = 1.5
GAP_SECONDS = 0.1
READ_RETRY_SECONDS = 0.02
MEMORY_LIMIT = '1GB'  # per writing process


def readers_dir(path):
  return os.path.abspath(path) + '.readers'


def is_lock_error(error):
  return 'lock' in str(error).lower()


class _File(object):
  """One file's connection and who is using it."""
  def __init__(self, path):
    self.path = path
    self.con = None
    self.users = 0
    self.opened_at = 0.0
    self.released_at = 0.0
    self.hold_seconds = HOLD_SECONDS  # of the latest use
    self.closing = False  # due for release: new users wait for it


class Busy(Exception):
  """The file is held by another process (``use(..., wait=False)``)."""


class DuckDBFiles(object):
  """DuckDB connections, one per file in this process (DuckDB's rule: one
  database instance per file per process), released for readers."""
  _lock = threading.Condition()
  _files = {}
  _tables = set()  # (path, DDL) already run while this process had the file
  _releaser = None

  @classmethod
  @contextlib.contextmanager
  def use(cls, path, hold_seconds=HOLD_SECONDS, wait=True):
    """A cursor on ``path``'s shared connection (opened, waiting for other
    processes' locks, if it was released). ``hold_seconds`` 0 releases the
    file as soon as nobody in the process uses it (batch workers that take
    turns). With ``wait`` False, raises Busy instead of waiting."""
    path = os.path.abspath(path)
    with cls._lock:
      entry = cls._files.setdefault(path, _File(path))
      while entry.closing and wait:
        cls._lock.wait(1.0)
        entry = cls._files.setdefault(path, _File(path))  # closed meanwhile?
      entry.hold_seconds = hold_seconds
      if entry.con is None:
        gap = entry.released_at + GAP_SECONDS - time.monotonic()
        if gap > 0 and wait:
          cls._lock.wait(gap)
        if entry.con is None:
          entry.con = _connect(path, wait)
          entry.opened_at = time.monotonic()
          cls._start_releaser()
      entry.users += 1
      cursor = entry.con.cursor()
    try:
      yield cursor
    finally:
      cursor.close()
      with cls._lock:
        entry.users -= 1
        if entry.users == 0 and entry.con is not None and (
            hold_seconds == 0 or entry.closing):
          cls._release(entry)

  @classmethod
  def _start_releaser(cls):
    if cls._releaser is None or not cls._releaser.is_alive():
      cls._releaser = threading.Thread(
          target=cls._release_when_due, daemon=True, name='duckdb-release')
      cls._releaser.start()

  @classmethod
  def _release_when_due(cls):
    """Releases files held long enough, or that a reader waits for: at once
    if nobody in the process uses them, else when the last user finishes."""
    while True:
      time.sleep(0.05)
      with cls._lock:
        for entry in cls._files.values():
          if entry.con is None or entry.closing:
            continue
          if (time.monotonic() - entry.opened_at >= entry.hold_seconds or
              _readers_waiting(entry.path)):
            if entry.users == 0:
              cls._release(entry)
            else:
              entry.closing = True

  @classmethod
  def _release(cls, entry):
    _close_quietly(entry.con)
    entry.con = None
    entry.closing = False
    entry.released_at = time.monotonic()
    cls._lock.notify_all()

  @classmethod
  def ensure_table(cls, path, con, ddl):
    """Runs CREATE TABLE IF NOT EXISTS once per file, not per batch."""
    key = (os.path.abspath(path), ddl)
    if key not in cls._tables:
      con.execute(ddl)
      cls._tables.add(key)

  @classmethod
  def close(cls, path):
    """Closes this process's connection to ``path`` once nobody uses it (a
    run closes the files it wrote; another user reopens it when it needs
    it)."""
    path = os.path.abspath(path)
    with cls._lock:
      entry = cls._files.get(path)
      while entry is not None and entry.users:
        entry.closing = True
        cls._lock.wait(0.1)
      entry = cls._files.pop(path, None)
      if entry is not None:
        entry.closing = False
        if entry.con is not None:
          _close_quietly(entry.con)
          entry.con = None
      cls._tables = {t for t in cls._tables if t[0] != path}
      cls._lock.notify_all()

  @classmethod
  def close_all(cls):
    """Closes every file of this process (tests, between cases)."""
    for path in list(cls._files):
      cls.close(path)


def _close_quietly(con):
  """Closes a connection; a checkpoint that fails (a full disk) must not stop
  the releaser or a stop: what was committed is in the write-ahead log, which
  the next open replays."""
  try:
    con.close()
  except Exception as e:  # pylint: disable=broad-except
    _LOG.warning('closing a DuckDB file failed (%s); its committed data is in '
                 'the write-ahead log', str(e).splitlines()[0])


def _readers_waiting(path):
  try:
    return bool(os.listdir(readers_dir(path)))
  except OSError:
    return False


def _connect(path, wait=True):
  """Opens a DuckDB file for writing, waiting while another process holds it."""
  import duckdb
  os.makedirs(os.path.dirname(path), exist_ok=True)
  started = time.monotonic()
  said = False
  delay = 0.01
  while True:
    try:
      # DuckDB's own default is 80% of RAM for its buffer cache, which a
      # long stream would fill; the warehouse's working set is far smaller.
      return duckdb.connect(path, config={'memory_limit': MEMORY_LIMIT})
    except duckdb.IOException as e:
      if not is_lock_error(e):
        raise
      if not wait:
        raise Busy(str(e).splitlines()[0])
      if not said and time.monotonic() - started > 2:
        said = True
        _LOG.warning('waiting for another process to close %s (a reader '
                     'holding it open?); nothing is lost meanwhile', path)
      time.sleep(delay)
      delay = min(delay * 2, 0.2)


@contextlib.contextmanager
def wait_to_read(path, timeout=10.0):
  """A read-only connection to a file a running pipeline may be writing:
  announces itself so that the writer releases the file, retries until it
  is free. Raises TimeoutError after ``timeout`` seconds."""
  import duckdb
  path = os.path.abspath(path)
  flags = readers_dir(path)
  flag = os.path.join(flags, '%d-%d' % (os.getpid(), threading.get_ident()))
  con = None
  try:
    os.makedirs(flags, exist_ok=True)
    open(flag, 'w').close()
    deadline = time.monotonic() + timeout
    while con is None:
      try:
        con = duckdb.connect(path, read_only=True)
      except duckdb.IOException as e:
        if not is_lock_error(e):
          raise
        if time.monotonic() > deadline:
          raise TimeoutError('%s stayed locked for %.0f s: %s' % (
              path, timeout, str(e).splitlines()[0]))
        time.sleep(READ_RETRY_SECONDS)
  finally:
    with contextlib.suppress(OSError):
      os.remove(flag)
    with contextlib.suppress(OSError):
      os.rmdir(flags)
  try:
    yield con
  finally:
    con.close()
