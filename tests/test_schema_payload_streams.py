"""Avro and Protocol Buffer payloads for real (issue 30): a live stream on the
official Pub/Sub emulator with two schema revisions interleaved, both
encodings, a publisher's retries under new message ids (--id_attribute) and
the metadata columns; the same subscription's twin archived; the archive
replayed gives the same rows and dead letters. And the table derived from a
.proto, on the BigQuery emulator and in DuckDB, read back equal."""

import datetime
import json
import os
import signal
import uuid

import pytest

from tests.conftest import PROJECT
from tests.conftest import ROOT
from tests.conftest import duckdb_dicts
from tests.conftest import new_dataset
from tests.conftest import run_main
from tests.test_avro_payloads import encode as avro
from tests.test_archive import archive_run
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins

pytestmark = pytest.mark.emulator
UTC = datetime.timezone.utc
V1 = json.load(open(os.path.join(ROOT, 'data', 'signin.avsc')))
V2 = dict(V1, fields=V1['fields'] + [
    {'name': 'country', 'type': ['null', 'string'], 'default': None}])


def schema_topic(project, name, definitions):
  """A schema in the emulator's schema service with a revision per
  definition, and a topic validated by it (BINARY): Pub/Sub itself checks
  each publish and sets the googclient_* attributes. Returns (schema name,
  revision ids, topic path)."""
  from google.cloud import pubsub_v1
  from google.pubsub_v1.services.schema_service import SchemaServiceClient
  from google.pubsub_v1.types import Encoding
  from google.pubsub_v1.types import Schema
  service = SchemaServiceClient()
  path = service.schema_path(project, name)
  ids = [service.create_schema(request={
      'parent': 'projects/%s' % project, 'schema_id': name,
      'schema': Schema(name=path, type_=Schema.Type.AVRO,
                       definition=json.dumps(definitions[0]))}).revision_id]
  for definition in definitions[1:]:
    ids.append(commit(path, definition))
  publisher = pubsub_v1.PublisherClient()
  topic = publisher.topic_path(project, name + '-topic')
  publisher.create_topic(request={'name': topic, 'schema_settings': {
      'schema': path, 'encoding': Encoding.BINARY}})
  return path, ids, topic


def commit(path, definition):
  from google.pubsub_v1.services.schema_service import SchemaServiceClient
  from google.pubsub_v1.types import Schema
  return SchemaServiceClient().commit_schema(request={
      'name': path, 'schema': Schema(name=path, type_=Schema.Type.AVRO,
                                     definition=json.dumps(definition))
  }).revision_id


