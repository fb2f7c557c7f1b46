"""Dead letters you can act on (issue 20): a UDF before the schema check, a
dead-letter topic, and a redrive of stored dead letters through the parse
as it is now; on DuckDB, the Pub/Sub, GCS and BigQuery emulators, and the
Dataflow dry run."""

import hashlib
import json
import uuid

import pytest

from tests.conftest import GCS_BUCKET
from tests.conftest import PROJECT
from tests.conftest import duckdb_dicts
from tests.conftest import new_dataset
from tests.conftest import run_main

SCHEMA = [{'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
          {'name': 'qty', 'type': 'INTEGER', 'mode': 'REQUIRED'},
          {'name': 'price', 'type': 'NUMERIC', 'mode': 'NULLABLE'}]
UDF = '''
import decimal

def fix(order):
  """Renames, repairs, fans out, drops, raises."""
  if order.get('kind') == 'test':
    return None                                   # dropped
  if order.get('kind') == 'boom':
    raise KeyError('no such thing')               # a udf_error
  if 'quantity' in order:
    order['qty'] = order.pop('quantity')          # renamed
  if isinstance(order.get('qty'), str):
    order['qty'] = int(order['qty'])              # repaired
  if 'price' in order:
    order['price'] = decimal.Decimal(order['price']) * 2  # exact: Number text
  if order.get('kind') == 'pair':
    return [dict(order, order_id=order['order_id'] + '-1'),
            dict(order, order_id=order['order_id'] + '-2')]  # fanned out
  if order.get('kind') == 'odd':
    return 42                                     # not an object: udf_error
  return order
'''
MESSAGES = [
    {'order_id': 'a', 'quantity': 1, 'price': 0.1},
    {'order_id': 'b', 'qty': '2'},
    {'order_id': 'c', 'qty': 3, 'kind': 'pair'},
    {'order_id': 'd', 'qty': 4, 'kind': 'test'},
    {'order_id': 'e', 'qty': 5, 'kind': 'boom'},
    {'order_id': 'f', 'qty': 6, 'kind': 'odd'},
]


def files(tmp_path, schema=SCHEMA, messages=MESSAGES, udf=UDF):
  (tmp_path / 'orders.json').write_text(json.dumps(schema))
  (tmp_path / 'in.jsonl').write_text(
      ''.join(json.dumps(m) + '\n' for m in messages))
  (tmp_path / 'fix.py').write_text(udf)
  return tmp_path / 'orders.json', tmp_path / 'in.jsonl', tmp_path / 'fix.py'


def test_udf_renames_repairs_fans_out_drops_and_raises(tmp_path):
  schema, lines, udf = files(tmp_path)
  db = tmp_path / 'wh.duckdb'
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    lines, '--warehouse', db, '--udf', '%s:fix' % udf)
  assert result.returncode == 0, result.stderr
  assert 'dropped:      1' in result.stdout, result.stdout
  rows = duckdb_dicts(db, 'SELECT order_id, qty, price::VARCHAR AS price, '
                      'message_id FROM orders ORDER BY order_id')
  assert [(r['order_id'], r['qty'], r['price']) for r in rows] == [
      ('a', 1, '0.200000000'), ('b', 2, None), ('c-1', 3, None),
      ('c-2', 3, None)]
  assert rows[2]['message_id'].endswith(':3#0')
  assert rows[3]['message_id'].endswith(':3#1')
  dead = duckdb_dicts(db, 'SELECT message_id, reason, errorMessage, stacktrace '
                      'FROM orders_error_records ORDER BY message_id')
  assert [d['reason'] for d in dead] == ['udf_error', 'udf_error']
  assert 'KeyError' in dead[0]['errorMessage']
  assert str(udf) in dead[0]['stacktrace']  # the UDF's own file and line
  assert 'not an object' in dead[1]['errorMessage']
  # 6 messages: 3 became rows (one of them two rows), 1 dropped, 2 dead.
  again = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                   lines, '--warehouse', db, '--udf', '%s:fix' % udf)
  assert again.returncode == 0
  assert len(duckdb_dicts(db, 'SELECT * FROM orders')) == 4  # replay: nothing new


