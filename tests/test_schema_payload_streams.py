"""Avro and Protocol Buffer payloads for real (issue 30): a live stream on the
official Pub/Sub emulator with two schema revisions interleaved, both
encodings, a publisher's retries under new message ids (--id_attribute) and
the metadata columns; the same subscription's twin archived; the archive
replayed gives the same rows and dead letters. And the table derived from a
.proto, on the BigQuery emulator and in DuckDB, read back equal."""

import datetime
import io
import json
import os
import signal
import uuid

import fastavro
import pytest

from tests.conftest import PROJECT
from tests.conftest import ROOT
from tests.conftest import duckdb_dicts
from tests.conftest import new_dataset
from tests.conftest import run_main
from tests.test_archive import archive_run
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins

pytestmark = pytest.mark.emulator
UTC = datetime.timezone.utc
V1 = json.load(open(os.path.join(ROOT, 'data', 'signin.avsc')))
V2 = dict(V1, fields=V1['fields'] + [
    {'name': 'country', 'type': ['null', 'string'], 'default': None}])


def avro(schema, record, encoding):
  parsed = fastavro.parse_schema(schema)
  if encoding == 'BINARY':
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()
  out = io.StringIO()
  fastavro.json_writer(out, parsed, [record])
  return out.getvalue().strip().encode('utf-8')