def test_revisions_from_pubsubs_schema_service_live_and_from_the_archive(
    pubsub_emulator, tmp_path):
  """A topic with a schema on the emulator (two revisions, a field added;
  a third committed while the stream runs): the stream reads the revisions
  from the schema service, fetches the third when a message names it, keys
  a publisher's retries by --id_attribute and writes the metadata columns.
  The same subscription's twin is archived; the archive replayed with the
  revisions as files gives the same rows; without the third revision's
  file its message is unknown_schema_revision, and the redrive makes it a
  row once the file is there."""
  project = pubsub_emulator.project
  name = 'signin-%s' % uuid.uuid4().hex[:8]
  schema, (rev1, rev2), topic_path = schema_topic(project, name, [V1, V2])
  from google.cloud import pubsub_v1
  subscriber = pubsub_v1.SubscriberClient()
  live_sub, archive_sub = name + '-live', name + '-archive'
  for sub in (live_sub, archive_sub):
    subscriber.create_subscription(
        name=subscriber.subscription_path(project, sub), topic=topic_path)
  path = lambda s: 'projects/%s/subscriptions/%s' % (project, s)  # noqa: E731
  keys = ('--payload_format', 'avro', '--id_attribute', 'event_id',
          '--write_metadata', '--table', 'signins')
  (tmp_path / 'a').mkdir()
  (tmp_path / 'l').mkdir()
  arch, arch_status = archive_run(tmp_path / 'a', path(archive_sub),
                                  str(tmp_path / 'archive'))
  live_db, live_status = tmp_path / 'live.duckdb', tmp_path / 'live.json'
  live = start_pipeline(tmp_path / 'l', '--input_subscription', path(live_sub),
                        '--warehouse', live_db, '--progress_seconds', 0.3,
                        '--status_file', live_status, '--payload_schema',
                        schema, *keys, name='pubsub_to_bigquery')
  wait_for_status(arch_status, lambda s: 'messages_in' in s, arch)
  wait_for_status(live_status, lambda s: 'messages_in' in s, live)
  # A field added after the launch: the table (made at the launch) does
  # not have it; the message is still a row. (Pub/Sub stamps a message with
  # the newest revision that parses it: V2's bytes do not parse under v3.)
  v3 = dict(V2, fields=V2['fields'] + [
      {'name': 'app', 'type': ['null', 'string'], 'default': None}])
  rev3 = commit(schema, v3)
  when = datetime.datetime(2026, 12, 1, 9, 30, 0, 123456, tzinfo=UTC)
  publisher = pubsub_v1.PublisherClient(
      publisher_options=pubsub_v1.types.PublisherOptions(
          enable_message_ordering=True))
  sent = []
  for i in range(30):
    if i % 2:
      record = {'userid': 'u%d' % i, 'date': when, 'device': 'IOS'}
      data = avro(V1, record, 'BINARY')
    else:
      record = {'userid': 'u%d' % i, 'date': when, 'device': 'IOS',
                'country': 'NO' if i % 4 else None}
      data = avro(V2, record, 'BINARY')
    sent.append((data, {'event_id': 'e%d' % i}))
  sent.append((avro(v3, {'userid': 'tv', 'date': when, 'device': 'WEB',
                         'country': None, 'app': '1.0'}, 'BINARY'),
               {'event_id': 'e-tv'}))
  retries = [sent[5], sent[6], sent[6]]  # new message ids, the same events
  no_id = (avro(V1, {'userid': 'no-id', 'date': when, 'device': 'WEB'},
                'BINARY'), {})
  futures = [publisher.publish(topic_path, data, **attrs)
             for data, attrs in sent + retries]
  futures.append(publisher.publish(topic_path, no_id[0], ordering_key='k1'))
  ids = [f.result(timeout=60) for f in futures]
  for proc, status in ((arch, arch_status), (live, live_status)):
    # Every message read and settled (the retries store nothing new).
    wait_for_status(status, lambda s: s.get('messages_in', 0) >= len(ids) and
                    s.get('in_flight') == 0, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
  assert 'fetched (committed after the launch)' in err, err[-3000:]
  rows = duckdb_dicts(live_db, 'SELECT * FROM signins ORDER BY message_id')
  assert len(rows) == 32  # 31 events (retries are no-ops) + the one without
  by_id = {r['message_id']: r for r in rows}
  attributes = json.loads(by_id['event_id=e2']['attributes'])
  assert attributes == {'event_id': 'e2', 'googclient_schemaencoding': 'BINARY',
                        'googclient_schemaname': schema,
                        'googclient_schemarevisionid': rev2}
  assert by_id['event_id=e2'] == {
      'userid': 'u2', 'date': when, 'device': 'IOS', 'country': 'NO',
      'subscription_name': path(live_sub),
      'publish_time': by_id['event_id=e2']['publish_time'],
      'attributes': by_id['event_id=e2']['attributes'],
      'message_id': 'event_id=e2'}
  assert json.loads(by_id['event_id=e1']['attributes'])[
      'googclient_schemarevisionid'] == rev1
  assert by_id['event_id=e1']['country'] is None
  assert by_id['event_id=e-tv']['userid'] == 'tv'  # decoded with the third revision
  assert json.loads(by_id['event_id=e-tv']['attributes'])[
      'googclient_schemarevisionid'] == rev3
  assert by_id[ids[-1]]['userid'] == 'no-id'  # its message id, as said
  assert json.loads(by_id[ids[-1]]['attributes'])['ordering_key'] == 'k1'
  assert isinstance(by_id['event_id=e2']['publish_time'], datetime.datetime)
  assert duckdb_dicts(live_db, 'SELECT count(*) AS n FROM '
                      'signins_error_records') == [{'n': 0}]
  assert "no 'event_id' attribute" in err
  # The archive keeps every message as published (ids, attributes, bytes);
  # replayed with the revisions as files, it gives the same rows; the file
  # of the third revision missing, its message waits as a dead letter.
  revisions = tmp_path / 'revisions'
  revisions.mkdir()
  (revisions / ('%s.avsc' % rev1)).write_text(json.dumps(V1))
  (revisions / ('%s.avsc' % rev2)).write_text(json.dumps(V2))
  flags = ('--payload_schema', revisions) + keys
  replay_db = tmp_path / 'replay.duckdb'
  for _ in range(2):
    result = run_main('pubsub_to_bigquery', '--input_file',
                      str(tmp_path / 'archive') + '/**', '--warehouse',
                      replay_db, *flags)
    assert result.returncode == 0, result.stderr[-3000:]
  columns = 'message_id, userid, date, device, country, publish_time, attributes'
  sql = ("SELECT %s FROM signins WHERE message_id <> 'event_id=e-tv' ORDER BY "
         "message_id" % columns)
  assert duckdb_dicts(replay_db, sql) == duckdb_dicts(live_db, sql)
  dead = duckdb_dicts(replay_db, 'SELECT message_id, reason FROM '
                      'signins_error_records')
  assert dead == [{'message_id': 'event_id=e-tv',
                   'reason': 'unknown_schema_revision'}]
  (revisions / ('%s.avsc' % rev3)).write_text(json.dumps(v3))
  result = run_main('redrive', '--warehouse', replay_db, *flags)
  assert result.returncode == 0, result.stderr[-3000:]
  # The same row, but for its publish time: a dead letter does not keep it.
  sql = ('SELECT %s FROM signins ORDER BY message_id' % columns).replace(
      'publish_time', "CASE WHEN message_id = 'event_id=e-tv' THEN NULL ELSE "
      "publish_time END AS publish_time")
  assert duckdb_dicts(replay_db, sql) == duckdb_dicts(live_db, sql)
  assert duckdb_dicts(replay_db, "SELECT publish_time FROM signins WHERE "
                      "message_id = 'event_id=e-tv'") == [
                          {'publish_time': None}]


def test_hostile_and_unknown_revisions_in_an_archive_are_named_dead_letters(
    tmp_path):
  """Messages Pub/Sub's validation would have stopped, as an archive or a
  foreign producer may still hold them: cut bytes, a revision nobody gave,
  an encoding attribute that is neither BINARY nor JSON."""
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from transforms import archive
  when = datetime.datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
  good = avro(V1, {'userid': 'u', 'date': when, 'device': None}, 'BINARY')
  rid = 'googclient_schemarevisionid'
  messages = [
      PubsubMessage(good, {rid: 'r1'}, message_id='ok', publish_time=when),
      PubsubMessage(good[:3], {rid: 'r1'}, message_id='cut',
                    publish_time=when),
      PubsubMessage(good, {rid: 'r9'}, message_id='unknown',
                    publish_time=when),
      PubsubMessage(good, {}, message_id='none', publish_time=when),
      PubsubMessage(good, {rid: 'r1', 'googclient_schemaencoding': 'XML'},
                    message_id='xml', publish_time=when)]
  path = tmp_path / archive.file_path('archive', 's-', 0, 60, 'b', 'avro')
  path.parent.mkdir(parents=True)
  path.write_bytes(archive.encode([archive.record(m) for m in messages],
                                  'avro'))
  revisions = tmp_path / 'revisions'
  revisions.mkdir()
  (revisions / 'r1.avsc').write_text(json.dumps(V1))
  db = tmp_path / 'w.duckdb'
  result = run_main('pubsub_to_bigquery', '--input_file',
                    str(tmp_path / 'archive') + '/**', '--warehouse', db,
                    '--payload_format', 'avro', '--payload_schema', revisions)
  assert result.returncode == 0, result.stderr[-3000:]
  assert duckdb_dicts(db, 'SELECT message_id FROM revisions') == [
      {'message_id': 'ok'}]
  assert duckdb_dicts(db, 'SELECT message_id, reason FROM '
                      'revisions_error_records ORDER BY 1') == [
      {'message_id': 'cut', 'reason': 'not_avro'},
      {'message_id': 'none', 'reason': 'unknown_schema_revision'},
      {'message_id': 'unknown', 'reason': 'unknown_schema_revision'},
      {'message_id': 'xml', 'reason': 'not_avro'}]


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
  messages.append(PubsubMessage(json.dumps({
      'userid': '93234239', 'date': '2026-12-01T09:30:00Z'}).encode(),
      {'event_id': '100'}, message_id='200', publish_time=when))
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
  # Keyed as NAME=VALUE: an attribute equal to another message's id
  # (here '100') cannot take that message's place.
  assert ids == (['event_id=100', 'event_id=e0', 'event_id=e1'] if keyed
                 else [str(100 + i) for i in range(6)] + ['200'])
  assert counts_that_differ_from_the_rows(db, 60) == []


def test_a_local_topic_read_with_id_attribute_is_a_one_line_error():
  result = run_main('pubsub_to_bigquery', '--input_topic',
                    'projects/my-project/topics/signins', '--id_attribute', 'event_id',
                    '--schema', os.path.join(ROOT, 'data', 'orders.json'))
  assert result.returncode == 2 and result.stderr.count('\n') == 1, (
      result.stderr)
  assert '--id_attribute with --input_topic runs on Dataflow only' in (
      result.stderr)


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


EVERY_AVRO_TYPE = {
    'type': 'record', 'name': 'Every', 'namespace': 'shop', 'fields': [
        {'name': 'b', 'type': 'boolean'}, {'name': 'i', 'type': 'int'},
        {'name': 'l', 'type': 'long'}, {'name': 'f', 'type': 'float'},
        {'name': 'd', 'type': 'double'}, {'name': 's', 'type': 'string'},
        {'name': 'bin', 'type': 'bytes'},
        {'name': 'fx', 'type': {'type': 'fixed', 'name': 'F3', 'size': 3}},
        {'name': 'e', 'type': {'type': 'enum', 'name': 'E',
                               'symbols': ['A', 'B']}},
        {'name': 'dec', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                                 'precision': 38, 'scale': 9}},
        {'name': 'ts', 'type': {'type': 'long',
                                'logicalType': 'timestamp-micros'}},
        {'name': 'tm', 'type': {'type': 'long',
                                'logicalType': 'timestamp-millis'}},
        {'name': 'dt', 'type': {'type': 'int', 'logicalType': 'date'}},
        {'name': 't', 'type': {'type': 'long', 'logicalType': 'time-micros'}},
        {'name': 'u', 'type': {'type': 'string', 'logicalType': 'uuid'}},
        {'name': 'n', 'type': ['null', 'string'], 'default': None},
        {'name': 'a', 'type': {'type': 'array', 'items': 'long'}},
        {'name': 'm', 'type': {'type': 'map', 'values': 'double'}},
        {'name': 'r', 'type': {'type': 'record', 'name': 'Inner', 'fields': [
            {'name': 'x', 'type': 'string'},
            {'name': 'ys', 'type': {'type': 'array', 'items': 'string'}}]}},
    ]}


