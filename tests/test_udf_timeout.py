"""A UDF that hangs or runs away does not stop the stream (issue 28): each
call is bounded by --udf_timeout_seconds; a call over it is a udf_timeout
dead letter, its worker process is killed (not left burning a core), and
the next messages are parsed as before. In a batch replay, through the
parse step on its own (one message an element and in blocks), and in a live
local stream on the Pub/Sub emulator."""

import json
import os
import signal
import time

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from tests.conftest import duckdb_dicts
from tests.conftest import run_main
from transforms import blocks
from transforms import json_messages
from transforms import schemas
from transforms import udf

SCHEMA = [{'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
          {'name': 'qty', 'type': 'INTEGER', 'mode': 'REQUIRED'}]
# Each call writes its worker's pid to PIDS (a folder) first: the test then
# knows which processes ran the runaway calls.
UDF = '''
import os
import time

PIDS = %r

def shape(order):
  open(os.path.join(PIDS, str(os.getpid())), 'w').close()
  kind = order.get('kind')
  if kind == 'loop':
    while True:          # runs away
      pass
  if kind == 'sleep':
    time.sleep(600)      # hangs
  if kind == 'exit':
    os._exit(3)          # ends its own process
  if kind == 'segv':
    import ctypes
    ctypes.string_at(0)  # crashes it
  if kind == 'boom':
    raise ValueError('boom')
  return order
'''
KINDS = ['ok', 'ok', 'loop', 'ok', 'sleep', 'ok', 'boom', 'ok']
WHAT = {'loop': 'udf_timeout', 'sleep': 'udf_timeout', 'boom': 'udf_error',
        'exit': 'udf_error', 'segv': 'udf_error'}


def orders(kinds):
  return [{'order_id': 'o%d' % i, 'qty': i, 'kind': k}
          for i, k in enumerate(kinds)]


def write_files(tmp_path, kinds):
  pids = tmp_path / 'pids'
  pids.mkdir()
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  (tmp_path / 'shape.py').write_text(UDF % str(pids))
  (tmp_path / 'in.jsonl').write_text(
      ''.join(json.dumps(o) + '\n' for o in orders(kinds)))
  return tmp_path / 'orders.json', tmp_path / 'shape.py', pids


def gone(pid):
  """The process is no more (or a zombie nobody waits for: not running)."""
  try:
    with open('/proc/%d/stat' % pid) as f:
      return f.read().rsplit(')', 1)[1].split()[0] in ('Z', 'X')
  except FileNotFoundError:
    return True


def all_gone(pids, wait=3.0):
  deadline = time.monotonic() + wait
  while not all(gone(pid) for pid in pids):
    if time.monotonic() > deadline:
      return False
    time.sleep(0.05)
  return True


def line_of(*texts):
  """The UDF's line numbers holding any of ``texts``."""
  return [n for n, line in enumerate(UDF.splitlines(), 1)
          if any(t in line for t in texts)]


def expected_outcomes(kinds):
  rows = {'o%d' % i for i, k in enumerate(kinds) if k == 'ok'}
  dead = {'o%d' % i: WHAT[k] for i, k in enumerate(kinds) if k != 'ok'}
  return rows, dead


def test_a_replay_with_a_runaway_and_a_hanging_udf_ends_with_each_message_once(
    tmp_path):
  schema, shape, pids = write_files(tmp_path, KINDS)
  db = tmp_path / 'wh.duckdb'
  started = time.monotonic()
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    tmp_path / 'in.jsonl', '--warehouse', db, '--udf',
                    '%s:shape' % shape, '--udf_timeout_seconds', '1',
                    timeout=120)
  took = time.monotonic() - started
  assert result.returncode == 0, result.stderr
  assert took < 60, took  # not the 600 s sleep, nor forever
  rows = duckdb_dicts(db, 'SELECT order_id FROM orders')
  dead = duckdb_dicts(db, 'SELECT order_id, reason, errorMessage, stacktrace, '
                      'payloadString FROM (SELECT *, json_extract_string('
                      'payloadString, \'$.order_id\') AS order_id FROM '
                      'orders_error_records)')
  want_rows, want_dead = expected_outcomes(KINDS)
  assert sorted(r['order_id'] for r in rows) == sorted(want_rows)
  assert {d['order_id']: d['reason'] for d in dead} == want_dead
  assert len(dead) == len(want_dead)  # each once
  by_id = {d['order_id']: d for d in dead}
  for runaway, lines in (('o2', line_of('while True', 'pass')),
                        ('o4', line_of('time.sleep(600)'))):
    letter = by_id[runaway]
    assert 'time limit of 1 s' in letter['errorMessage']
    assert '--udf_timeout_seconds' in letter['errorMessage']
    # Where it was stuck: the UDF's file and line.
    assert any('File "%s", line %d in shape' % (shape, line) in
               letter['stacktrace'] for line in lines), letter['stacktrace']
  assert 'ValueError: boom' in by_id['o6']['errorMessage']
  assert str(shape) in by_id['o6']['stacktrace']
  # Three worker processes ran: two were killed at the limit, and the run's
  # end stopped the last one. None is left running.
  ran = [int(p) for p in os.listdir(pids)]
  assert len(ran) == 3, ran
  assert all_gone(ran)


