"""main.py pubsub_to_bigquery with a schema that is not the sign-ins': file
replays into DuckDB, a stream from the Pub/Sub emulator, rows through Beam's
WriteToBigQuery into the BigQuery emulator, flags, and the Dataflow job."""

import datetime
import decimal
import json
import os
import signal
import uuid

import duckdb
import pytest

from tests.conftest import ROOT
from tests.conftest import new_dataset
from tests.conftest import replay_into_bigquery_and_duckdb
from tests.conftest import run_main
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status

SCHEMA = os.path.join(ROOT, 'data', 'orders.json')
SAMPLE = os.path.join(ROOT, 'data', 'orders_sample.jsonl')
UTC = datetime.timezone.utc
D = decimal.Decimal
EXPECTED_DEAD = [  # (line, reason, field) of the bundled sample
    (4, 'bad_value', 'items[2].price'), (5, 'missing_field', 'placed_at'),
    (6, 'out_of_range', 'customer.id'), (7, 'bad_value', 'placed_at'),
    (8, 'not_object', None), (9, 'not_json', None)]


def query(db, sql):
  con = duckdb.connect(str(db), read_only=True)
  try:
    return con.execute(sql).fetchall()
  finally:
    con.close()


def test_replay_of_the_bundled_orders_into_duckdb(tmp_path):
  db = tmp_path / 'shop.duckdb'
  for new in (3, 0):  # the second replay adds nothing, and says so
    result = run_main('pubsub_to_bigquery', '--schema', SCHEMA, '--input_file',
                      SAMPLE, '--warehouse', db)
    assert result.returncode == 0, result.stderr
    assert 'rows:         %d  new this run' % new in result.stdout
    assert 'table orders: 3)' in result.stdout
    assert 'dead letters: %d  new this run (table: 6' % (
        6 if new else 0) in result.stdout
    assert 'pubsub_to_bigquery: 9 read  +%d rows' % new in result.stderr
  dead = query(db, 'SELECT message_id, reason, field FROM orders_error_records')
  assert sorted(dead) == sorted(
      ('file:%s:%d' % (SAMPLE, line), reason, field)
      for line, reason, field in EXPECTED_DEAD)
  rows = query(db, 'SELECT order_id, placed_at, customer, items, total, paid, '
               'delivery_date, extra, message_id FROM orders ORDER BY 1')
  assert rows[0] == (
      'A-1001', datetime.datetime(2026, 11, 28, 9, 15, tzinfo=UTC),
      {'id': 42, 'email': 'ada@example.com'},
      [{'sku': 'tea', 'quantity': 2, 'price': D('4.5')},
       {'sku': 'cup', 'quantity': 1, 'price': D('12')}],
      D('21'), True, datetime.date(2026, 12, 1), '{"gift":true}',
      'file:%s:1' % SAMPLE)
  assert rows[1][:2] == ('A-1002', datetime.datetime(
      2026, 11, 28, 9, 15, tzinfo=UTC))  # epoch seconds
  assert rows[1][5] is False and rows[2][3] == []


def test_flags_are_checked(tmp_path):
  bad = tmp_path / 'bad.json'
  bad.write_text(json.dumps([{'name': 'a', 'type': 'STRNG'}]))
  cases = [
      ([], '--schema is required'),
      (['--schema', tmp_path / 'none.json'], '--schema: cannot read'),
      (['--schema', bad], "--schema: a: unknown type 'STRNG'"),
      (['--schema', SCHEMA, '--event_time_field', 'order_id'],
       "--event_time_field: 'order_id' is not a TIMESTAMP field"),
      (['--schema', SCHEMA, '--unknown_fields', 'keep'],
       "argument --unknown_fields: invalid choice"),
  ]
  for args, message in cases:
    result = run_main('pubsub_to_bigquery', '--input_file', SAMPLE,
                      '--warehouse', tmp_path / 'w.duckdb', *args)
    assert result.returncode == 2, (args, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (args, result.stderr)


def test_unknown_fields_rejected_and_event_time(tmp_path):
  db = tmp_path / 'w.duckdb'
  result = run_main('pubsub_to_bigquery', '--schema', SCHEMA, '--input_file',
                    SAMPLE, '--warehouse', db, '--unknown_fields', 'reject',
                    '--event_time_field', 'placed_at', '--table', 'shop')
  assert result.returncode == 0, result.stderr
  assert ('unknown_field', 'extra') not in query(
      db, 'SELECT reason, field FROM shop_error_records')  # extra is known
  assert query(db, 'SELECT count(*) FROM shop')[0][0] == 3


@pytest.mark.emulator
def test_stream_from_pubsub_count_in_equals_count_out(pubsub_emulator, tmp_path):
  from google.cloud import pubsub_v1

  from tools import publish_signins
  project = pubsub_emulator.project
  topic, sub = 'orders-%s' % uuid.uuid4().hex[:8], 'orders-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(project, topic, 0, subscription=sub)
  db, status = tmp_path / 'w.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--schema', SCHEMA, '--input_subscription',
      'projects/%s/subscriptions/%s' % (project, sub), '--warehouse', db,
      '--progress_seconds', 0.3, '--status_file', status, '--unknown_fields',
      'reject', name='pubsub_to_bigquery')
  with open(SAMPLE, 'rb') as f:
    lines = [line.rstrip(b'\n') for line in f]
  payloads = lines * 30 + [b'{"order_id": "X", "placed_at": "2026-11-28", '
                           b'"coupon": "FREE"}']
  publisher = pubsub_v1.PublisherClient()
  ids = [f.result() for f in [
      publisher.publish(publisher.topic_path(project, topic), p)
      for p in payloads]]
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids), proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  rows = [r[0] for r in query(db, 'SELECT message_id FROM orders')]
  dead = query(db, 'SELECT message_id, reason, field FROM orders_error_records')
  stored = rows + [d[0] for d in dead]
  assert len(stored) == len(set(stored)) and set(stored) == set(ids)
  assert len(rows) == 3 * 30
  assert ('unknown_field', 'coupon') in [(d[1], d[2]) for d in dead]


