"""The BigQuery path for real: the Dataflow graph's WriteToBigQuery against
bqemulator (file loads through the GCS emulator, streaming inserts), on the
local runner, queried back with google-cloud-bigquery.

The emulator differs from BigQuery (REQUIRED not enforced, no insertId
de-duplication, BYTES in JSON load files kept as base64 text): no assertion
here passes because of one of those; exact BYTES are checked through
streaming inserts, uniqueness through the Pub/Sub message ids we publish.
"""

import collections
import datetime
import json
import os
import signal
import time
import uuid

import pytest
from google.cloud import bigquery

from tests.conftest import PROJECT
from tests.conftest import ROOT
from tests.conftest import new_dataset
from tests.conftest import run_main
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins

pytestmark = pytest.mark.emulator
UTC = datetime.timezone.utc


def query(client, sql):
  return [tuple(r.values()) for r in client.query(sql).result()]


def test_wordcount_file_loads_truncate_and_append(bigquery_emulator, tmp_path):
  client = bigquery_emulator
  dataset = new_dataset(client)
  table = '%s:%s.word_counts' % (PROJECT, dataset)
  text = tmp_path / 'in.txt'
  text.write_text('the cat and the hat\nThe end of the cat\n')
  out = tmp_path / 'counts'

  def run(disposition):
    result = run_main('wordcount', '--input', text, '--output', out,
                      '--num_shards', 1, '--output_table', table,
                      '--write_disposition', disposition)
    assert result.returncode == 0, result.stderr
    return sorted(query(client, 'SELECT word, `count` FROM %s.word_counts'
                        % dataset))

  first = run('truncate')
  with open(str(out) + '-00000-of-00001') as f:
    from_text = sorted((w, int(c)) for w, c in (
        line.rsplit(': ', 1) for line in f.read().splitlines()))
  assert first == from_text
  assert dict(first)['the'] == 3
  assert run('truncate') == from_text  # truncate replaces
  doubled = run('append')
  assert doubled == sorted(from_text + from_text)


def test_missing_dataset_is_a_one_line_error(bigquery_emulator, tmp_path):
  text = tmp_path / 'in.txt'
  text.write_text('a b\n')
  result = run_main('wordcount', '--input', text, '--output',
                    tmp_path / 'out', '--output_table',
                    '%s:no_such_dataset.words' % PROJECT)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert '--output_table: dataset %s:no_such_dataset does not exist' % (
      PROJECT) in lines[0]


SIGNIN_LINES = [
    b'{"userid": "93234234", "date": "2017-10-17T20:57:17.338320"}',
    b'{"userid": 42, "date": "2017-10-17T22:57:17+02:00"}',
    b'{"userid": "7", "date": "not a date"}',
    b'\xff\xfe not utf-8',
]


def test_signin_replay_to_bigquery_exact_values(bigquery_emulator, tmp_path):
  client = bigquery_emulator
  dataset = new_dataset(client)
  replay = tmp_path / 'signins.jsonl'
  replay.write_bytes(b'\n'.join(SIGNIN_LINES) + b'\n')
  result = run_main(
      'user_signin', '--input_file', replay, '--output_table',
      '%s:%s.signins' % (PROJECT, dataset),
      '--bigquery_method', 'streaming_inserts', '--window_seconds', 3600)
  assert result.returncode == 0, result.stderr

  def schema(table):
    return [(f.name, f.field_type, f.mode, [
        (g.name, g.field_type, g.mode) for g in f.fields])
            for f in client.get_table('%s.%s' % (dataset, table)).schema]
  from transforms import schemas
  for table, ours in (('signins', schemas.SIGNINS),
                      ('signins_error_records', schemas.SIGNIN_ERRORS),
                      ('signins_counts', schemas.SIGNIN_COUNTS)):
    assert schema(table) == [
        (f.name, f.type, f.mode, [(g.name, g.type, g.mode) for g in f.fields])
        for f in ours.fields], table

  path = str(replay)
  rows = sorted(query(client, 'SELECT message_id, userid, date, publish_time '
                      'FROM %s.signins' % dataset))
  when = datetime.datetime(2017, 10, 17, 20, 57, 17, 338320, tzinfo=UTC)
  assert rows == [
      ('file:%s:1' % path, '93234234', when, None),
      ('file:%s:2' % path, '42', datetime.datetime(
          2017, 10, 17, 20, 57, 17, tzinfo=UTC), None),
  ]
  dead = sorted(
      client.query('SELECT * FROM %s.signins_error_records' % dataset).result(),
      key=lambda r: r['message_id'])
  assert [(d['message_id'], d['reason']) for d in dead] == [
      ('file:%s:3' % path, 'bad_date'), ('file:%s:4' % path, 'not_utf8')]
  assert dead[1]['payloadBytes'] == SIGNIN_LINES[3]  # exact raw bytes
  assert dead[0]['payloadString'] == SIGNIN_LINES[2].decode()
  assert dead[1]['attributes'] == [
      {'key': 'line', 'value': '4'}, {'key': 'source_file', 'value': path}]
  assert 'not a date' in dead[0]['errorMessage']
  counts = query(client, 'SELECT userid, signins FROM %s.signins_counts '
                 'ORDER BY userid' % dataset)
  assert counts == [('42', 1), ('93234234', 1)]