def test_two_revisions_live_and_from_the_archive(pubsub_emulator, tmp_path):
  project = pubsub_emulator.project
  topic = 'avro-%s' % uuid.uuid4().hex[:8]
  live_sub, archive_sub = topic + '-live', topic + '-archive'
  publish_signins.publish(project, topic, 0, subscription=live_sub)
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  subscriber = pubsub_v1.SubscriberClient()
  topic_path = publisher.topic_path(project, topic)
  subscriber.create_subscription(
      name=subscriber.subscription_path(project, archive_sub), topic=topic_path)
  path = lambda s: 'projects/%s/subscriptions/%s' % (project, s)  # noqa: E731
  revisions = tmp_path / 'revisions'
  revisions.mkdir()
  (revisions / 'rev00001.avsc').write_text(json.dumps(V1))
  (revisions / 'rev00002.avsc').write_text(json.dumps(V2))
  flags = ('--payload_format', 'avro', '--payload_schema', revisions,
           '--id_attribute', 'event_id', '--write_metadata', '--table',
           'signins')
  (tmp_path / 'a').mkdir()
  (tmp_path / 'l').mkdir()
  arch, arch_status = archive_run(tmp_path / 'a', path(archive_sub),
                                  str(tmp_path / 'archive'))
  live_db, live_status = tmp_path / 'live.duckdb', tmp_path / 'live.json'
  live = start_pipeline(tmp_path / 'l', '--input_subscription', path(live_sub),
                        '--warehouse', live_db, '--progress_seconds', 0.3,
                        '--status_file', live_status, *flags,
                        name='pubsub_to_bigquery')
  wait_for_status(arch_status, lambda s: 'messages_in' in s, arch)
  wait_for_status(live_status, lambda s: 'messages_in' in s, live)
  when = datetime.datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)
  sent = []  # (payload, attributes)
  for i in range(40):
    rev, schema = (('rev00001', V1) if i % 2 else ('rev00002', V2))
    encoding = 'JSON' if i % 3 == 0 else 'BINARY'
    record = {'userid': 'u%d' % i, 'date': when, 'device': 'IOS'}
    if schema is V2:
      record['country'] = 'NO' if i % 4 else None
    sent.append((avro(schema, record, encoding), {
        'googclient_schemarevisionid': rev,
        'googclient_schemaencoding': encoding, 'event_id': 'e%d' % i}))
  retries = [sent[5], sent[6], sent[6]]  # new message ids, same events
  unknown = (avro(V1, {'userid': 'x', 'date': when, 'device': None},
                  'BINARY'), {'googclient_schemarevisionid': 'rev99999',
                              'event_id': 'e-unknown'})
  cut = (sent[1][0][:3], dict(sent[1][1], event_id='e-cut'))
  no_id = (avro(V1, {'userid': 'no-id', 'date': when, 'device': 'WEB'},
                'BINARY'), {'googclient_schemarevisionid': 'rev00001'})
  ordered = pubsub_v1.PublisherClient(
      publisher_options=pubsub_v1.types.PublisherOptions(
          enable_message_ordering=True))
  futures = [publisher.publish(topic_path, data, **attrs)
             for data, attrs in sent + retries + [unknown, cut]]
  futures.append(ordered.publish(topic_path, no_id[0], ordering_key='k1',
                                 **no_id[1]))
  ids = [f.result(timeout=60) for f in futures]
  for proc, status in ((arch, arch_status), (live, live_status)):
    # Every message read and settled (the retries store nothing new).
    wait_for_status(status, lambda s: s.get('messages_in', 0) >= len(ids) and
                    s.get('in_flight') == 0, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
  rows = duckdb_dicts(live_db, 'SELECT * FROM signins ORDER BY message_id')
  # 40 events (the retries are no-ops) and the message without event_id.
  assert len(rows) == 41
  by_id = {r['message_id']: r for r in rows}
  assert by_id['e2'] == {
      'userid': 'u2', 'date': when, 'device': 'IOS', 'country': 'NO',
      'subscription_name': path(live_sub),
      'publish_time': by_id['e2']['publish_time'],
      'attributes': json.dumps({
          'event_id': 'e2', 'googclient_schemaencoding': 'BINARY',
          'googclient_schemarevisionid': 'rev00002'}, separators=(',', ':'),
          sort_keys=True), 'message_id': 'e2'}
  assert by_id['e1']['country'] is None  # revision 1 has no country
  assert by_id['e0']['attributes'].count('"JSON"') == 1
  assert by_id[ids[-1]]['userid'] == 'no-id'  # its message id, as said
  assert '"ordering_key":"k1"' in by_id[ids[-1]]['attributes']
  assert isinstance(by_id['e2']['publish_time'], datetime.datetime)
  dead = duckdb_dicts(live_db, 'SELECT message_id, reason FROM '
                      'signins_error_records ORDER BY message_id')
  assert dead == [{'message_id': 'e-cut', 'reason': 'not_avro'},
                  {'message_id': 'e-unknown',
                   'reason': 'unknown_schema_revision'}]
  assert 'no \'event_id\' attribute' in err
  # The archive keeps every message as published (ids, attributes, bytes);
  # replayed with the same flags it gives the same rows and dead letters.
  replay_db = tmp_path / 'replay.duckdb'
  for _ in range(2):
    result = run_main('pubsub_to_bigquery', '--input_file',
                      str(tmp_path / 'archive') + '/**', '--warehouse',
                      replay_db, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
  columns = 'message_id, userid, date, device, country, publish_time, attributes'
  sql = 'SELECT %s FROM signins ORDER BY message_id' % columns
  assert duckdb_dicts(replay_db, sql) == duckdb_dicts(live_db, sql)
  dead_sql = ('SELECT message_id, reason FROM signins_error_records '
              'ORDER BY message_id')
  assert duckdb_dicts(replay_db, dead_sql) == dead
  # With the revision given, the redrive makes the unknown one a row.
  (revisions / 'rev99999.avsc').write_text(json.dumps(V1))
  result = run_main('redrive', '--warehouse', live_db, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  assert duckdb_dicts(live_db, "SELECT userid FROM signins WHERE message_id "
                      "= 'e-unknown'") == [{'userid': 'x'}]


def test_a_proto_derived_table_reads_back_equal_from_bigquery_and_duckdb(
    bigquery_emulator, tmp_path):
  """The shipped .proto's sign-ins, binary and JSON, replayed from an
  archive file into the BigQuery emulator (Beam's WriteToBigQuery) and into
  DuckDB: the same rows."""
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from transforms import archive
  encoders = [publish_signins.SchemaEncoder('protobuf', e, PROJECT)
              for e in ('binary', 'json')]
  when = datetime.datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)
  messages = [PubsubMessage(
      encoders[i % 2].encode({'userid': 'u%d' % i, 'date': when.isoformat()}),
      encoders[i % 2].attributes, message_id=str(i), publish_time=when)
              for i in range(6)]
  messages.append(PubsubMessage(b'\x0a\xff', {}, message_id='bad',
                                publish_time=when))
  path = tmp_path / archive.file_path('archive', 's-', 0, 60, 'b', 'avro')
  path.parent.mkdir(parents=True)
  path.write_bytes(archive.encode([archive.record(m) for m in messages],
                                  'avro'))
  dataset = new_dataset(bigquery_emulator)
  flags = ('--payload_format', 'protobuf', '--payload_schema',
           os.path.join(ROOT, 'data', 'signin.proto'), '--input_file',
           str(tmp_path / 'archive') + '/**')
  db = tmp_path / 'w.duckdb'
  for where in (('--output_table', '%s:%s.signin' % (PROJECT, dataset)),
                ('--warehouse', db)):
    result = run_main('pubsub_to_bigquery', *(flags + where))
    assert result.returncode == 0, result.stderr[-3000:]
  sql = 'SELECT message_id, userid, date, device FROM %s ORDER BY message_id'
  from_bigquery = [dict(r) for r in bigquery_emulator.query(
      sql % ('%s.signin' % dataset)).result()]
  from_duckdb = duckdb_dicts(db, sql % 'signin')
  assert from_bigquery == from_duckdb
  assert len(from_duckdb) == 6 and from_duckdb[0] == {
      'message_id': '0', 'userid': 'u0', 'date': when, 'device': 'WEB'}
  dead = [tuple(r.values()) for r in bigquery_emulator.query(
      'SELECT message_id, reason FROM %s.signin_error_records' % dataset
  ).result()]
  assert dead == [('bad', 'not_protobuf')]


@pytest.mark.parametrize('keyed', [False, True])
def test_a_publishers_retries_are_one_sign_in_with_id_attribute(tmp_path,
                                                                keyed):
  """An archive holding one event published three times under new message
  ids (a publisher's retries): with --id_attribute it is one row, and the
  counts equal counting the rows; without, three (what the flag is for)."""
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from tests.test_restarts_and_replays import counts_that_differ_from_the_rows
  from transforms import archive
  when = datetime.datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
  messages = [PubsubMessage(json.dumps({
      'userid': '9323423%d' % (i % 2), 'date': '2026-12-01T09:30:00Z'}
  ).encode(), {'event_id': 'e%d' % (i // 3)}, message_id=str(100 + i),
                            publish_time=when) for i in range(6)]
  path = tmp_path / archive.file_path('archive', 's-', 0, 60, 'b', 'jsonl')
  path.parent.mkdir(parents=True)
  path.write_bytes(archive.encode([archive.record(m) for m in messages],
                                  'jsonl'))
  db = tmp_path / 'w.duckdb'
  flags = ('--id_attribute', 'event_id') if keyed else ()
  for _ in range(2):
    result = run_main('user_signin', '--input_file',
                      str(tmp_path / 'archive') + '/**', '--warehouse', db,
                      *flags)
    assert result.returncode == 0, result.stderr[-3000:]
  ids = [r['message_id'] for r in duckdb_dicts(
      db, 'SELECT message_id FROM signins ORDER BY 1')]
  assert ids == (['e0', 'e1'] if keyed else [str(100 + i) for i in range(6)])
  assert counts_that_differ_from_the_rows(db, 60) == []


def test_on_dataflow_the_id_attribute_is_the_reads_id_label():
  from pipelines import pubsub_to_bigquery
  result = pubsub_to_bigquery.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--payload_format', 'avro', '--payload_schema',
      os.path.join(ROOT, 'data', 'signin.avsc'), '--id_attribute', 'event_id',
      '--input_subscription', 'projects/demo-proj/subscriptions/signins',
      '--output_table', 'demo-proj:shop.signin'])
  transforms = {t.unique_name: t for t in
                result.job.proto_pipeline.components.transforms.values()}
  read = transforms['ReadMessages/ReadFromPubSub/Read']
  assert read.spec.urn == 'beam:transform:pubsub_read:v1'
  from apache_beam.portability.api import beam_runner_api_pb2
  payload = beam_runner_api_pb2.PubSubReadPayload.FromString(read.spec.payload)
  assert payload.id_attribute == 'event_id'
  assert 'ReadMessages/KeyByIdAttribute' in transforms
