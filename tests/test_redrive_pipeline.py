"""The redrive is the pipeline's own batch graph on its dead letters (issue
28): the warehouse's window length, the same parse, sinks and counts, the
pipelines' own flag checks, fan-outs and drops settled, and a kill -9 at
any moment leaves rows + waiting dead letters = messages."""

import datetime
import json
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from tests.conftest import ROOT
from tests.conftest import duckdb_dicts
from tests.conftest import run_main

SCHEMA = [{'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
          {'name': 'qty', 'type': 'INTEGER', 'mode': 'REQUIRED'}]
FIXED = [SCHEMA[0], dict(SCHEMA[1], mode='NULLABLE')]


def give_up(db, table, message_id, payload, reason='too_many_attempts'):
  """A dead letter as the local reader writes one for a message it gave up
  on (the whole message kept): the one kind of sign-in dead letter that the
  same parse can make a row."""
  con = duckdb.connect(str(db))
  try:
    con.execute(
        'INSERT INTO "%s" (timestamp, payloadString, payloadBytes, '
        'attributes, errorMessage, message_id, reason) VALUES (?, ?, ?, [], '
        '?, ?, ?)' % table, [datetime.datetime.now(datetime.timezone.utc),
                             payload.decode(), payload, 'gave up',
                             message_id, reason])
  finally:
    con.close()


def counts_equal_rows(db, size):
  """Every stored count is of ``size``-second windows and equals counting
  the rows of its window and user."""
  stored = duckdb_dicts(db, 'SELECT DISTINCT epoch(window_end) - '
                        'epoch(window_start) AS n FROM signin_counts')
  assert stored == [{'n': size}]
  mismatched = duckdb_dicts(db, '''
      SELECT * FROM (SELECT to_timestamp(0) + to_seconds(epoch(date)::BIGINT
                       - (epoch(date)::BIGINT % {s})) AS window_start, userid,
                       count(*) AS n FROM signins GROUP BY ALL) r
      FULL JOIN signin_counts c USING (window_start, userid)
      WHERE r.n IS DISTINCT FROM c.signins'''.format(s=size))
  assert mismatched == []


def test_a_redrive_keeps_the_warehouse_window_and_replays_go_on(tmp_path):
  lines = tmp_path / 's.jsonl'
  lines.write_text('{"userid": "u", "date": "2017-10-17T20:57:17Z"}\n'
                   '{"userid": "u", "date": "2017-10-17T21:01:00Z"}\n')
  db = tmp_path / 'wh.duckdb'
  first = run_main('user_signin', '--input_file', lines, '--warehouse', db,
                   '--window_seconds', '300')
  assert first.returncode == 0, first.stderr
  # 20:58:30 falls in the 300-second window 20:55-21:00 with the first
  # sign-in; in 60-second windows it would be a window of its own.
  give_up(db, 'signin_errors', 'm-gave-up',
          b'{"userid": "u", "date": "2017-10-17T20:58:30Z"}')
  wrong = run_main('redrive', '--pipeline', 'user_signin', '--warehouse', db,
                   '--window_seconds', '60')
  assert wrong.returncode == 2, wrong.stderr
  assert wrong.stderr.count('\n') == 1 and '300-second' in wrong.stderr
  for bad in ('0', '-5'):
    refused = run_main('redrive', '--pipeline', 'user_signin', '--warehouse',
                       db, '--window_seconds', bad)
    assert refused.returncode == 2 and refused.stderr.count('\n') == 1, (
        refused.stderr)
    assert '--window_seconds' in refused.stderr
  moved = run_main('redrive', '--pipeline', 'user_signin', '--warehouse', db)
  assert moved.returncode == 0 and '1 moved' in moved.stdout, moved.stderr
  counts_equal_rows(db, 300)
  assert duckdb_dicts(db, 'SELECT signins FROM signin_counts ORDER BY '
                      'window_start') == [{'signins': 2}, {'signins': 1}]
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM signin_errors WHERE '
                      'redriven_at IS NULL') == [{'n': 0}]
  more = tmp_path / 'more.jsonl'
  more.write_text('{"userid": "v", "date": "2017-10-17T20:59:00Z"}\n')
  again = run_main('user_signin', '--input_file', more, '--warehouse', db,
                   '--window_seconds', '300')
  assert again.returncode == 0, again.stderr
  counts_equal_rows(db, 300)
  twice = run_main('redrive', '--pipeline', 'user_signin', '--warehouse', db)
  assert twice.returncode == 0 and '0 moved' in twice.stdout


@pytest.mark.parametrize('flags, says', [
    (('--input_file', 'x.jsonl'), '--input_file'),
    (('--max_message_bytes', '0'), '--max_message_bytes'),
    (('--runner', 'DataflowRunner'), '--runner'),
    (('--pipeline', 'wordcount'), '--pipeline'),
    (('--message_id_column', 'false'), '--message_id_column'),
    (('--no_such_flag', '1'), '--no_such_flag'),
    (('--dead_letter_topic', 'projects/p/topics/t'), '--dead_letter_topic'),
    (('--output_table', 'p:d.t'), '--output_table'),
    (('--dry_run=on',), '--dry_run'),
    (('--where', "true); DELETE FROM orders_error_records; SELECT 1 WHERE "
      "(true"), '--where'),
    (('--window_seconds', '60'), '--window_seconds'),  # not sign-ins' flag
])
def test_redrive_flags_are_checked_as_the_pipelines_are(tmp_path, flags, says):
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  db = tmp_path / 'wh.duckdb'
  duckdb.connect(str(db)).close()
  result = run_main('redrive', '--schema', tmp_path / 'orders.json',
                    '--warehouse', db, *flags)
  assert result.returncode == 2, result.stderr
  assert result.stderr.count('\n') == 1 and says in result.stderr, (
      result.stderr)


