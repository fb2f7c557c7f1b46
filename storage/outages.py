"""Outages waited out, never turned into dead letters: a full disk, a held
lock, an I/O or memory error is something wrong around the messages, not
with them. ``wait_out`` retries the work with backoff until it succeeds,
says once in the log what is wrong (and once when it is over), and keeps
the current outages for the progress line and the status file. What is in
flight stays unacknowledged meanwhile (its leases are extended), so nothing
is lost or doubled, and the stream resumes by itself."""

import contextlib
import errno
import logging
import threading
import time

_LOG = logging.getLogger(__name__)
_lock = threading.Lock()
_current = {}  # what -> (since, error text)
_pending = {}  # token -> [what, since, after_s, reported]

_WORDS = ('no space left', 'disk quota', 'could not write', 'could not read',
          'could not set lock', 'read-only file system', 'input/output error',
          'i/o error', 'out of memory', 'has been invalidated',
          'cannot open file', 'too many open files', 'resource temporarily')
_TYPES = ('IOException', 'OutOfMemoryException', 'FatalException',
          'TransactionException', 'InterruptException')


# OSErrors that no waiting fixes: the name or the path itself is wrong.
NOT_OUTAGES = frozenset((errno.ENAMETOOLONG, errno.EINVAL, errno.ENOTDIR,
                         errno.EISDIR, errno.ELOOP, errno.EFBIG))


def is_outage(error):
  """True for errors of the disk, a lock, I/O or memory (not of a row, and
  not of a name no file system takes: ``NOT_OUTAGES``)."""
  if isinstance(error, OSError) and error.errno in NOT_OUTAGES:
    return False
  if isinstance(error, (OSError, MemoryError)):
    return True
  if type(error).__name__ in _TYPES:
    return True
  text = str(error).lower()
  return any(word in text for word in _WORDS)


def needs_reconnect(error):
  return 'invalidated' in str(error).lower() or type(error).__name__ == 'FatalException'


def wait_out(what, attempt, on_retry=None, max_delay=5.0, stop=None):
  """``attempt()`` until it returns; outage errors are waited out (``on_retry(
  error)`` before each retry), any other error is raised. ``stop`` (an
  Event): once set, the outage's error is raised instead of waited out (a
  step torn down while its thread waits: what it held is not stored, and
  is read or delivered again)."""
  delay = 0.2
  while True:
    try:
      result = attempt()
    except Exception as e:  # pylint: disable=broad-except
      if not is_outage(e) or (stop is not None and stop.is_set()):
        raise
      _begin(what, e)
      if on_retry is not None:
        on_retry(e)
      if stop is None:
        time.sleep(delay)
      elif stop.wait(delay):
        raise
      delay = min(delay * 2, max_delay)
      continue
    _end(what)
    return result


def _begin(what, error):
  text = str(error).splitlines()[0][:300]
  with _lock:
    if what in _current:
      return
    _current[what] = (time.monotonic(), text)
  _LOG.warning('%s: %s; waiting and retrying (what is in flight is held, '
               'nothing is lost)', what, text)


def _end(what):
  with _lock:
    began = _current.pop(what, None)
  if began is not None:
    _LOG.warning('%s: working again after %.0f s', what,
                 time.monotonic() - began[0])


@contextlib.contextmanager
def pending(what, after_s=5.0):
  """Marks a call that may hang (a sink that does not answer): once it has
  taken ``after_s``, it shows as an outage (and is logged once) until it
  returns."""
  token = object()
  with _lock:
    _pending[token] = [what, time.monotonic(), after_s, False]
  try:
    yield
  finally:
    with _lock:
      _, since, _, reported = _pending.pop(token)
    if reported:
      _LOG.warning('%s: answering again after %.0f s', what,
                   time.monotonic() - since)


def snapshot():
  """{what: {'for_s': seconds, 'error': text}} of the outages going on."""
  now = time.monotonic()
  slow = []
  with _lock:
    out = {what: {'for_s': round(now - since, 1), 'error': text}
           for what, (since, text) in _current.items()}
    for entry in _pending.values():
      what, since, after_s, reported = entry
      if now - since >= after_s:
        out[what] = {'for_s': round(now - since, 1), 'error': 'not answering'}
        if not reported:
          entry[3] = True
          slow.append(what)
  for what in slow:
    _LOG.warning('%s: not answering; waiting (what is in flight is held, '
                 'nothing is lost)', what)
  return out