def test_every_avro_type_reads_back_equal_from_bigquery_and_duckdb(
    bigquery_emulator, tmp_path):
  """An archive of Avro messages of every type the subscription's table
  maps, in both encodings, replayed into the BigQuery emulator (Beam's
  WriteToBigQuery, streaming inserts for exact BYTES) and into DuckDB:
  the same rows, and the values exact (decimals at 38 digits, timestamps at
  both ends of the calendar, a float32, NaN-free doubles)."""
  import decimal
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from transforms import archive
  D = decimal.Decimal
  values = [
      {'b': True, 'i': -2**31, 'l': 2**63 - 1, 'f': 0.1, 'd': -0.0,
       's': 'ünïcode ✓', 'bin': b'\x00\xff', 'fx': b'abc', 'e': 'B',
       'dec': D('99999999999999999999999999999.999999999'),
       'ts': datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
       'tm': datetime.datetime(1, 1, 1, tzinfo=UTC),
       'dt': datetime.date(9999, 12, 31), 't': datetime.time(23, 59, 59, 999999),
       'u': '12345678-1234-5678-1234-567812345678', 'n': None,
       'a': [1, -2, 3], 'm': {'z': 1.5, 'a': -2.25},
       'r': {'x': 'in', 'ys': ['p', 'q']}},
      {'b': False, 'i': 7, 'l': -2**63, 'f': 3.4028234663852886e38,
       'd': 1e-310, 's': '', 'bin': b'', 'fx': b'\x00\x00\x00', 'e': 'A',
       'dec': D('-0.000000001'),
       'ts': datetime.datetime(1970, 1, 1, tzinfo=UTC),
       'tm': datetime.datetime(2026, 12, 1, 9, 30, 0, 123000, tzinfo=UTC),
       'dt': datetime.date(1, 1, 1), 't': datetime.time(0, 0),
       'u': '00000000-0000-0000-0000-000000000000', 'n': 'x', 'a': [],
       'm': {}, 'r': {'x': '', 'ys': []}},
  ]
  when = datetime.datetime(2026, 12, 1, tzinfo=UTC)
  messages = [PubsubMessage(avro(EVERY_AVRO_TYPE, v, encoding), {
      'googclient_schemaencoding': encoding}, message_id='%d%s' % (i, encoding),
                            publish_time=when)
              for i, v in enumerate(values) for encoding in ('BINARY', 'JSON')]
  path = tmp_path / archive.file_path('archive', 's-', 0, 60, 'b', 'avro')
  path.parent.mkdir(parents=True)
  path.write_bytes(archive.encode([archive.record(m) for m in messages],
                                  'avro'))
  schema = tmp_path / 'every.avsc'
  schema.write_text(json.dumps(EVERY_AVRO_TYPE))
  dataset = new_dataset(bigquery_emulator)
  flags = ('--payload_format', 'avro', '--payload_schema', schema,
           '--input_file', str(tmp_path / 'archive') + '/**')
  db = tmp_path / 'w.duckdb'
  for where in (('--output_table', '%s:%s.every' % (PROJECT, dataset),
                 '--bigquery_method', 'streaming_inserts'),
                ('--warehouse', db)):
    result = run_main('pubsub_to_bigquery', *(flags + where))
    assert result.returncode == 0, result.stderr[-3000:]
  names = [f['name'] for f in EVERY_AVRO_TYPE['fields']]
  sql = 'SELECT message_id, %s FROM %%s ORDER BY message_id' % ', '.join(
      names)
  from_bigquery = [dict(r) for r in bigquery_emulator.query(
      sql % ('%s.every' % dataset)).result()]
  from_duckdb = duckdb_dicts(db, sql % 'every')
  assert len(from_duckdb) == 4
  for big, duck in zip(from_bigquery, from_duckdb):
    assert big == duck, (big, duck)
  first = from_duckdb[0]
  assert first['dec'] == values[0]['dec'] and first['ts'] == values[0]['ts']
  assert first['f'] == 0.10000000149011612 and first['e'] == 'B'
  assert first['m'] == [{'key': 'a', 'value': -2.25},
                        {'key': 'z', 'value': 1.5}]
  assert from_duckdb[0] == dict(from_duckdb[1], message_id='0BINARY')