@pytest.mark.parametrize('spec, says', [
    ('missing.py:fix', 'cannot read'),
    ('{udf}:nothing', 'defines no function'),
    ('{udf}', 'not FILE.py:function'),
    ('{bad}:fix', 'does not load'),
])
def test_a_udf_that_cannot_work_is_one_line(tmp_path, spec, says):
  schema, lines, udf = files(tmp_path)
  bad = tmp_path / 'bad.py'
  bad.write_text('def fix(:\n')
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    lines, '--warehouse', tmp_path / 'wh.duckdb', '--udf',
                    spec.format(udf=udf, bad=bad))
  lines_out = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines_out) == 1, result.stderr
  assert '--udf' in lines_out[0] and says in lines_out[0]


def test_udf_from_gcs(gcs_client, tmp_path):
  schema, lines, _ = files(tmp_path)
  name = 'udfs/%s/fix.py' % uuid.uuid4().hex[:8]
  gcs_client.bucket(GCS_BUCKET).blob(name).upload_from_string(UDF)
  db = tmp_path / 'wh.duckdb'
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    lines, '--warehouse', db, '--udf',
                    'gs://%s/%s:fix' % (GCS_BUCKET, name))
  assert result.returncode == 0, result.stderr
  assert len(duckdb_dicts(db, 'SELECT * FROM orders')) == 4


def test_dead_letter_topic_gets_each_dead_letter_once(pubsub_emulator, tmp_path):
  from google.cloud import pubsub_v1
  project = pubsub_emulator.project
  topic = 'dead-%s' % uuid.uuid4().hex[:8]
  publisher = pubsub_v1.PublisherClient()
  subscriber = pubsub_v1.SubscriberClient()
  topic_path = publisher.topic_path(project, topic)
  publisher.create_topic(name=topic_path)
  sub = subscriber.subscription_path(project, topic + '-sub')
  subscriber.create_subscription(name=sub, topic=topic_path)
  schema, lines, _ = files(tmp_path, messages=[
      {'order_id': 'a', 'qty': 1}, {'order_id': 'b'}, {'qty': 'x'},
      'not an object'])
  db = tmp_path / 'wh.duckdb'
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    lines, '--warehouse', db, '--dead_letter_topic', topic_path)
  assert result.returncode == 0, result.stderr
  got = []
  for _ in range(10):
    response = subscriber.pull(subscription=sub, max_messages=100, timeout=5)
    got += [m.message for m in response.received_messages]
    if response.received_messages:
      subscriber.acknowledge(subscription=sub, ack_ids=[
          m.ack_id for m in response.received_messages])
    elif len(got) >= 3:
      break
  stored = duckdb_dicts(db, 'SELECT message_id, reason, field FROM '
                        'orders_error_records ORDER BY message_id')
  published = sorted((m.attributes['original_message_id'],
                      m.attributes['dead_letter_reason'],
                      m.attributes.get('dead_letter_field')) for m in got)
  assert published == [(d['message_id'], d['reason'], d['field'])
                       for d in stored]
  assert len(published) == 3  # each once
  by_id = {m.attributes['original_message_id']: m for m in got}
  assert by_id[stored[0]['message_id']].data == b'{"order_id": "b"}'


def digest(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_redrive_after_a_schema_fix_on_duckdb(tmp_path):
  schema, lines, udf = files(tmp_path, messages=[
      {'order_id': 'a', 'qty': 1}, {'order_id': 'b'}, {'order_id': 'c'},
      {'order_id': 'd', 'qty': 'lots'}])
  db = tmp_path / 'wh.duckdb'
  assert run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                  lines, '--warehouse', db).returncode == 0
  fixed = tmp_path / 'fixed.json'
  fixed.write_text(json.dumps([SCHEMA[0], dict(SCHEMA[1], mode='NULLABLE')]))
  redrive = ('redrive', '--schema', fixed, '--table', 'orders', '--warehouse',
             db)
  before = digest(db)
  dry = run_main(*redrive, '--dry_run')
  assert dry.returncode == 0, dry.stderr
  assert '2 would move' in dry.stdout and 'missing_field=2' in dry.stdout
  assert 'stayed: bad_value=1' in dry.stdout
  assert digest(db) == before  # a dry run changes nothing
  only = run_main(*redrive, '--where', "message_id LIKE '%:2'")
  assert only.returncode == 0 and '1 moved' in only.stdout, only.stdout
  rest = run_main(*redrive)
  assert rest.returncode == 0 and '1 moved' in rest.stdout, rest.stdout
  rows = duckdb_dicts(db, 'SELECT order_id, qty FROM orders ORDER BY 1')
  assert rows == [{'order_id': 'a', 'qty': 1}, {'order_id': 'b', 'qty': None},
                  {'order_id': 'c', 'qty': None}]
  dead = duckdb_dicts(db, 'SELECT reason, redriven_at IS NOT NULL AS moved '
                      'FROM orders_error_records ORDER BY message_id')
  assert dead == [{'reason': 'missing_field', 'moved': True},
                  {'reason': 'missing_field', 'moved': True},
                  {'reason': 'bad_value', 'moved': False}]  # history kept
  again = run_main(*redrive)
  assert again.returncode == 0 and '0 moved' in again.stdout
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM orders') == [{'n': 3}]
  with_udf = run_main(*redrive, '--udf', '%s:fix' % udf)  # int('lots') raises
  assert with_udf.returncode == 0
  assert 'stayed: bad_value=1 (now udf_error)' in with_udf.stdout