def test_signin_replay_through_file_loads(bigquery_emulator, tmp_path):
  """The batch default (file loads through gs:// on the GCS emulator)."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  replay = tmp_path / 'signins.jsonl'
  replay.write_bytes(b'\n'.join(SIGNIN_LINES) + b'\n')
  result = run_main('user_signin', '--input_file', replay, '--output_table',
                    '%s:%s.signins' % (PROJECT, dataset))
  assert result.returncode == 0, result.stderr
  assert sorted(query(client, 'SELECT userid FROM %s.signins' % dataset)) == [
      ('42',), ('93234234',)]
  assert sorted(query(client, 'SELECT reason FROM %s.signins_error_records'
                      % dataset)) == [('bad_date',), ('not_utf8',)]


def bigquery_ids(client, dataset):
  rows = [r[0] for r in query(
      client, 'SELECT message_id FROM %s.signins' % dataset)]
  dead = query(client, 'SELECT message_id, reason, errorMessage FROM '
               '%s.signins_error_records' % dataset)
  return rows, dead


def stream_to_bigquery(pubsub, tmp_path, dataset, payloads=None, count=0,
                       after_start=None):
  """main.py user_signin from a new subscription into BigQuery; publishes
  ``payloads`` (or ``count`` sample sign-ins) and waits until the reader has
  heard BigQuery accept a row or dead letter for each. ``after_start()`` is
  called once the stream runs, before publishing. Returns (pipeline,
  published ids, kinds)."""
  from google.cloud import pubsub_v1
  project = pubsub.project
  topic, sub = 'bq-%s' % uuid.uuid4().hex[:8], 'bq-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(project, topic, 0, subscription=sub)
  status = tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--input_subscription',
      'projects/%s/subscriptions/%s' % (project, sub),
      '--output_table', '%s:%s.signins' % (PROJECT, dataset),
      '--warehouse', tmp_path / 'deliveries.duckdb', '--max_message_bytes',
      2048, '--window_seconds', 1, '--allowed_lateness_seconds', 0,
      '--progress_seconds', 0.5, '--status_file', status)
  if after_start is not None:
    wait_for_status(status, lambda s: 'messages_in' in s, proc)
    after_start()
  if payloads is None:
    n, ids, kinds = publish_signins.publish(
        project, topic, count, bad_fraction=0.2, max_message_bytes=2048)
  else:
    publisher = pubsub_v1.PublisherClient()
    futures = [publisher.publish(publisher.topic_path(project, topic), p)
               for p in payloads]
    n, ids, kinds = len(payloads), [f.result() for f in futures], {}
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= n, proc)
  return proc, ids, kinds


def test_stream_from_pubsub_to_bigquery(pubsub_emulator, bigquery_emulator,
                                        tmp_path):
  client = bigquery_emulator
  dataset = new_dataset(client)
  proc, ids, kinds = stream_to_bigquery(
      pubsub_emulator, tmp_path, dataset, count=400)
  # Windows of one second close as the watermark (now) passes them.
  deadline = time.monotonic() + 30
  while not query(client, 'SELECT 1 FROM %s.signins_counts LIMIT 1' % dataset):
    assert time.monotonic() < deadline, 'no window counted'
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert 'stored:' in out

  rows, dead = bigquery_ids(client, dataset)
  stored = rows + [d[0] for d in dead]
  assert len(stored) == len(set(stored)) == len(ids)  # none twice, none lost
  assert set(stored) == set(ids)
  assert len(rows) == kinds['valid']
  assert collections.Counter(d[1] for d in dead) == {
      k: n for k, n in kinds.items() if k != 'valid'}
  counted = query(client, 'SELECT sum(signins) FROM %s.signins_counts' %
                  dataset)[0][0]
  assert 0 < counted <= kinds['valid']


def test_rows_bigquery_refuses_become_dead_letters(
    pubsub_emulator, bigquery_emulator, tmp_path):
  """The rows table replaced under a running stream by one with userid
  INTEGER (at the start that is a one-line error: a type change): BigQuery
  refuses the non-numeric user ids our validator accepts; they become
  sink_rejected dead letters with BigQuery's error, and nothing is lost."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  name = '%s.%s.signins' % (PROJECT, dataset)
  integer_userid = [
      bigquery.SchemaField('userid', 'INTEGER'),
      bigquery.SchemaField('date', 'TIMESTAMP'),
      bigquery.SchemaField('message_id', 'STRING'),
      bigquery.SchemaField('publish_time', 'TIMESTAMP'),
      bigquery.SchemaField('ingested_at', 'TIMESTAMP')]
  client.create_table(bigquery.Table(name, schema=integer_userid))
  at_start = run_main('user_signin', '--input_file', os.path.join(
      ROOT, 'data', 'orders_sample.jsonl'), '--output_table',
                      '%s:%s.signins' % (PROJECT, dataset))
  assert at_start.returncode == 2, at_start.stderr
  assert 'field userid is INTEGER in the table' in at_start.stderr
  client.delete_table(name)

  def replace_the_table():
    client.delete_table(name)
    client.create_table(bigquery.Table(name, schema=integer_userid))
  userids = ['user-%d' % i if i % 4 == 0 else str(1000 + i) for i in range(80)]
  payloads = [json.dumps({'userid': u, 'date': '2017-10-17T20:57:17Z'}).encode()
              for u in userids]
  proc, ids, _ = stream_to_bigquery(
      pubsub_emulator, tmp_path, dataset, payloads=payloads,
      after_start=replace_the_table)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  rows, dead = bigquery_ids(client, dataset)
  assert sorted(rows + [d[0] for d in dead]) == sorted(ids)
  assert len(rows) == 60 and len(dead) == 20
  assert {d[1] for d in dead} == {'sink_rejected'}
  assert all('invalid' in d[2] and 'user-' in d[2] for d in dead), dead[:2]
  refused = [json.loads(r[0]) for r in query(
      client, 'SELECT payloadString FROM %s.signins_error_records' % dataset)]
  assert sorted(r['userid'] for r in refused) == sorted(
      u for u in userids if u.startswith('user-'))
  assert {r['message_id'] for r in refused} <= set(ids)


