"""A user's Python function applied to each message's JSON object before the
schema check (``--udf FILE.py:function``), as Google's Pub/Sub-to-BigQuery
template applies its UDF.

The function takes the object and returns an object (one row), a list of
objects (one message -> several rows) or None (drop the message; counted).
It sees numbers as the message wrote them: integers as ``int``, every other
number as ``exact_json.Number``, a ``str`` holding the number's text (use
``decimal.Decimal(n)`` or ``float(n)`` to compute); it may return ints,
floats, Decimals and strings for numeric columns. A NaN or an infinity
(float or Decimal) is stored where BigQuery has one, in FLOAT64, and is
otherwise a ``bad_value`` dead letter naming the field (JSON has none). Its
source is read once at launch (a local path or gs://) and travels with the
job, so it runs the same on Dataflow as locally; an exception, or a result
of another kind, is a ``udf_error`` dead letter with the stack trace.

Each call is bounded in time (``--udf_timeout_seconds``, default
``DEFAULT_TIMEOUT_SECONDS``): a call over the limit makes its message a
``udf_timeout`` dead letter and the next messages go on. A Python thread
cannot be killed, so the UDF runs in a worker process of its own, which
can: a long-lived child per concurrent caller (``Calls``; a pool per
process, so the local runner's per-bundle DoFn setup reuses it), started at
the first call (or by ``Udf.load`` at launch, which runs the module there,
bounded too) and fed over a pipe: one request per message, or per block of
a replay. The worker parses each payload (the bytes cross the pipe, not a
pickled object), says in shared words which call runs and since when (a
call's limit counts from its own start), and writes its pickled answers in
chunks. A call that has run the limit has its worker asked for its Python
stack (SIGUSR1, ``faulthandler``: the dead letter's stacktrace shows where
the UDF was stuck, even inside C code; read with a deadline), then killed
with its process group (SIGKILL: what the UDF started goes too); a new
worker takes the rest of the request (and first runs again the calls whose
answers died unsent with the killed one, as Beam runs a retried bundle's
elements again, and once more a call that never began because its worker
died between calls). A UDF that ends its own process (``os._exit``, a
segfault) is a ``udf_error`` dead letter, seen by its exit even while
something it started holds the pipe; so is an answer this process cannot
read (an object of the UDF's own class), and each message of a request no
worker could start for (a dead letter can be redriven; an exception would
retry the bundle for ever). The worker's pipes are its own: close-on-exec,
and /dev/null in a child the UDF forks, which ends when it returns from
the call. On Linux a worker whose pipeline is gone is killed by the kernel
(PR_SET_PDEATHSIG), even stuck in C code holding the GIL; elsewhere a
thread of its own sees it within 0.5 s.

Why not Beam's ``with_exception_handling(timeout=..., use_subprocess=...)``:
with ``timeout`` alone (``_TimeoutDoFn``) a call over the limit is
abandoned in its thread, which goes on burning a core for good; with
``use_subprocess`` (``_SubprocessDoFn``) the whole DoFn runs in a
``ProcessPoolExecutor`` forked from a process with gRPC threads, one
executor round trip per element, a kill that sleeps 1 s, and another at
every teardown (the local runner tears DoFns down every bundle). And its
failures are (element, exception) pairs of the whole element, a block of
2,000 messages in a replay, not one dead letter per message. Nor a watchdog
over an in-process call: it could raise into a Python loop, but not end a
call blocked in C (a sleep, a regex), and ending the whole worker would
leave the message to be retried forever. The cost of ours: a pipe round
trip per message of a stream (~35-60 us here, against ~13 us for the whole
parse with the UDF in process); a replay's block is one request (~1.15x
the in-process parse; ``benchmarks/parse_bench.py`` measures both).
"""

import atexit
import decimal
import errno
import faulthandler
import json
import logging
import math
import mmap
import os
import pickle
import queue
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback

from transforms import exact_json
from transforms.exact_json import Number


class BadResult(ValueError):
  """The function returned something that is not an object, a list of
  objects or None."""