def test_redrive_signins_updates_their_counts(tmp_path):
  lines = tmp_path / 's.jsonl'
  lines.write_text('{"userid": "u", "date": "2017-10-17T20:57:17Z"}\n'
                   '{"userid": "u", "date": "17/10/2017 20:58"}\n')
  db = tmp_path / 'wh.duckdb'
  assert run_main('user_signin', '--input_file', lines, '--warehouse',
                  db).returncode == 0
  # The fix: the second line's date, by a UDF is not possible for sign-ins;
  # a redrive with the same parse moves nothing and changes nothing.
  result = run_main('redrive', '--pipeline', 'user_signin', '--warehouse', db)
  assert result.returncode == 0 and '0 moved' in result.stdout, result.stdout
  counts = duckdb_dicts(db, 'SELECT sum(signins) AS n FROM signin_counts')
  assert counts == [{'n': 1}]


def test_redrive_on_the_bigquery_emulator(bigquery_emulator, tmp_path):
  client = bigquery_emulator
  dataset = new_dataset(client)
  spec = '%s:%s.orders' % (PROJECT, dataset)
  schema, lines, _ = files(tmp_path, messages=[
      {'order_id': 'a', 'qty': 1}, {'order_id': 'b'}])
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    lines, '--output_table', spec, '--bigquery_method',
                    'streaming_inserts')
  assert result.returncode == 0, result.stderr
  fixed = tmp_path / 'fixed.json'
  fixed.write_text(json.dumps([SCHEMA[0], dict(SCHEMA[1], mode='NULLABLE')]))
  redrive = ('redrive', '--schema', fixed, '--output_table', spec)
  moved = run_main(*redrive)
  assert moved.returncode == 0 and '1 moved' in moved.stdout, (
      moved.stdout, moved.stderr)
  rows = sorted(tuple(r.values()) for r in client.query(
      'SELECT order_id, qty FROM `%s.orders`' % dataset).result())
  assert rows == [('a', 1), ('b', None)]
  # BigQuery refuses UPDATEs of rows a stream wrote in the last 30 minutes:
  # the moved ids go to a ledger, and a view lists what still waits.
  ledger = [tuple(r.values()) for r in client.query(
      'SELECT d.reason FROM `{d}.orders_error_records` d JOIN '
      '`{d}.orders_error_records_redriven` l USING (message_id)'.format(
          d=dataset)).result()]
  assert ledger == [('missing_field',)]
  assert list(client.query('SELECT * FROM `%s.orders_error_records_waiting`'
                           % dataset).result()) == []
  again = run_main(*redrive)
  assert again.returncode == 0 and '0 moved' in again.stdout
  assert len(list(client.query('SELECT * FROM `%s.orders`' % dataset)
                  .result())) == 2


def test_dataflow_dry_run_with_a_udf(tmp_path):
  _, _, udf = files(tmp_path)
  from pipelines import pubsub_to_bigquery
  import os
  from tests.conftest import ROOT
  result = pubsub_to_bigquery.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--schema', os.path.join(ROOT, 'data', 'orders.json'),
      '--input_subscription', 'projects/demo-proj/subscriptions/orders',
      '--output_table', 'demo-proj:shop.orders', '--udf', '%s:fix' % udf,
      '--dead_letter_topic', 'projects/demo-proj/topics/dead'])
  names = {t.unique_name for t in
           result.job.proto_pipeline.components.transforms.values()}
  assert 'ParseMessages/ParseAndValidate/ParDo(ParseJsonMessageFn)' in names
  assert ('StoreRowsAndDeadLetters/PublishDeadLetters/PublishToTopic' in names)
