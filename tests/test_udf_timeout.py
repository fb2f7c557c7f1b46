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