def parse_fn_messages(kinds):
  return [PubsubMessage(json.dumps(o).encode(), {}, message_id=o['order_id'])
          for o in orders(kinds)]


@pytest.mark.parametrize('in_blocks', [False, True])
def test_the_parse_step_ends_runaway_and_crashing_calls_and_goes_on(
    tmp_path, in_blocks):
  """The DoFn alone on the DirectRunner, a message an element (a stream's)
  and in blocks (a replay's): a loop, an os._exit and a segfault are dead
  letters and every other message a row, in the default limit's place a
  short one."""
  kinds = ['ok', 'loop', 'ok', 'exit', 'ok', 'segv', 'ok', 'boom', 'ok']
  _, shape, pids = write_files(tmp_path, kinds)
  function = udf.Udf('%s:shape' % shape, shape.read_text())
  table = schemas.table_from_bigquery_schema(SCHEMA, 'orders')
  messages = parse_fn_messages(kinds)
  want_rows, want_dead = expected_outcomes(kinds)
  try:
    with TestPipeline(runner='FnApiRunner') as p:
      if in_blocks:
        read = p | beam.Create(list(blocks.message_blocks(messages, 4)))
      else:
        read = p | beam.Create(messages)
      parsed = read | json_messages.ParseJsonMessages(
          table, udf=function, blocks=in_blocks, udf_timeout_seconds=0.5)
      rows = parsed.rows
      if in_blocks:
        rows = rows | beam.FlatMap(blocks.unblocked)
      assert_that(rows | beam.Map(lambda r: r['message_id']),
                  equal_to(sorted(want_rows)), label='rows')
      assert_that(parsed.dead_letters | beam.Map(
          lambda d: (d['message_id'], d['reason'])),
                  equal_to(sorted(want_dead.items())), label='dead')
  finally:
    udf.stop_workers()
  assert all_gone([int(pid) for pid in os.listdir(pids)], wait=0)


def test_a_worker_killed_while_idle_is_replaced_unseen():
  calls = udf.Calls(udf.Udf('same.py:same', 'def same(o):\n  return o\n'), 5)
  try:
    assert list(calls.outcomes([b'{"a": 1}'])) == [('ok', [{'a': 1}], True)]
    [worker] = udf._IDLE[('same.py:same', calls.udf.source)]  # pylint: disable=protected-access
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait()
    assert list(calls.outcomes([b'{"a": 2}', b'[]'])) == [
        ('ok', [{'a': 2}], True), ('undecodable',)]
  finally:
    udf.stop_workers()