ALL_TYPES = [
    {'name': 's', 'type': 'STRING'}, {'name': 'b', 'type': 'BYTES'},
    {'name': 'i', 'type': 'INT64', 'mode': 'REQUIRED'},
    {'name': 'f', 'type': 'FLOAT64'}, {'name': 'n', 'type': 'NUMERIC'},
    {'name': 'ok', 'type': 'BOOL'}, {'name': 'ts', 'type': 'TIMESTAMP'},
    {'name': 'd', 'type': 'DATE'}, {'name': 't', 'type': 'TIME'},
    {'name': 'dt', 'type': 'DATETIME'},
    {'name': 'tags', 'type': 'STRING', 'mode': 'REPEATED'},
    {'name': 'rec', 'type': 'RECORD', 'mode': 'REPEATED', 'fields': [
        {'name': 'k', 'type': 'STRING', 'mode': 'REQUIRED'},
        {'name': 'v', 'type': 'INT64'}]},
]
ALL_VALUES = {
    's': 'héllo', 'b': 'AP8=', 'i': '-42', 'f': 1.25, 'n': '123.456',
    'ok': 'true', 'ts': '2017-10-17 22:57:17.5+02:00', 'd': '2017-10-17',
    't': '20:57:17.25', 'dt': '2017-10-17T20:57:17', 'tags': ['x', 'y'],
    'rec': [{'k': 'a', 'v': 1}, {'k': 'b'}]}


@pytest.mark.emulator
def test_rows_read_back_equal_from_bigquery_and_duckdb(bigquery_emulator,
                                                       tmp_path):
  """The same messages through Beam's WriteToBigQuery (streaming inserts,
  exact BYTES) into the emulator and into DuckDB read back equal."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  schema = tmp_path / 'everything.json'
  schema.write_text(json.dumps(ALL_TYPES))
  replay = tmp_path / 'events.jsonl'
  replay.write_text('\n'.join(json.dumps(dict(ALL_VALUES, i=str(i)))
                              for i in range(3)) + '\n{"i": "x"}\n')
  db = tmp_path / 'w.duckdb'
  replay_into_bigquery_and_duckdb(schema, replay, dataset, 'everything', db)
  names = [f['name'] for f in ALL_TYPES] + ['message_id']
  sql = 'SELECT %s FROM %%s ORDER BY message_id' % ', '.join(names)
  from_bigquery = [tuple(r.values()) for r in client.query(
      sql % ('%s.everything' % dataset)).result()]
  from_duckdb = query(db, sql % 'everything')
  assert len(from_bigquery) == 3 and from_bigquery == from_duckdb
  assert from_duckdb[0][1] == b'\x00\xff'
  assert [tuple(r.values()) for r in client.query(
      'SELECT reason, field FROM %s.everything_error_records' % dataset
  ).result()] == [('bad_value', 'i')]


def test_dataflow_dry_run_builds_the_job():
  from pipelines import pubsub_to_bigquery
  result = pubsub_to_bigquery.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--schema', SCHEMA,
      '--input_subscription', 'projects/demo-proj/subscriptions/orders',
      '--output_table', 'demo-proj:shop.orders'])
  assert result.job.proto.type == result.job.proto.type.JOB_TYPE_STREAMING
  names = {t.unique_name for t in
           result.job.proto_pipeline.components.transforms.values()}
  for step in ('ReadMessages/ReadFromPubSub', 'ParseMessages',
               'StoreRowsAndDeadLetters/WriteRows/WriteToBigQuery',
               'StoreRowsAndDeadLetters/WriteDeadLetters/WriteToBigQuery'):
    assert step in names, step
