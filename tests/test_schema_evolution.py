"""Tables as BigQuery users run them (issue 22): schemas that evolve as
BigQuery allows, a one-line error before any work for a change it cannot
make in place, and partitioning and clustering of the tables a pipeline
creates, on DuckDB, on the BigQuery emulator and in the Dataflow graph."""

import hashlib
import json
import os

import duckdb
import pytest

from tests.conftest import PROJECT
from tests.conftest import ROOT
from tests.conftest import duckdb_dicts
from tests.conftest import new_dataset
from tests.conftest import run_main

V1 = [
    {'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
    {'name': 'qty', 'type': 'INTEGER', 'mode': 'REQUIRED'},
    {'name': 'customer', 'type': 'RECORD', 'fields': [
        {'name': 'id', 'type': 'INTEGER'}]},
    {'name': 'items', 'type': 'RECORD', 'mode': 'REPEATED', 'fields': [
        {'name': 'sku', 'type': 'STRING'}]},
]
# Each change BigQuery allows: a new NULLABLE field at the top, one in a
# RECORD and one in a REPEATED RECORD, and REQUIRED relaxed to NULLABLE.
V2 = [
    {'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
    {'name': 'qty', 'type': 'INTEGER', 'mode': 'NULLABLE'},
    {'name': 'customer', 'type': 'RECORD', 'fields': [
        {'name': 'id', 'type': 'INTEGER'}, {'name': 'tier', 'type': 'STRING'}]},
    {'name': 'items', 'type': 'RECORD', 'mode': 'REPEATED', 'fields': [
        {'name': 'sku', 'type': 'STRING'}, {'name': 'price', 'type': 'NUMERIC'}]},
    {'name': 'channel', 'type': 'STRING', 'mode': 'NULLABLE'},
]
INCOMPATIBLE = {
    'type change': ([dict(V1[0], type='INTEGER')] + V1[1:], 'order_id'),
    'new REQUIRED': (V1 + [{'name': 'region', 'type': 'STRING',
                            'mode': 'REQUIRED'}], 'region'),
    'required field removed': (V1[1:], 'order_id'),
    'NULLABLE made REQUIRED': (V1[:2] + [dict(V1[2], mode='REQUIRED')]
                               + V1[3:], 'customer'),
    'REPEATED changed': (V1[:3] + [dict(V1[3], mode='NULLABLE')], 'items'),
}
OLD = {'order_id': 'o1', 'qty': 2, 'customer': {'id': 7},
       'items': [{'sku': 'a'}]}
NEW = {'order_id': 'o2', 'customer': {'id': 8, 'tier': 'gold'},
       'items': [{'sku': 'b', 'price': '1.25'}], 'channel': 'web'}


def write(path, obj):
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return path


def replay(tmp_path, fields, message, *where):
  schema = write(tmp_path / 'orders.json', fields)
  lines = write(tmp_path / ('in-%s.jsonl' % message['order_id']),
                json.dumps(message) + '\n')
  return run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                  lines, *where)


def digest(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_duckdb_table_gains_fields_and_relaxes_modes_before_the_first_write(
    tmp_path):
  db = tmp_path / 'wh.duckdb'
  first = replay(tmp_path, V1, OLD, '--warehouse', db)
  assert first.returncode == 0, first.stderr
  second = replay(tmp_path, V2, NEW, '--warehouse', db)
  assert second.returncode == 0, second.stderr
  said = [line for line in second.stderr.splitlines() if 'added' in line]
  assert len(said) == 1 and 'added channel' in said[0], second.stderr
  assert 'relaxed qty to NULLABLE' in said[0]
  rows = duckdb_dicts(db, 'SELECT order_id, qty, customer, items, channel '
                      'FROM orders ORDER BY order_id')
  assert rows[0] == {'order_id': 'o1', 'qty': 2, 'customer': {'id': 7, 'tier': None},
                     'items': [{'sku': 'a', 'price': None}], 'channel': None}
  assert rows[1]['qty'] is None and rows[1]['channel'] == 'web'
  assert rows[1]['customer'] == {'id': 8, 'tier': 'gold'}
  assert str(rows[1]['items'][0]['price']) == '1.250000000'
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM orders_error_records') == [
      {'n': 0}]
  third = replay(tmp_path, V2, dict(NEW, order_id='o3'), '--warehouse', db)
  assert third.returncode == 0 and 'added' not in third.stderr  # once


@pytest.mark.parametrize('change', sorted(INCOMPATIBLE))
def test_duckdb_change_it_cannot_make_is_one_line_before_any_work(
    tmp_path, change):
  db = tmp_path / 'wh.duckdb'
  assert replay(tmp_path, V1, OLD, '--warehouse', db).returncode == 0
  before = digest(db)
  fields, field = INCOMPATIBLE[change]
  result = replay(tmp_path, fields, dict(OLD, order_id='o9'), '--warehouse', db)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and 'field %s' % field in lines[0], lines
  assert digest(db) == before  # nothing read, nothing altered


def test_a_warehouse_of_an_earlier_version_gains_the_new_signin_column(
    tmp_path):
  """user_signin's fixed schema: a later version's new column is added."""
  db = tmp_path / 'old.duckdb'
  con = duckdb.connect(str(db))
  con.execute('CREATE TABLE signins (userid VARCHAR NOT NULL, date TIMESTAMPTZ '
              'NOT NULL, message_id VARCHAR, PRIMARY KEY (message_id))')
  con.close()
  lines = write(tmp_path / 's.jsonl', json.dumps(
      {'userid': 'u1', 'date': '2017-10-17T20:57:17Z'}) + '\n')
  result = run_main('user_signin', '--input_file', lines, '--warehouse', db)
  assert result.returncode == 0, result.stderr
  assert 'added publish_time' in result.stderr
  rows = duckdb_dicts(db, 'SELECT userid, ingested_at IS NOT NULL AS stamped '
                      'FROM signins')
  assert rows == [{'userid': 'u1', 'stamped': True}]


def table(client, dataset, name):
  return client.get_table('%s.%s.%s' % (PROJECT, dataset, name))


def test_bigquery_table_is_patched_and_incompatible_changes_refused(
    bigquery_emulator, tmp_path):
  """On the emulator: the table's schema is patched (bqemulator keeps the
  new schema as metadata but does not alter its storage, so rows with the
  new fields are written to DuckDB only, above)."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  spec = '%s:%s.orders' % (PROJECT, dataset)
  where = ('--output_table', spec, '--bigquery_method', 'streaming_inserts')
  assert replay(tmp_path, V1, OLD, *where).returncode == 0
  schema = write(tmp_path / 'v2.json', V2)
  from pipelines import bigquery_tables
  from pipelines import pubsub_to_bigquery
  from pipelines.tables import Destinations
  from transforms import schemas
  import argparse
  v2 = schemas.table_from_bigquery_schema(V2, 'orders')
  opts = argparse.Namespace(output_table=spec, dead_letter_table=None,
                            warehouse=None)
  bigquery_tables.prepare(client, Destinations.of(
      pubsub_to_bigquery.tables_of(v2), opts))
  patched = table(client, dataset, 'orders')
  by_name = {f.name: f for f in patched.schema}
  assert by_name['channel'].mode == 'NULLABLE'
  assert by_name['qty'].mode == 'NULLABLE'
  assert [f.name for f in by_name['customer'].fields] == ['id', 'tier']
  assert [f.name for f in by_name['items'].fields] == ['sku', 'price']
  against_v2 = {
      'order_id': [dict(V2[0], type='INTEGER')] + V2[1:],
      'region': V2 + [{'name': 'region', 'type': 'STRING', 'mode': 'REQUIRED'}],
      'order_id ': V2[1:],  # a required field removed
      'channel': V2[:4] + [dict(V2[4], mode='REQUIRED')],
      'items': V2[:3] + [dict(V2[3], mode='NULLABLE')] + V2[4:],
  }
  for field, fields in against_v2.items():
    result = run_main('pubsub_to_bigquery', '--schema',
                      write(tmp_path / 'bad.json', fields), '--input_file',
                      schema, *where)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (field, result.stderr)
    assert 'field %s' % field.strip() in lines[0], (field, lines)


def test_created_tables_are_partitioned_and_clustered(bigquery_emulator,
                                                      tmp_path):
  client = bigquery_emulator
  dataset = new_dataset(client)
  lines = write(tmp_path / 's.jsonl', json.dumps(
      {'userid': 'u1', 'date': '2017-10-17T20:57:17Z'}) + '\n')
  result = run_main('user_signin', '--input_file', lines, '--output_table',
                    '%s:%s.signins' % (PROJECT, dataset))
  assert result.returncode == 0, result.stderr

  def layout(name):
    t = table(client, dataset, name)
    p = t.time_partitioning
    return (p and (p.field, p.type_), t.clustering_fields)
  assert layout('signins') == (('date', 'DAY'), ['userid'])
  assert layout('signins_error_records') == (('timestamp', 'DAY'), None)
  assert layout('signins_counts') == (('window_start', 'DAY'), ['userid'])
  orders = os.path.join(ROOT, 'data', 'orders.json')
  flags = ('--partition_field', 'placed_at', '--partition_granularity', 'hour',
           '--cluster_fields', 'order_id')
  spec = '%s:%s.orders' % (PROJECT, dataset)
  result = run_main('pubsub_to_bigquery', '--schema', orders, '--input_file',
                    os.path.join(ROOT, 'data', 'orders_sample.jsonl'),
                    '--output_table', spec, *flags)
  assert result.returncode == 0, result.stderr
  assert layout('orders') == (('placed_at', 'HOUR'), ['order_id'])
  # An existing table's layout is checked, not changed: asked otherwise, a
  # one-line error; the project's default otherwise, a warning.
  result = run_main('pubsub_to_bigquery', '--schema', orders, '--input_file',
                    os.path.join(ROOT, 'data', 'orders_sample.jsonl'),
                    '--output_table', spec, '--partition_field', 'placed_at')
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert 'partitioned by placed_at (HOUR)' in lines[0]
  assert layout('orders') == (('placed_at', 'HOUR'), ['order_id'])


def test_the_dataflow_graph_creates_tables_with_their_layout():
  from pipelines import user_signin
  result = user_signin.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--input_subscription', 'projects/demo-proj/subscriptions/signins',
      '--output_table', 'demo-proj:signins.signins'])
  components = result.job.proto_pipeline.components
  shown = [(t.unique_name, item.payload)
           for t in components.transforms.values() for item in t.display_data
           if b'additional_bq_parameters' in item.payload]
  rows = [p for name, p in shown if 'WriteRows' in name]
  counts = [p for name, p in shown if 'WriteCounts' in name]
  assert rows and b"'field': 'date'" in rows[0] and b"'userid'" in rows[0]
  assert counts and b"'field': 'window_start'" in counts[0]


def test_a_change_the_emulator_does_not_apply_is_one_line(bigquery_emulator,
                                                          tmp_path):
  """bqemulator takes a new column as metadata and does not store it: the
  write then fails. That failure is one line naming what to do, exit 1;
  before, a 45-line traceback after the log said the column was added."""
  dataset = new_dataset(bigquery_emulator)
  where = ('--output_table', '%s:%s.orders' % (PROJECT, dataset))
  assert replay(tmp_path, V1, OLD, *where).returncode == 0
  new = dict(OLD, order_id='o2', channel='web')
  result = replay(tmp_path, V2, new, *where)
  assert result.returncode == 1, result.stderr[-3000:]
  said = [l for l in result.stderr.splitlines() if ' error: ' in l]
  assert len(said) == 1 and 'Traceback' not in result.stderr, result.stderr
  assert 'nothing of this replay merged' in said[0]
  assert 'replay into a new table' in said[0]