def test_the_default_limit_holds_where_a_caller_gives_none():
  table = schemas.table_from_bigquery_schema(SCHEMA, 'orders')
  fn = json_messages.ParseJsonMessageFn(
      table, udf=udf.Udf('same.py:same', 'def same(o):\n  return o\n'))
  fn.setup()
  assert fn._udf_calls.timeout == udf.DEFAULT_TIMEOUT_SECONDS  # pylint: disable=protected-access
  assert 0 < udf.DEFAULT_TIMEOUT_SECONDS <= 60


@pytest.mark.parametrize('value', ['0', '-1', 'nan'])
def test_a_time_limit_that_is_not_positive_is_one_line(tmp_path, value):
  schema, shape, _ = write_files(tmp_path, ['ok'])
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    tmp_path / 'in.jsonl', '--warehouse',
                    tmp_path / 'wh.duckdb', '--udf', '%s:shape' % shape,
                    '--udf_timeout_seconds', value)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert '--udf_timeout_seconds' in lines[0] and 'positive' in lines[0]
  assert not (tmp_path / 'wh.duckdb').exists()


@pytest.mark.emulator
def test_a_live_stream_goes_on_past_a_runaway_udf(pubsub_emulator, tmp_path):
  """--udf_timeout_seconds 1, a message whose UDF call loops forever
  between others: the later messages are stored, the looping one is a
  udf_timeout dead letter, its worker is gone while the stream still runs,
  and SIGTERM stops the stream cleanly."""
  from tests.test_delivery import left_in
  from tests.test_delivery import publish
  from tests.test_delivery import stop
  from tests.test_delivery import topic_and_subscriptions
  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  kinds = ['ok', 'ok', 'loop', 'ok', 'ok', 'ok']
  schema, shape, pids = write_files(tmp_path, kinds)
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--schema', schema, '--input_subscription', subscription,
      '--warehouse', db, '--udf', '%s:shape' % shape,
      '--udf_timeout_seconds', '1', '--progress_seconds', '0.2',
      '--status_file', status, name='pubsub_to_bigquery')
  wait_for_status(status, lambda s: 'messages_in' in s, proc)
  publish(pubsub_emulator, topic,
          [json.dumps(o).encode() for o in orders(kinds)])
  wait_for_status(status, lambda s: s.get('messages_in') == len(kinds) and
                  s.get('in_flight') == 0, proc, timeout=60)
  assert proc.poll() is None
  ran = sorted(int(p) for p in os.listdir(pids))
  assert len(ran) == 2, ran  # the one killed at the limit, and the next
  assert sum(gone(pid) for pid in ran) == 1  # killed while the stream runs
  out, err = stop(proc)
  assert 'not acknowledged' not in out, out
  assert 'ran over the time limit of 1 s' in err
  assert left_in(subscription) == 0
  rows = duckdb_dicts(db, 'SELECT order_id FROM orders')
  dead = duckdb_dicts(db, 'SELECT reason, errorMessage, payloadString FROM '
                      'orders_error_records')
  assert sorted(r['order_id'] for r in rows) == ['o0', 'o1', 'o3', 'o4', 'o5']
  assert [(json.loads(d['payloadString'])['order_id'], d['reason'])
          for d in dead] == [('o2', 'udf_timeout')]
  assert all_gone(ran)  # the stream's stop ended the other


# --- What a UDF may do in its process (the worker's own defects) ----------

def calls_of(source, timeout=5.0):
  return udf.Calls(udf.Udf('u.py:f', source), timeout)


def one(calls, obj):
  [outcome] = calls.outcomes([json.dumps(obj).encode()])
  return outcome


def idle_pid(calls):
  [worker] = udf._IDLE[udf._key(calls.udf)]  # pylint: disable=protected-access
  return worker.process.pid


def read_pid(path, wait=5.0):
  deadline = time.monotonic() + wait
  while time.monotonic() < deadline:
    if path.exists() and path.read_text().strip():
      return int(path.read_text())
    time.sleep(0.02)
  raise AssertionError('no pid in %s' % path)