class Udf(object):
  """``FILE.py:function``'s source and name; picklable (the source text
  travels with the job), compiled where it runs (``function``)."""
  def __init__(self, spec, source):
    self.spec = spec
    self.path, self.name = split_spec(spec)
    self.source = source

  @classmethod
  def load(cls, spec, read, limit=None):
    """``read(path) -> bytes``; ValueError (one line) when the file cannot be
    read or compiled, does not define the function, or its module does not
    load within ``limit`` seconds (default START_SECONDS). The module runs
    once now, in a worker process (bounded as calls are: a module that
    hangs cannot hang the launch), which is then kept for the first calls."""
    path, _ = split_spec(spec)
    try:
      source = read(path).decode('utf-8')
    except (OSError, IOError, UnicodeDecodeError) as e:
      raise ValueError('cannot read %r: %s' % (path, str(e).splitlines()[0]))
    udf = cls(spec, source)
    try:
      worker = _Worker(udf, limit)
    except StartFailed as e:
      raise ValueError(e.at_load)
    _release(worker)
    return udf

  def function(self):
    """The function, from a fresh module namespace of its own."""
    namespace = {'__name__': UDF_MODULE, '__file__': self.path}
    try:
      exec(compile(self.source, self.path, 'exec'), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError('%s does not load: %s: %s' % (
          self.path, type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
    function = namespace.get(self.name)
    if not callable(function):
      raise ValueError('%s defines no function %r' % (self.path, self.name))
    return function


def split_spec(spec):
  path, sep, name = spec.rpartition(':')
  if not sep or not path or not name.isidentifier():
    raise ValueError('%r is not FILE.py:function' % spec)
  return path, name


def objects(result):
  """The function's result -> the objects to store ([] when dropped)."""
  if result is None:
    return []
  try:
    if isinstance(result, dict):
      return [_exact(result)]
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):
      return [_exact(r) for r in result]
  except _OwnClass:
    raise BadResult(_own_class_found(result))
  raise BadResult('the UDF returned %s, not an object, a list of objects or '
                  'None' % type(result).__name__)


_DECIMAL = decimal.Decimal
# What needs no look: JSON's own values (and bool, NoneType: exact types).
_LEAVES = frozenset((str, int, float, bool, type(None), Number))
UDF_MODULE = 'udf'  # the __name__ of the UDF's module (``Udf.function``)


class _OwnClass(Exception):
  """A value of a class the UDF's file defines (see _own_class_found)."""


def _exact(value):
  """Decimals the function computed -> their exact text, as a JSON number
  arrives (a NaN or an infinity, which is no JSON number, -> the float,
  which every column's reader knows); tuples -> lists. What holds none is
  returned as it is, uncopied (an identity UDF costs a walk, not a copy).
  _OwnClass for an instance of a class of the UDF's file: its worker could
  pickle it, but no other process can read it (no module ``udf``)."""
  kind = type(value)
  if kind is dict:
    changed = None
    for key, item in value.items():
      if type(item) not in _LEAVES:
        new = _exact(item)
        if new is not item:
          if changed is None:
            changed = dict(value)
          changed[key] = new
    return value if changed is None else changed
  if kind is list or kind is tuple:
    changed = None
    for i, item in enumerate(value):
      if type(item) not in _LEAVES:
        new = _exact(item)
        if new is not item:
          if changed is None:
            changed = list(value)
          changed[i] = new
    if changed is None:
      return value if kind is list else list(value)
    return changed
  if isinstance(value, _DECIMAL):
    if value.is_finite():
      return Number(str(value))
    if value.is_nan():  # quiet or signalling: float() refuses the latter
      return math.nan
    return -math.inf if value.is_signed() else math.inf
  if getattr(kind, '__module__', None) == UDF_MODULE:
    raise _OwnClass()
  # Any other value (a datetime, a set, a dict subclass...) goes as it is:
  # the columns' readers take or refuse it, naming the field, as they did
  # when the UDF ran in process.
  return value


def _own_class_found(result):
  """The error of a result holding an instance of the UDF's own class:
  which class, where."""
  stack = [(result, '')]
  while stack:
    value, where = stack.pop()
    kind = type(value)
    if getattr(kind, '__module__', None) == UDF_MODULE:
      return ('the UDF returned a %s (a class of its own file) %s, which '
              'cannot leave its process: return JSON data (dicts, lists, '
              'strings, numbers, booleans, None; Decimals too)' % (
                  kind.__name__, 'at %s' % where if where else 'as a row'))
    if isinstance(value, dict):
      stack.extend((v, '%s.%s' % (where, k) if where else str(k))
                   for k, v in value.items())
    elif isinstance(value, (list, tuple)):
      stack.extend((v, '%s[%d]' % (where, i)) for i, v in enumerate(value))
  return 'the UDF returned a value of a class of its own file'


# --- Each call bounded in time: the worker processes ----------------------

DEFAULT_TIMEOUT_SECONDS = 10.0
START_SECONDS = 120.0  # a worker's start (its imports, the UDF's module)
IDLE_SECONDS = 300.0   # an idle worker unused this long is stopped
KILL_WAIT_SECONDS = 1.0  # how long a kill waits for the process to be gone
STACK_SECONDS = 1.0    # how long a kill at the limit waits for the stack
ANSWER_BYTES = 1 << 16  # a worker writes its answers in chunks of about this
# How long the parent polls for an answer before it sleeps on the pipe: a
# quick call's answer comes within it, and waking from a sleep cost ~40 us
# more a message here (a stream's per-message round trip: 36 us against
# 78 us without).
SPIN_SECONDS = 50e-6
# Errors of a worker's start worth a second try a moment later (the
# machine or this process short of processes, memory or descriptors).
_TRANSIENT = frozenset((errno.EAGAIN, errno.ENOMEM, errno.EMFILE,
                        errno.ENFILE))
_HEADER = struct.Struct('<Q')
# The words both processes map: which call runs (``2i + 1`` in call i of
# the request, ``2i + 2`` after it, 0 before the first), and when the
# running call began (CLOCK_MONOTONIC, ns: one clock for every process).
_STATE = struct.Struct('<q')
_CALL = struct.Struct('<qq')
_LOG = logging.getLogger(__name__)
_BOOT = ('import json, sys\n'
         'sys.path[:0] = json.loads(sys.argv[1])\n'
         'from transforms import udf\n'
         'udf.serve(*map(int, sys.argv[2:]))\n')


class TimedOut(Exception):
  """Call ``index`` of the request ran over the time limit."""
  def __init__(self, index):
    super().__init__(index)
    self.index = index


class Ended(Exception):
  """The worker process ended (the UDF exited or crashed) in call ``index``
  of the request, or after ``index`` calls (``in_call`` False)."""
  def __init__(self, how, index, in_call):
    super().__init__(how)
    self.index = index
    self.in_call = in_call


class StartFailed(Exception):
  """A worker could not start: why, said for a call's dead letter (str) and
  for the launch (``at_load``, one line); ``transient`` when a second try a
  moment later may do."""
  def __init__(self, message, at_load, transient=False):
    super().__init__(message)
    self.at_load = at_load
    self.transient = transient


class Calls(object):
  """Calls of one Udf, each bounded by ``timeout`` seconds, in worker
  processes this Python process owns (shared by the DoFns of one UDF in it,
  one worker per concurrent caller). Picklable as its Udf and limit; no
  process is started until the first call."""
  def __init__(self, udf, timeout=None):
    self.udf = udf
    self.timeout = float(timeout or DEFAULT_TIMEOUT_SECONDS)
    # The bytes of every answer received (what the UDF's objects took on
    # the pipe): a block's rows hold about that much, whatever the message
    # they came from held (a fan-out, a row larger than its message).
    self.answered_bytes = 0

  def outcomes(self, payloads):
    """Yields one outcome per payload (bytes: a message's data), in order:
    ``('ok', objects, strings_checked)``, ``('undecodable',)`` (not a JSON
    object: the caller says why), ``('udf_error', error, stacktrace)`` (it
    raised, returned another kind, ended its process, or its process could
    not start) or ``('udf_timeout', error, stacktrace)`` (killed at the
    limit; the stack shows where it was). The worker parses the JSON
    (``exact_json``), so that a payload crosses the pipe as the bytes it
    is. The payloads are one request to a worker, which answers in chunks;
    a call's limit runs from when it starts. The calls that had ended when a
    worker was killed, but whose answers had not reached us, run again on
    the next worker (as Beam runs a retried bundle's elements again); so
    does, once, a call that never began because its worker died between
    calls (an OOM kill): only a second death before it blames it."""
    start, end, retried = 0, len(payloads), None
    while start < end:
      stopped = yield from self._request(payloads[start:end])
      if stopped is None:
        return
      answered, index, outcome, how = stopped  # in that request
      if index > answered:  # ended calls whose answers died with the worker
        yield from self.outcomes(payloads[start + answered:start + index])
      index = max(index, answered)
      if outcome is None:  # it ended between calls: this one never began
        if start + index != retried:
          retried = start + index  # once more, on a new worker
          start += index
          continue
        outcome = ('udf_error', 'the UDF\'s worker process ended twice '
                   'before this message\'s call began (%s)' % how, None)
      yield outcome
      start += index + 1

  def _request(self, payloads):
    """Yields the answers of one request as they come; returns None, or
    (answers received, index of the call stopped at, its outcome or None,
    how the worker ended) once the worker is killed (a call over the limit)
    or has ended."""
    worker = self._sent(payloads)
    if isinstance(worker, StartFailed):
      # A worker that cannot start makes each message a udf_error dead
      # letter naming why, not an exception: an exception would fail the
      # bundle, which Beam retries without end, and the stream would stop
      # on it for good. A dead letter can be redriven once the cause is
      # gone; and a machine short of memory fails the next request's start
      # too, with the same dead letters, rather than freezing the stream.
      # (A transient error of the start had a second try in ``_sent``.)
      _log_start_failure(worker, len(payloads))
      error = ('the UDF did not run on this message: %s' % worker)
      for _ in payloads:
        yield ('udf_error', error, None)
      return None
    reusable = False
    try:
      for answered in range(len(payloads)):
        try:
          outcome = worker.receive(self.timeout)
          self.answered_bytes += worker.answer_bytes
        except TimedOut as e:
          return answered, e.index, self._killed_at_the_limit(worker), None
        except Ended as e:
          worker.kill()
          if not e.in_call:
            return answered, e.index, None, str(e)
          return answered, e.index, (
              'udf_error', 'the UDF\'s process ended while it ran on this '
              'message (%s)' % e, None), str(e)
        reusable = answered + 1 == len(payloads)
        yield outcome
      return None
    finally:
      if reusable:
        _release(worker)
      else:
        worker.kill()  # abandoned midway, or killed above: never reused

  def _sent(self, payloads):
    """A worker that took the request, or the StartFailed saying why none
    could (one more try after a transient error of a start)."""
    failed = None
    for attempt in range(3):
      try:
        worker = _acquire(self.udf)
      except StartFailed as e:
        if not e.transient or attempt == 2:
          return e
        failed = e
        time.sleep(1.0)
        continue
      try:
        worker.send(payloads)
        return worker
      except OSError as e:  # it ended while idle: another one
        worker.kill()
        failed = StartFailed('the UDF\'s worker process takes no request: '
                             '%s' % e, None)
    return failed

  def _killed_at_the_limit(self, worker):
    stack = worker.kill(dump=True)
    _LOG.warning('A UDF call ran over the time limit of %g s: its process '
                 'was killed (its message is a udf_timeout dead letter). %s',
                 self.timeout, stack or '')
    return ('udf_timeout', 'the UDF ran over the time limit of %g s '
            '(--udf_timeout_seconds) on this message: its process was '
            'killed' % self.timeout, stack)


_start_logged = [0.0]  # when a failed start was last logged


def _log_start_failure(failure, messages):
  """Logs a failed start, at most once a minute (each request tries)."""
  now = time.monotonic()
  if now - _start_logged[0] >= 60.0 or not _start_logged[0]:
    _start_logged[0] = now
    _LOG.error('%s; the %d message(s) of this request are udf_error dead '
               'letters, as are those of the next requests while no worker '
               'starts (logged once a minute).', failure, messages)


class _Worker(object):
  """One child process running the UDF: a request (a list of payloads) in
  through one pipe, one answer per call out through another, and shared
  words saying which call runs and since when (``_CALL``). The process
  leads a process group of its own: a kill takes whatever the UDF started
  with it. StartFailed when it does not start within ``limit`` seconds or
  the UDF's module does not load in it."""
  def __init__(self, udf, limit=None):
    limit = START_SECONDS if limit is None else limit
    self.key = _key(udf)
    self.owner = os.getpid()
    self.answer_bytes = 0  # the size of the last answer received
    self._how = None  # how it ended, once it has
    fds = []
    try:
      requests, self._requests = _pipe(fds)
      self._answers, answers = _pipe(fds)
      self._stacks, stacks = _pipe(fds)
      state = _shared_words()
      fds.append(state)
      self._state = mmap.mmap(state, _CALL.size)
      self.process = _popen(
          [sys.executable, '-c', _BOOT, json.dumps(sys.path),
           str(requests), str(answers), str(stacks), str(state),
           str(os.getpid())],
          pass_fds=(requests, answers, stacks, state),
          stdin=subprocess.DEVNULL,
          stdout=2,  # the UDF's prints go to the worker's log, not our pipe
          start_new_session=True)  # its own group; Ctrl-C is the stream's
    except OSError as e:
      for fd in fds:
        os.close(fd)
      raise StartFailed(
          'the UDF\'s worker process could not start: %s: %s' % (
              type(e).__name__, e),
          'the UDF\'s process could not start: %s: %s' % (
              type(e).__name__, e), transient=e.errno in _TRANSIENT)
    for fd in (requests, answers, stacks, state):
      os.close(fd)
    os.set_blocking(self._stacks, False)
    self._poll = select.poll()
    self._poll.register(self._answers, select.POLLIN)
    self._buffer, self._at = bytearray(), 0
    self.idle_since = None
    _LIVE.add(self)
    try:
      self.send((udf.spec, udf.source))
      kind, error = self.receive(limit, started=True)[:2]
    except TimedOut:
      self.kill()
      raise StartFailed(
          'the UDF\'s worker process did not start in %g s (its imports '
          'and the UDF\'s module)' % limit,
          '%s does not load within %g s' % (udf.path, limit))
    except (Ended, OSError) as e:
      self.kill()
      raise StartFailed(
          'the UDF\'s worker process ended as it started (%s)' % e,
          '%s does not load: its process ended (%s)' % (udf.path, e))
    if kind != 'ready':
      self.kill()
      raise StartFailed('the UDF does not load in its worker process: %s'
                        % error, error)

  def send(self, value):
    _STATE.pack_into(self._state, 0, 0)
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    _write(self._requests, _HEADER.pack(len(data)) + data)

  def receive(self, limit, started=False):
    """The next answer. TimedOut once a call has run ``limit`` seconds from
    its start, as the worker wrote it (``started``: once ``limit`` seconds
    pass without an answer); Ended when the process is gone (its pipe's
    end, or its exit: a process the UDF started may hold the pipe open)."""
    step = min(0.25, max(0.01, limit / 20))
    since = time.monotonic()
    while True:
      if len(self._buffer) - self._at >= 8:
        (size,) = _HEADER.unpack_from(self._buffer, self._at)
        end = self._at + 8 + size
        if len(self._buffer) >= end:
          frame = self._buffer[self._at + 8:end]
          self._at = end
          self.answer_bytes = size
          try:
            return pickle.loads(frame)
          except Exception as e:  # pylint: disable=broad-except
            # A value of a class only the worker can import (a module the
            # UDF put on its path): this message's error, not the step's.
            return ('udf_error', 'the UDF returned what this process cannot '
                    'read: %s: %s; return JSON data (dicts, lists, strings, '
                    'numbers, booleans, None; Decimals too)' % (
                        type(e).__name__, e), None)
      now = time.monotonic()
      if started:
        state = 1
      else:
        state, began = _CALL.unpack_from(self._state)
        since = began * 1e-9
      if state % 2 and now - since >= limit and (
          started or _CALL.unpack_from(self._state) == (state, began)):
        raise TimedOut((state - 1) // 2)  # (read twice: not a torn read)
      if not (_spin(self._poll) or self._poll.poll(int(1000 * (
          max(0.0, min(step, since + limit - now)) if state % 2 else step))
                                                  + 1)):
        if self._exited() and not self._poll.poll(0):
          raise self._ended()
        continue
      chunk = os.read(self._answers, 1 << 16)
      if not chunk:
        raise self._ended()
      if self._at:
        del self._buffer[:self._at]  # O(1): a bytearray's prefix
        self._at = 0
      self._buffer += chunk

  def _ended(self):
    state = _STATE.unpack_from(self._state)[0]
    return Ended(self._end(grace=KILL_WAIT_SECONDS), state // 2,
                 bool(state % 2))

  def _exited(self):
    """Whether the process has ended, left unreaped: while a zombie, its
    pid (its group's id) is not reused, so killpg reaches only its own."""
    if self.process.returncode is not None:
      return True
    if _WAITID is None:
      return self.process.poll() is not None
    try:
      return _WAITID(os.P_PID, self.process.pid,
                     os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
      return True

  def _end(self, grace=0.0):
    """Ends the process and its group (SIGKILL: what the UDF started goes
    with it), after ``grace`` seconds for the process to end on its own
    (its exit code is what it says); reaps it within KILL_WAIT_SECONDS
    (a process in an uninterruptible sleep dies later: a thread reaps it
    then, the stream does not wait). How it ended."""
    if self._how is not None:
      return self._how
    if self.process.returncode is None:
      deadline = time.monotonic() + grace
      while not self._exited() and time.monotonic() < deadline:
        time.sleep(0.005)
      for kill in (os.killpg, os.kill):
        try:
          kill(self.process.pid, signal.SIGKILL)
        except OSError:
          pass
    try:
      code = self.process.wait(KILL_WAIT_SECONDS)
    except subprocess.TimeoutExpired:
      _LOG.warning('The UDF\'s worker process %d is still there %g s after '
                   'SIGKILL; it is reaped when it goes.', self.process.pid,
                   KILL_WAIT_SECONDS)
      threading.Thread(target=self.process.wait, daemon=True).start()
      self._how = 'not gone %g s after SIGKILL' % KILL_WAIT_SECONDS
      return self._how
    if code < 0:
      try:
        self._how = 'killed by %s' % signal.Signals(-code).name
      except ValueError:
        self._how = 'killed by signal %d' % -code
    else:
      self._how = 'exit code %d' % code
    return self._how

  def kill(self, dump=False):
    """Ends the process and its group (SIGKILL), first asking where it is
    (SIGUSR1: its Python stack) when ``dump``; that stack, or None."""
    if self not in _LIVE:
      return None
    _LIVE.discard(self)
    stack = b''
    if dump and not self._exited():
      try:
        os.kill(self.process.pid, signal.SIGUSR1)
        stack = _read_until_quiet(self._stacks, STACK_SECONDS)
      except OSError:
        pass
    self._end()
    if dump:
      stack += _read_ready(self._stacks)
    for fd in (self._requests, self._answers, self._stacks):
      os.close(fd)
    self._state.close()
    # The frames above the worker's own loop (``serve``, ``_BOOT``).
    lines = stack.decode('utf-8', 'replace').strip().splitlines()[1:]
    own = [i for i, line in enumerate(lines) if line.endswith(' in serve')]
    lines = lines[:own[-1]] if own else lines
    return ('Where the UDF was when it was stopped (most recent call '
            'first):\n' + '\n'.join(lines)) if lines else None


_WAITID = getattr(os, 'waitid', None)


def _spin(poll):
  """Whether ``poll`` is ready within SPIN_SECONDS, asked without sleeping."""
  end = time.perf_counter() + SPIN_SECONDS
  while time.perf_counter() < end:
    if poll.poll(0):
      return True
  return False


def _pipe(fds):
  """os.pipe(), its ends added to ``fds`` (closed if the start fails)."""
  ends = os.pipe()
  fds.extend(ends)
  return ends


def _shared_words():
  """A file descriptor of _CALL.size zero bytes both processes map."""
  try:
    fd = os.memfd_create('udf-calls', os.MFD_CLOEXEC)
  except (AttributeError, OSError):
    import tempfile
    with tempfile.TemporaryFile() as f:
      fd = os.dup(f.fileno())
  os.ftruncate(fd, _CALL.size)
  return fd


def _read_until_quiet(fd, limit, quiet=0.05):
  """What a non-blocking ``fd`` gives within ``limit`` seconds, stopping
  once ``quiet`` seconds pass with nothing more (a stack dump is a few
  writes) or at its end. Never waits for the end: a process the UDF
  started may hold the pipe open."""
  chunks = []
  waiting = select.poll()
  waiting.register(fd, select.POLLIN)
  end = time.monotonic() + limit
  while True:
    left = end - time.monotonic()
    if left <= 0:
      break
    if not waiting.poll(int(1000 * (min(quiet, left) if chunks else left))
                        + 1):
      if chunks:
        break
      continue
    try:
      chunk = os.read(fd, 1 << 16)
    except BlockingIOError:
      continue
    if not chunk:
      break
    chunks.append(chunk)
  return b''.join(chunks)


def _read_ready(fd):
  """What a non-blocking ``fd`` holds now."""
  chunks = []
  while True:
    try:
      chunk = os.read(fd, 1 << 16)
    except (BlockingIOError, OSError):
      break
    if not chunk:
      break
    chunks.append(chunk)
  return b''.join(chunks)


def _key(udf):
  return (udf.spec, udf.source)


_LOCK = threading.Lock()
_IDLE = {}  # (spec, source) -> [idle _Worker], the last released last
_LIVE = set()  # every worker of this process not yet killed
_next_sweep = 0.0  # when _release next looks for long-idle workers


def _acquire(udf):
  """An idle worker of ``udf``, or a new one (StartFailed when none
  starts). (One that ended while idle refuses the request: the caller takes
  another.)"""
  with _LOCK:
    idle = _IDLE.get(_key(udf))
    worker = idle.pop() if idle else None
  return worker or _Worker(udf)


def _release(worker):
  global _next_sweep  # pylint: disable=global-statement
  now = time.monotonic()
  worker.idle_since = now
  stale = []
  with _LOCK:
    _IDLE.setdefault(worker.key, []).append(worker)
    if now > _next_sweep:
      _next_sweep = now + 10.0
      stale = [w for ws in _IDLE.values() for w in ws
               if now - w.idle_since > IDLE_SECONDS]
      for w in stale:
        _IDLE[w.key].remove(w)
  for w in stale:
    w.kill()


def stop_workers():
  """Kills every worker of this process (at exit; tests)."""
  with _LOCK:
    _IDLE.clear()
  for worker in list(_LIVE):
    if worker.owner == os.getpid():
      worker.kill()


# --- Starting workers: from one thread that lives as long as the process --
#
# On Linux a worker asks the kernel for SIGKILL when its parent goes
# (PR_SET_PDEATHSIG): that holds even while the UDF is stuck in C code with
# the GIL held, where a watching thread of its own cannot run. The kernel
# counts the thread that started the child as its parent, though, not the
# process: a worker started from a runner's bundle thread would be killed
# when that thread ends. So workers are started from a thread of ours that
# never ends before the process does.

_LINUX = sys.platform.startswith('linux')
_launcher = None  # (thread, its queue of jobs) once started
_LAUNCHER_LOCK = threading.Lock()


def _popen(args, **kwargs):
  """subprocess.Popen(args, **kwargs), from the launching thread on Linux."""
  if not _LINUX:
    return subprocess.Popen(args, **kwargs)
  global _launcher  # pylint: disable=global-statement
  with _LAUNCHER_LOCK:
    if _launcher is None:
      jobs = queue.SimpleQueue()
      thread = threading.Thread(target=_launch, args=(jobs,),
                                name='udf-worker-launcher', daemon=True)
      thread.start()
      _launcher = (thread, jobs)
    jobs = _launcher[1]
  done, result = threading.Event(), []

  def job():
    try:
      result.append(subprocess.Popen(args, **kwargs))
    except BaseException as e:  # pylint: disable=broad-except
      result.append(e)
    finally:
      done.set()
  jobs.put(job)
  done.wait()
  if isinstance(result[0], BaseException):
    raise result[0]
  return result[0]


def _launch(jobs):
  while True:
    jobs.get()()


def _forget_workers():
  """In a forked child: the parent's workers (and launcher) are not its
  own."""
  global _launcher  # pylint: disable=global-statement
  _IDLE.clear()
  _LIVE.clear()
  _launcher = None


atexit.register(stop_workers)
os.register_at_fork(after_in_child=_forget_workers)


def _write(fd, data):
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


# --- The worker process ----------------------------------------------------

def serve(requests, answers, stacks, state, parent):
  """A worker process's loop (``_BOOT``): the UDF from the first request,
  then for each request (a list of payloads) one answer per call, written
  in chunks of ANSWER_BYTES and at the request's end; the shared words say
  which call runs and since when. Exits when the parent closes its pipe or
  is gone (``parent``: its pid)."""
  me = os.getpid()
  _die_with(parent)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  sys.stdout = sys.stderr
  # Our pipes are for this process alone: not for a program the UDF runs
  # (close-on-exec), nor a child it forks (/dev/null in their place there).
  # One of those holding a pipe open would keep its end from us.
  ours = (requests, answers, stacks)
  for fd in ours:
    os.set_inheritable(fd, False)
  os.register_at_fork(after_in_child=lambda: _let_go(ours))
  faulthandler.register(signal.SIGUSR1, file=os.fdopen(stacks, 'w'),
                        all_threads=False)
  word = mmap.mmap(state, _CALL.size)
  os.close(state)
  reader = _frames(requests)
  try:
    spec, source = pickle.loads(next(reader))
  except StopIteration:
    return
  try:
    function = Udf(spec, source).function()
  except ValueError as e:
    function = e
  if os.getpid() != me:  # the UDF's module forked: not this process's job
    os._exit(0)  # pylint: disable=protected-access
  if isinstance(function, ValueError):
    _write(answers, _frame(('error', str(function))))
    return
  _write(answers, _frame(('ready', None)))
  pack, begin, clock = _STATE.pack_into, _CALL.pack_into, time.monotonic_ns
  dumps, protocol = pickle.dumps, pickle.HIGHEST_PROTOCOL
  loads, getpid = exact_json.loads, os.getpid
  for request in reader:
    out, size = [], 0
    for i, data in enumerate(pickle.loads(request)):
      begin(word, 0, 2 * i + 1, clock())
      answer = _call(function, data, loads)
      if getpid() != me:
        # The UDF forked and this is the child, back from the call: it must
        # not answer (the worker does) nor read the next request.
        os._exit(0)  # pylint: disable=protected-access
      try:
        encoded = dumps(answer, protocol)
      except Exception as e:  # pylint: disable=broad-except
        encoded = dumps((
            'udf_error', 'the UDF returned what cannot be passed on: %s: %s'
            % (type(e).__name__, e), traceback.format_exc()), protocol)
      pack(word, 0, 2 * i + 2)
      out.append(_HEADER.pack(len(encoded)))
      out.append(encoded)
      size += len(encoded) + 8
      if size >= ANSWER_BYTES:
        _write(answers, b''.join(out))
        out, size = [], 0
    if out:
      _write(answers, b''.join(out))


def _let_go(fds):
  """In a child the UDF forked: /dev/null in place of our pipes."""
  null = os.open(os.devnull, os.O_RDWR)
  for fd in fds:
    os.dup2(null, fd, inheritable=False)
  os.close(null)


_PR_SET_PDEATHSIG = 1


def _die_with(parent):
  """This process gone with ``parent``, even mid-call: a killed stream
  leaves no runaway UDF behind. On Linux the kernel's SIGKILL when the
  thread that started us ends (``_popen``); elsewhere (or if prctl fails) a
  thread that watches. Either way, a parent gone before we looked is
  seen now."""
  asked = False
  if _LINUX:
    try:
      import ctypes
      libc = ctypes.CDLL(None, use_errno=True)
      asked = libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
      asked = False
  if not asked:
    threading.Thread(target=_exit_with_parent, args=(parent,),
                     daemon=True).start()
  if os.getppid() != parent:
    os._exit(0)  # pylint: disable=protected-access


def _call(function, data, loads):
  """A worker's answer for one message's data."""
  try:
    payload, checked = loads(data)
  except Exception:  # pylint: disable=broad-except
    return ('undecodable',)  # the parent's decode_object says why
  if type(payload) is not dict:  # pylint: disable=unidiomatic-typecheck
    return ('undecodable',)
  try:
    return ('ok', objects(function(payload)), checked)
  except BaseException as e:  # pylint: disable=broad-except
    return ('udf_error', '%s: %s' % (type(e).__name__, e),
            traceback.format_exc())


def _frame(value):
  data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
  return _HEADER.pack(len(data)) + data


def _frames(fd):
  """The frames read from ``fd`` until it closes."""
  buffer = bytearray()
  while True:
    while len(buffer) < 8 or len(buffer) < 8 + _HEADER.unpack_from(buffer)[0]:
      chunk = os.read(fd, 1 << 16)
      if not chunk:
        return
      buffer += chunk
    size = _HEADER.unpack_from(buffer)[0]
    frame = buffer[8:8 + size]
    del buffer[:8 + size]
    yield frame


def _exit_with_parent(parent):
  """The worker's watch where the kernel's is not to be had: gone with its
  parent, even mid-call, unless the UDF holds the GIL in C code. Never
  takes SIGUSR1 (the main thread's stack is the one asked for)."""
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
  while os.getppid() == parent:
    time.sleep(0.5)
  try:
    os.killpg(0, signal.SIGKILL)  # what the UDF started too
  finally:
    os._exit(0)  # pylint: disable=protected-access