UDF = '''
def fix(order):
  if order.get('kind') == 'test':
    return None
  order.setdefault('qty', 0)
  if order.get('kind') == 'pair':
    return [dict(order, order_id=order['order_id'] + '-1'),
            dict(order, order_id=order['order_id'] + '-2')]
  return order
'''


def test_a_redrive_settles_drops_and_fan_outs(tmp_path):
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  (tmp_path / 'fix.py').write_text(UDF)
  lines = tmp_path / 'in.jsonl'
  lines.write_text(''.join(json.dumps(m) + '\n' for m in [
      {'order_id': 'a', 'qty': 1}, {'order_id': 'b', 'kind': 'test'},
      {'order_id': 'c', 'kind': 'pair'}, {'order_id': 'd'},
      {'order_id': 'e', 'qty': 'x'}]))
  db = tmp_path / 'wh.duckdb'
  assert run_main('pubsub_to_bigquery', '--schema', tmp_path / 'orders.json',
                  '--input_file', lines, '--warehouse', db).returncode == 0
  result = run_main('redrive', '--schema', tmp_path / 'orders.json', '--udf',
                    '%s:fix' % (tmp_path / 'fix.py'), '--warehouse', db)
  assert result.returncode == 0, result.stderr
  assert '4 dead letters looked at; 3 moved' in result.stdout, result.stdout
  assert 'stayed: bad_value=1' in result.stdout
  assert duckdb_dicts(db, 'SELECT order_id, qty FROM orders ORDER BY 1') == [
      {'order_id': 'a', 'qty': 1}, {'order_id': 'c-1', 'qty': 0},
      {'order_id': 'c-2', 'qty': 0}, {'order_id': 'd', 'qty': 0}]
  waiting = duckdb_dicts(db, 'SELECT reason FROM orders_error_records WHERE '
                         'redriven_at IS NULL')
  assert waiting == [{'reason': 'bad_value'}]  # the drop is settled too


def test_a_redrive_killed_at_any_moment_loses_and_doubles_nothing(tmp_path):
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  (tmp_path / 'fixed.json').write_text(json.dumps(FIXED))
  total = 3000
  lines = tmp_path / 'in.jsonl'
  lines.write_text(''.join('{"order_id": "o%d"}\n' % i for i in range(total)))
  db = tmp_path / 'wh.duckdb'
  assert run_main('pubsub_to_bigquery', '--schema', tmp_path / 'orders.json',
                  '--input_file', lines, '--warehouse', db).returncode == 0

  def invariant():
    got = duckdb_dicts(db, '''SELECT
        (SELECT count(*) FROM orders) AS rows,
        (SELECT count(*) FROM orders_error_records WHERE redriven_at IS NULL)
            AS waiting,
        (SELECT count(*) FROM orders o JOIN orders_error_records d USING
         (message_id) WHERE d.redriven_at IS NULL) AS both''')[0]
    assert got['rows'] + got['waiting'] == total and got['both'] == 0, got
    return got['rows']

  command = [sys.executable, os.path.join(ROOT, 'main.py'), 'redrive',
             '--schema', str(tmp_path / 'fixed.json'), '--table', 'orders',
             '--warehouse', str(db)]
  stored = []
  for delay in (1.0, 2.0, 2.5, 3.0, 3.5, 4.5):
    process = subprocess.Popen(command, env=dict(os.environ), cwd=ROOT,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stored.append(invariant())
  finished = run_main('redrive', '--schema', tmp_path / 'fixed.json',
                      '--table', 'orders', '--warehouse', db)
  assert finished.returncode == 0, finished.stderr
  assert invariant() == total, stored


def test_where_filters_only_waiting_letters_whatever_it_holds(tmp_path):
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  (tmp_path / 'fixed.json').write_text(json.dumps(FIXED))
  lines = tmp_path / 'in.jsonl'
  lines.write_text('{"order_id": "a"}\n{"order_id": "b"}\n')
  db = tmp_path / 'wh.duckdb'
  assert run_main('pubsub_to_bigquery', '--schema', tmp_path / 'orders.json',
                  '--input_file', lines, '--warehouse', db).returncode == 0
  redrive = ('redrive', '--schema', tmp_path / 'fixed.json', '--table',
             'orders', '--warehouse', db)
  first = run_main(*redrive, '--where', "message_id LIKE '%:1'")
  assert first.returncode == 0 and '1 moved' in first.stdout, first.stderr
  # A condition that closes the parenthesis, or comments out the rest,
  # still only filters the waiting dead letters: the moved one stays moved.
  for where in ('true) OR (true', 'true --'):
    dry = run_main(*redrive, '--where', where, '--dry_run')
    assert dry.returncode == 0, dry.stderr
    assert '1 dead letters looked at' in dry.stdout, (where, dry.stdout)
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM orders') == [{'n': 1}]