FORKS = '''
import os

def f(o):
  if o.get('fork'):
    os.fork()  # parent and child both carry on
  return {'n': o['n']}
'''


@pytest.mark.parametrize('in_one_request', [False, True])
def test_a_udf_that_forks_still_gets_each_answer_to_its_own_message(
    in_one_request):
  """The forked child returns from the call too: it must neither answer
  nor read the next request (message 7 once got message 1's answer)."""
  calls = calls_of(FORKS)
  datas = [json.dumps({'n': n, 'fork': n == 1}).encode() for n in range(10)]
  try:
    if in_one_request:
      got = list(calls.outcomes(datas))
    else:
      got = [outcome for data in datas for outcome in calls.outcomes([data])]
    assert got == [('ok', [{'n': n}], True) for n in range(10)]
    assert one(calls, {'n': 99}) == ('ok', [{'n': 99}], True)  # none left
  finally:
    udf.stop_workers()


HELPERS = '''
import ctypes
import os
import time

def f(o):
  kind = o['kind']
  if kind == 'shell':  # a program left running in the background
    os.system('sleep 8 & echo $! > %(pid)s')
    while True:
      pass
  if kind == 'fork':  # a forked helper that outlives the call
    child = os.fork()
    if child == 0:
      time.sleep(8)
      os._exit(0)
    open(%(pid)r, 'w').write(str(child))
    time.sleep(600)
  if kind == 'exit':  # ends its process while a helper holds its pipes
    child = ctypes.CDLL(None).fork()  # C's fork: no Python fork hooks
    if child == 0:
      time.sleep(8)
      os._exit(0)
    open(%(pid)r, 'w').write(str(child))
    os._exit(3)
  return o
'''


@pytest.mark.parametrize('kind', ['shell', 'fork'])
def test_a_call_over_the_limit_does_not_wait_on_what_the_udf_started(
    tmp_path, kind):
  """A 1 s limit took 6 s: the stack was read to its pipe's end, which a
  helper holding the pipe kept open. Now the helper goes with the worker
  (its process group) and the stack is read with a deadline."""
  helper = tmp_path / 'helper.pid'
  calls = calls_of(HELPERS % {'pid': str(helper)}, timeout=1)
  one(calls, {'kind': 'warm up'})
  try:
    started = time.monotonic()
    outcome = one(calls, {'kind': kind})
    took = time.monotonic() - started
    assert outcome[0] == 'udf_timeout', outcome
    assert took < 3.5, took
    assert 'in f' in outcome[2], outcome[2]  # where it was: still there
    assert all_gone([read_pid(helper)], wait=2)
    assert one(calls, {'kind': 'ok'}) == ('ok', [{'kind': 'ok'}], True)
  finally:
    udf.stop_workers()


def test_a_udf_that_exits_while_its_helper_holds_the_pipe_is_a_udf_error(
    tmp_path):
  """Its worker's exit is seen (waitpid), not only its pipe's end: the
  message is a udf_error at once, not a udf_timeout at the limit."""
  helper = tmp_path / 'helper.pid'
  calls = calls_of(HELPERS % {'pid': str(helper)}, timeout=6)
  one(calls, {'kind': 'warm up'})
  try:
    started = time.monotonic()
    outcome = one(calls, {'kind': 'exit'})
    assert time.monotonic() - started < 3, outcome
    assert outcome[0] == 'udf_error' and 'exit code 3' in outcome[1], outcome
    assert all_gone([read_pid(helper)], wait=2)
    assert one(calls, {'kind': 'ok'}) == ('ok', [{'kind': 'ok'}], True)
  finally:
    udf.stop_workers()