def test_json_columns_by_file_loads_are_json_values_not_strings(
    bigquery_emulator, tmp_path):
  """JSON columns (top level, REPEATED, inside a RECORD) stored by file
  loads, Beam's default for a batch, are the same JSON values as streaming
  inserts store: a load file takes a JSON column's raw JSON value, so JSON
  text there would be stored as one JSON string. And Beam's warning about
  exactly this is not shown (issue 29: no warning a user can do nothing
  about)."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  schema = tmp_path / 'things.json'
  schema.write_text(json.dumps([
      {'name': 'id', 'type': 'STRING', 'mode': 'REQUIRED'},
      {'name': 'j', 'type': 'JSON'},
      {'name': 'js', 'type': 'JSON', 'mode': 'REPEATED'},
      {'name': 'r', 'type': 'RECORD', 'fields': [{'name': 'k', 'type': 'JSON'}]},
  ]))
  values = [{'gift': True, 'n': [1, 2.5, None]}, 18446744073709551615, 'text',
            [1, {'b': 'é'}], -0.25, False, {'deep': {'deeper': [{}]}}]
  replay = tmp_path / 'things.jsonl'
  replay.write_text(''.join(json.dumps(
      {'id': str(i), 'j': v, 'js': [v, v], 'r': {'k': v}}) + '\n'
      for i, v in enumerate(values)))
  stored = {}
  for method in ('file_loads', 'streaming_inserts'):
    result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                      replay, '--output_table', '%s:%s.%s' % (
                          PROJECT, dataset, method),
                      '--bigquery_method', method)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'Found JSON type' not in result.stderr, result.stderr[-3000:]
    stored[method] = query(client, (
        'SELECT id, TO_JSON_STRING(j), TO_JSON_STRING(js), '
        'TO_JSON_STRING(r.k) FROM %s.%s ORDER BY id') % (dataset, method))
  assert stored['file_loads'] == stored['streaming_inserts']
  # JSON text loaded as text would read back as strings, not these values.
  assert [json.loads(r[1]) for r in stored['file_loads']] == values
  assert [json.loads(r[2]) for r in stored['file_loads']] == [
      [v, v] for v in values]
