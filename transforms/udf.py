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
the first call and fed over a pipe: one request per message, or per block
of a replay. The worker parses each payload (the bytes cross the pipe, not
a pickled object), says in a shared word which call runs, and writes its
pickled answers in chunks. A call that has run the limit has its worker
asked for its Python stack (SIGUSR1, ``faulthandler``: the dead letter's
stacktrace shows where the UDF was stuck, even inside C code), then killed
with SIGKILL; a new worker takes the rest of the request (and first runs
again the calls whose answers died unsent with the killed one, as Beam runs
a retried bundle's elements again). A UDF that ends its own process
(``os._exit``, a segfault) is a ``udf_error`` dead letter; a worker whose
parent is gone exits within 0.5 s, mid-call or not.

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
import faulthandler
import json
import logging
import math
import mmap
import os
import pickle
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
  def load(cls, spec, read):
    """``read(path) -> bytes``; ValueError (one line) when the file cannot be
    read or compiled, or does not define the function."""
    path, name = split_spec(spec)
    try:
      source = read(path).decode('utf-8')
    except (OSError, IOError, UnicodeDecodeError) as e:
      raise ValueError('cannot read %r: %s' % (path, str(e).splitlines()[0]))
    udf = cls(spec, source)
    udf.function()  # compiles and runs the module once: errors now, not later
    return udf

  def function(self):
    """The function, from a fresh module namespace of its own."""
    namespace = {'__name__': 'udf', '__file__': self.path}
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
  if isinstance(result, dict):
    return [_exact(result)]
  if isinstance(result, list) and all(isinstance(r, dict) for r in result):
    return [_exact(r) for r in result]
  raise BadResult('the UDF returned %s, not an object, a list of objects or '
                  'None' % type(result).__name__)


_DECIMAL = decimal.Decimal
_CONTAINERS = (dict, list, tuple)


def _exact(value):
  """Decimals the function computed -> their exact text, as a JSON number
  arrives (a NaN or an infinity, which is no JSON number, -> the float,
  which every column's reader knows); tuples -> lists. What holds none is
  returned as it is, uncopied (an identity UDF costs a walk, not a copy)."""
  kind = type(value)
  if kind is dict:
    changed = None
    for key, item in value.items():
      if type(item) in _CONTAINERS or isinstance(item, _DECIMAL):
        new = _exact(item)
        if new is not item:
          if changed is None:
            changed = dict(value)
          changed[key] = new
    return value if changed is None else changed
  if kind is list or kind is tuple:
    changed = None
    for i, item in enumerate(value):
      if type(item) in _CONTAINERS or isinstance(item, _DECIMAL):
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
  return value


# --- Each call bounded in time: the worker processes ----------------------

DEFAULT_TIMEOUT_SECONDS = 10.0
START_SECONDS = 120.0  # a worker's start (its imports, the UDF's module)
IDLE_SECONDS = 300.0   # an idle worker unused this long is stopped
ANSWER_BYTES = 1 << 16  # a worker writes its answers in chunks of about this
# How long the parent polls for an answer before it sleeps on the pipe: a
# quick call's answer comes within it, and waking from a sleep cost ~40 us
# more a message here (a stream's per-message round trip: 36 us against
# 78 us without).
SPIN_SECONDS = 50e-6
_HEADER = struct.Struct('<Q')
_STATE = struct.Struct('<q')
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


class Calls(object):
  """Calls of one Udf, each bounded by ``timeout`` seconds, in worker
  processes this Python process owns (shared by the DoFns of one UDF in it,
  one worker per concurrent caller). Picklable as its Udf and limit; no
  process is started until the first call."""
  def __init__(self, udf, timeout=None):
    self.udf = udf
    self.timeout = float(timeout or DEFAULT_TIMEOUT_SECONDS)

  def outcomes(self, payloads):
    """Yields one outcome per payload (bytes: a message's data), in order:
    ``('ok', objects, strings_checked)``, ``('undecodable',)`` (not a JSON
    object: the caller says why), ``('udf_error', error, stacktrace)`` (it
    raised, returned another kind, or ended its process) or
    ``('udf_timeout', error, stacktrace)`` (killed at the limit; the stack
    shows where it was). The worker parses the JSON (``exact_json``), so
    that a payload crosses the pipe as the bytes it is. The payloads are
    one request to a worker, which answers in chunks; a call's limit runs
    from when it starts. The calls that had ended when a worker was killed, but
    whose answers had not reached us, run again on the next worker (as Beam
    runs a retried bundle's elements again)."""
    start, end = 0, len(payloads)
    while start < end:
      stopped = yield from self._request(payloads[start:end])
      if stopped is None:
        return
      answered, index, outcome = stopped  # in that request
      if outcome is None and index <= answered:  # ended, not in a call
        index, outcome = answered, ('udf_error', 'the UDF\'s worker process '
                                    'ended before this message\'s call', None)
      if index > answered:  # ended calls whose answers died with the worker
        yield from self.outcomes(payloads[start + answered:start + index])
      if outcome is not None:
        yield outcome
        index += 1
      start += index

  def _request(self, payloads):
    """Yields the answers of one request as they come; returns None, or
    (answers received, index of the call stopped at, its outcome or None)
    once the worker is killed (a call over the limit) or has ended."""
    for attempt in range(3):
      worker = _acquire(self.udf)
      try:
        worker.send(payloads)
        break
      except OSError as e:  # it ended while idle: another one
        worker.kill()
        if attempt == 2:
          raise RuntimeError('the UDF\'s worker process takes no request: '
                             '%s' % e)
    reusable = False
    try:
      for answered in range(len(payloads)):
        try:
          outcome = worker.receive(self.timeout)
        except TimedOut as e:
          return answered, e.index, self._killed_at_the_limit(worker)
        except Ended as e:
          worker.kill()
          if not e.in_call:
            return answered, e.index, None
          return answered, e.index, (
              'udf_error', 'the UDF\'s process ended while it ran on this '
              'message (%s)' % e, None)
        reusable = answered + 1 == len(payloads)
        yield outcome
      return None
    finally:
      if reusable:
        _release(worker)
      else:
        worker.kill()  # abandoned midway, or killed above: never reused

  def _killed_at_the_limit(self, worker):
    stack = worker.kill(dump=True)
    _LOG.warning('A UDF call ran over the time limit of %g s: its process '
                 'was killed (its message is a udf_timeout dead letter). %s',
                 self.timeout, stack or '')
    return ('udf_timeout', 'the UDF ran over the time limit of %g s '
            '(--udf_timeout_seconds) on this message: its process was '
            'killed' % self.timeout, stack)


class _Worker(object):
  """One child process running the UDF: a request (a list of payloads) in
  through one pipe, one answer per call out through another, and a shared
  word saying which call runs (``2i + 1`` in call i, ``2i + 2`` after it)."""
  def __init__(self, udf):
    self.key = _key(udf)
    self.owner = os.getpid()
    requests, self._requests = os.pipe()
    self._answers, answers = os.pipe()
    self._stacks, stacks = os.pipe()
    state = _shared_word()
    self._state = mmap.mmap(state, _STATE.size)
    try:
      self.process = subprocess.Popen(
          [sys.executable, '-c', _BOOT, json.dumps(sys.path),
           str(requests), str(answers), str(stacks), str(state)],
          pass_fds=(requests, answers, stacks, state),
          stdin=subprocess.DEVNULL,
          stdout=2,  # the UDF's prints go to the worker's log, not our pipe
          start_new_session=True)  # a terminal's Ctrl-C is the stream's
    finally:
      for fd in (requests, answers, stacks, state):
        os.close(fd)
    self._poll = select.poll()
    self._poll.register(self._answers, select.POLLIN)
    self._buffer, self._at = bytearray(), 0
    self.idle_since = None
    _LIVE.add(self)
    try:
      self.send((udf.spec, udf.source))
      kind, error = self.receive(START_SECONDS, started=True)
    except (TimedOut, Ended, OSError) as e:
      self.kill()
      raise RuntimeError('the UDF\'s worker process did not start: %s' % e)
    if kind != 'ready':
      self.kill()
      raise RuntimeError('the UDF does not load in its worker process: %s'
                         % error)

  def send(self, value):
    _STATE.pack_into(self._state, 0, 0)
    data = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    _write(self._requests, _HEADER.pack(len(data)) + data)

  def receive(self, limit, started=False):
    """The next answer. TimedOut once a call has run ``limit`` seconds
    (``started``: once ``limit`` seconds pass without an answer); Ended
    when the process is gone."""
    step = min(0.25, max(0.01, limit / 20))
    seen, since = None, None
    while True:
      if len(self._buffer) - self._at >= 8:
        (size,) = _HEADER.unpack_from(self._buffer, self._at)
        end = self._at + 8 + size
        if len(self._buffer) >= end:
          value = pickle.loads(self._buffer[self._at + 8:end])
          self._at = end
          return value
      state = 1 if started else _STATE.unpack_from(self._state)[0]
      now = time.monotonic()
      if state != seen:
        seen, since = state, now
      elif state % 2 and now - since >= limit:
        raise TimedOut((state - 1) // 2)
      if not (_spin(self._poll) or self._poll.poll(int(1000 * (
          min(step, since + limit - now) if state % 2 else step)) + 1)):
        continue
      chunk = os.read(self._answers, 1 << 16)
      if not chunk:
        state = _STATE.unpack_from(self._state)[0]
        raise Ended(self._exit(), state // 2, bool(state % 2))
      if self._at:
        del self._buffer[:self._at]  # O(1): a bytearray's prefix
        self._at = 0
      self._buffer += chunk

  def _exit(self):
    try:
      code = self.process.wait(5)
    except subprocess.TimeoutExpired:
      return 'its answer pipe closed'
    if code < 0:
      try:
        return 'killed by %s' % signal.Signals(-code).name
      except ValueError:
        return 'killed by signal %d' % -code
    return 'exit code %d' % code

  def kill(self, dump=False):
    """Ends the process (SIGKILL), first asking where it is (SIGUSR1: its
    Python stack) when ``dump``; that stack, or None."""
    if self not in _LIVE:
      return None
    _LIVE.discard(self)
    if dump and self.process.poll() is None:
      try:
        os.kill(self.process.pid, signal.SIGUSR1)
        waiting = select.poll()
        waiting.register(self._stacks, select.POLLIN)
        if waiting.poll(1000):
          time.sleep(0.05)  # the dump is a few writes
      except OSError:
        pass
    try:
      self.process.kill()
    except OSError:
      pass
    self.process.wait()
    stack = _read_all(self._stacks) if dump else b''
    for fd in (self._requests, self._answers, self._stacks):
      os.close(fd)
    self._state.close()
    # The frames above the worker's own loop (``serve``, ``_BOOT``).
    lines = stack.decode('utf-8', 'replace').strip().splitlines()[1:]
    own = [i for i, line in enumerate(lines) if line.endswith(' in serve')]
    lines = lines[:own[-1]] if own else lines
    return ('Where the UDF was when it was stopped (most recent call '
            'first):\n' + '\n'.join(lines)) if lines else None


def _spin(poll):
  """Whether ``poll`` is ready within SPIN_SECONDS, asked without sleeping."""
  end = time.perf_counter() + SPIN_SECONDS
  while time.perf_counter() < end:
    if poll.poll(0):
      return True
  return False


def _shared_word():
  """A file descriptor of 8 zero bytes both processes map."""
  try:
    fd = os.memfd_create('udf-calls', 0)
  except (AttributeError, OSError):
    import tempfile
    with tempfile.TemporaryFile() as f:
      fd = os.dup(f.fileno())
  os.ftruncate(fd, _STATE.size)
  return fd


def _key(udf):
  return (udf.spec, udf.source)


_LOCK = threading.Lock()
_IDLE = {}  # (spec, source) -> [idle _Worker], the last released last
_LIVE = set()  # every worker of this process not yet killed
_next_sweep = 0.0  # when _release next looks for long-idle workers


def _acquire(udf):
  """An idle worker of ``udf``, or a new one. (One that ended while idle
  refuses the request: the caller takes another.)"""
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


def _forget_workers():
  """In a forked child: the parent's workers are not its own."""
  _IDLE.clear()
  _LIVE.clear()


atexit.register(stop_workers)
os.register_at_fork(after_in_child=_forget_workers)


def _write(fd, data):
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


def _read_all(fd):
  chunks = []
  while True:
    chunk = os.read(fd, 1 << 16)
    if not chunk:
      return b''.join(chunks)
    chunks.append(chunk)


def serve(requests, answers, stacks, state):
  """A worker process's loop (``_BOOT``): the UDF from the first request,
  then for each request (a list of payloads) one answer per call, written
  in chunks of ANSWER_BYTES and at the request's end; the shared word says
  which call runs. Exits when the parent closes its pipe or is gone."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  sys.stdout = sys.stderr
  faulthandler.register(signal.SIGUSR1, file=os.fdopen(stacks, 'w'),
                        all_threads=False)
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),),
                   daemon=True).start()
  word = mmap.mmap(state, _STATE.size)
  os.close(state)
  reader = _frames(requests)
  try:
    spec, source = pickle.loads(next(reader))
  except StopIteration:
    return
  try:
    function = Udf(spec, source).function()
  except ValueError as e:
    _write(answers, _frame(('error', str(e))))
    return
  _write(answers, _frame(('ready', None)))
  pack, dumps, protocol = _STATE.pack_into, pickle.dumps, pickle.HIGHEST_PROTOCOL
  loads = exact_json.loads
  for request in reader:
    out, size = [], 0
    for i, data in enumerate(pickle.loads(request)):
      pack(word, 0, 2 * i + 1)
      answer = _call(function, data, loads)
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
  """The worker's watch: gone with its parent, even mid-call (a killed
  stream leaves no runaway UDF behind). Never takes SIGUSR1 (the main
  thread's stack is the one asked for)."""
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(0)  # pylint: disable=protected-access