PIPELINE = '''
import sys
from transforms import udf
calls = udf.Calls(udf.Udf('stuck.py:f', sys.argv[1]), 600)
list(calls.outcomes([b'{}']))
'''
STUCK = '''
import os
import re

def f(o):
  with open(%r, 'w') as f:
    f.write(str(os.getpid()))
  re.match(r'(a|aa)*c', 'a' * 60)  # C code, the GIL held, for ages
'''


def test_a_worker_stuck_in_c_code_dies_with_its_pipeline(tmp_path):
  """kill -9 of the pipeline ends its worker even when the UDF holds the
  GIL (a thread of the worker watching its parent could not run)."""
  import subprocess
  import sys
  pid_file = tmp_path / 'worker.pid'
  parent = subprocess.Popen(
      [sys.executable, '-c', PIPELINE, STUCK % str(pid_file)],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  worker = None
  try:
    worker = read_pid(pid_file, wait=30)
    time.sleep(0.3)  # in the regex
    parent.kill()
    parent.wait()
    assert all_gone([worker], wait=2)
  finally:
    parent.kill()
    if worker and not gone(worker):
      os.kill(worker, signal.SIGKILL)


def test_a_worker_outlives_the_thread_that_started_it():
  """The kernel's parent-death signal counts the starting thread as the
  parent: workers are started from a thread that lives as long as the
  process, so one started from a bundle's thread outlives that thread."""
  import threading
  calls = calls_of('def f(o):\n  return o\n')
  try:
    thread = threading.Thread(target=one, args=(calls, {'a': 1}))
    thread.start()
    thread.join()
    pid = idle_pid(calls)
    time.sleep(0.3)
    assert not gone(pid)
    assert one(calls, {'a': 2}) == ('ok', [{'a': 2}], True)
    assert idle_pid(calls) == pid
  finally:
    udf.stop_workers()


ANSWERS = '''
import datetime
import os
import sys

class Point(object):
  pass

def f(o):
  if o['kind'] == 'own class':
    return {'at': [1, {'p': Point()}]}
  if o['kind'] == 'child module':  # a module only the worker can import
    folder = os.path.join(%r, 'only_here')
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, 'mine.py'), 'w') as f:
      f.write('class Mine(object):\\n  pass\\n')
    sys.path.insert(0, folder)
    import mine
    return {'m': mine.Mine()}
  if o['kind'] == 'datetime':  # goes as before: the columns decide
    return {'when': datetime.datetime(2026, 1, 2)}
  return o
'''


def test_an_answer_the_pipeline_cannot_read_is_that_messages_udf_error(
    tmp_path):
  calls = calls_of(ANSWERS % str(tmp_path))
  try:
    got = list(calls.outcomes([json.dumps({'kind': k}).encode() for k in (
        'own class', 'ok', 'child module', 'datetime', 'ok')]))
    import datetime
    assert got[0][0] == 'udf_error', got[0]
    assert 'a Point (a class of its own file) at at[1].p' in got[0][1]
    assert got[1] == ('ok', [{'kind': 'ok'}], True)
    assert got[2][0] == 'udf_error', got[2]
    assert 'cannot read' in got[2][1] and 'mine' in got[2][1], got[2]
    assert got[3] == ('ok', [{'when': datetime.datetime(2026, 1, 2)}], True)
    assert got[4] == ('ok', [{'kind': 'ok'}], True)
  finally:
    udf.stop_workers()


def test_a_module_that_does_not_load_in_time_is_one_line_at_launch():
  slow = 'import time\ntime.sleep(60)\ndef f(o):\n  return o\n'
  started = time.monotonic()
  with pytest.raises(ValueError) as raised:
    udf.Udf.load('slow.py:f', lambda path: slow.encode(), limit=1)
  assert time.monotonic() - started < 5
  assert str(raised.value) == 'slow.py does not load within 1 s'
  for source, says in (('def f(o:\n', 'bad.py does not load: SyntaxError: '),
                       ('raise KeyError(1)\n', 'bad.py does not load: '
                        'KeyError: 1'),
                       ('g = 1\n', 'bad.py defines no function \'f\'')):
    with pytest.raises(ValueError) as raised:
      udf.Udf.load('bad.py:f', lambda path, s=source: s.encode())
    assert str(raised.value).startswith(says), raised.value
    assert len(str(raised.value).splitlines()) == 1
  udf.stop_workers()


def test_a_worker_that_cannot_start_makes_udf_errors_not_a_failed_bundle(
    monkeypatch):
  datas = [b'{"a": 1}', b'{"a": 2}']
  try:
    # Its module does not load there (it did at launch, say).
    fails = udf.Calls(udf.Udf('x.py:f', 'raise ValueError("no")\n'), 5)
    got = list(fails.outcomes(datas))
    assert [g[0] for g in got] == ['udf_error', 'udf_error']
    assert 'x.py does not load: ValueError: no' in got[0][1]
    # Its start takes longer than START_SECONDS.
    monkeypatch.setattr(udf, 'START_SECONDS', 1)
    slow = calls_of('import time\ntime.sleep(60)\ndef f(o):\n  return o\n')
    got = list(slow.outcomes(datas))
    assert [g[0] for g in got] == ['udf_error', 'udf_error']
    assert 'did not start in 1 s' in got[0][1], got
    # No process at all (an OSError of the start).
    def no_process(*args, **kwargs):
      raise FileNotFoundError(2, 'No such file or directory')
    monkeypatch.setattr(udf, '_popen', no_process)
    got = list(calls_of('def f(o):\n  return o\n').outcomes(datas))
    assert [g[0] for g in got] == ['udf_error', 'udf_error']
    assert 'could not start: FileNotFoundError' in got[0][1], got
  finally:
    udf.stop_workers()


DIES_BETWEEN_CALLS = '''
import os
import signal
import time

def f(o):
  if o.get('arm'):  # the worker dies as it waits for its next request
    def read(fd, n):
      time.sleep(0.5)
      os.kill(os.getpid(), signal.SIGKILL)
    os.read = read
  return o
'''


def test_a_worker_that_dies_between_calls_does_not_blame_the_next_message():
  calls = calls_of(DIES_BETWEEN_CALLS)
  try:
    assert one(calls, {'arm': True}) == ('ok', [{'arm': True}], True)
    # Sent before it died; its call had not begun: it runs on a new one.
    assert one(calls, {'a': 2}) == ('ok', [{'a': 2}], True)
  finally:
    udf.stop_workers()


PADDED = '''
import time

def f(o):
  if o.get('big'):
    return {'pad': 'x' * 70000}  # its own chunk: sent at once
  time.sleep(600)
'''


def test_a_calls_limit_counts_from_its_start_not_from_when_it_is_waited_on():
  calls = calls_of(PADDED, timeout=1)
  one(calls, {'big': True})
  try:
    outcomes = calls.outcomes([b'{"big": true}', b'{}'])
    assert next(outcomes)[0] == 'ok'
    started = time.monotonic()
    time.sleep(2)  # the caller busy with the first answer's rows
    assert next(outcomes)[0] == 'udf_timeout'
    assert time.monotonic() - started < 2.7  # not 2 s + the limit
  finally:
    udf.stop_workers()


def test_a_kill_does_not_wait_on_a_process_that_is_slow_to_go():
  import subprocess
  calls = calls_of('def f(o):\n  return o\n')
  one(calls, {'a': 1})
  [worker] = udf._IDLE[udf._key(calls.udf)]  # pylint: disable=protected-access
  real = worker.process.wait

  def slow_wait(timeout=None):  # in an uninterruptible sleep, say
    if timeout is not None:
      raise subprocess.TimeoutExpired(worker.process.args, timeout)
    time.sleep(3)
    return real()
  worker.process.wait = slow_wait
  try:
    started = time.monotonic()
    udf.stop_workers()
    assert time.monotonic() - started < 1.5
  finally:
    udf.stop_workers()
  assert all_gone([worker.process.pid], wait=5)
