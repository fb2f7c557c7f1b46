"""Hostile messages through both pipelines as a user runs them (file replays
into DuckDB, and a live stream on the Pub/Sub emulator): each is a row with
the exact value or a dead letter naming the field; the run goes on."""

import datetime
import decimal
import json
import signal
import uuid

import duckdb
import pytest

from tests.conftest import new_dataset
from tests.conftest import replay_into_bigquery_and_duckdb
from tests.conftest import run_main
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status

UTC = datetime.timezone.utc
D = decimal.Decimal
SURROGATE_SIGNIN = b'{"userid": "a\\ud800b", "date": "2024-01-01T00:00:00Z"}'


def query(db, sql):
  con = duckdb.connect(str(db), read_only=True)
  try:
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(sql).fetchall()
  finally:
    con.close()


def test_user_signin_replay_stores_every_line_around_a_poison_one(tmp_path):
  """Line 4,001 of 5,000 holds a lone surrogate (valid JSON): it is a dead
  letter and the 4,999 others are rows; keys in any case count."""
  lines = []
  for i in range(1, 5001):
    if i == 4001:
      lines.append(SURROGATE_SIGNIN)
    elif i % 3 == 0:
      lines.append(b'{"UserID": "u%d", "Date": "2024-01-01T00:00:%02dZ"}' % (i, i % 60))
    else:
      lines.append(b'{"userid": "u%d", "date": "2024-01-01T00:00:%02dZ"}' % (i, i % 60))
  lines.append(b'{"userid": %s, "date": 1508273837.3383201}' % (b'9' * 80))
  lines.append(b'{"userid": "x", "USERID": "y", "date": "2024-01-01"}')
  replay = tmp_path / 'signins.jsonl'
  replay.write_bytes(b'\n'.join(lines) + b'\n')
  db = tmp_path / 'w.duckdb'
  result = run_main('user_signin', '--input_file', replay, '--warehouse', db)
  assert result.returncode == 0, result.stderr
  assert query(db, 'SELECT count(*) FROM signins') == [(5000,)]
  dead = query(db, 'SELECT message_id, reason, errorMessage, payloadString '
               'FROM signin_errors ORDER BY 1')
  assert [(d[0].rsplit(':', 1)[1], d[1]) for d in dead] == [
      ('4001', 'bad_userid'), ('5002', 'duplicate_field')]
  assert 'surrogate' in dead[0][2] and '\\ud800' in dead[0][3]
  assert query(db, "SELECT userid, date FROM signins WHERE message_id LIKE '%:5001'") == [
      ('9' * 80, datetime.datetime(2017, 10, 17, 20, 57, 17, 338320, tzinfo=UTC))]
  assert query(db, "SELECT userid FROM signins WHERE message_id LIKE '%:3'") == [('u3',)]


SCHEMA = [
    {'name': 'id', 'type': 'STRING', 'mode': 'REQUIRED'},
    {'name': 'i', 'type': 'INT64'},
    {'name': 'k', 'type': 'INT64'},
    {'name': 'n', 'type': 'NUMERIC'},
    {'name': 'bn', 'type': 'BIGNUMERIC'},
    {'name': 'f', 'type': 'FLOAT64'},
    {'name': 's', 'type': 'STRING'},
    {'name': 'j', 'type': 'JSON'},
    {'name': 'ts', 'type': 'TIMESTAMP'},
    {'name': 'd', 'type': 'DATE'},
    {'name': 'g', 'type': 'GEOGRAPHY'},
    {'name': 'r', 'type': 'RECORD', 'fields': [
        {'name': 'Deep', 'type': 'STRING', 'mode': 'REQUIRED'}]},
]
BIGNUMERIC_MAX = ('578960446186580977117854925043439539266.'
                  '34992332820282019728792003956564819967')
MESSAGES = [  # (payload text, expected: ('row', {column: value}) or ('dead', reason, field))
    ('{"id": "a", "s": "x\\ud800"}', ('dead', 'bad_value', 's')),
    ('{"id": "b", "I": 5, "R": {"deep": "z"}}', ('row', {'i': 5, 'r': {'Deep': 'z'}})),
    ('{"ID": "c"}', ('row', {'id': 'c'})),
    ('{"id": "d", "ID": "e"}', ('dead', 'duplicate_field', 'id')),
    ('{"id": "e", "n": 12345678901234567890.123456789}',
     ('row', {'n': D('12345678901234567890.123456789')})),
    ('{"id": "f", "bn": 0.%s}' % ('1' * 38), ('row', {'bn': '0.' + '1' * 38})),
    ('{"id": "g", "bn": %s}' % BIGNUMERIC_MAX, ('row', {'bn': BIGNUMERIC_MAX})),
    ('{"id": "h", "bn": %s8}' % BIGNUMERIC_MAX[:-1], ('dead', 'out_of_range', 'bn')),
    ('{"id": "i", "i": 9007199254740993.0}', ('row', {'i': 9007199254740993})),
    ('{"id": "j", "f": 1e400}', ('dead', 'out_of_range', 'f')),
    ('{"id": "k", "s": 1e400}', ('row', {'s': '1e400'})),
    ('{"id": "l", "s": 1.10}', ('row', {'s': '1.10'})),
    ('{"id": "m", "j": 0.10000000000000000555}', ('dead', 'bad_value', 'j')),
    ('{"id": "n", "j": {"p": 1.10}}', ('row', {'j': '{"p":1.10}'})),
    ('{"id": "o", "n": %s}' % ('1' * 30), ('dead', 'out_of_range', 'n')),
    ('{"id": "p", "ts": "0001-01-01T00:00:00Z"}',
     ('row', {'ts': datetime.datetime(1, 1, 1, tzinfo=UTC)})),
    ('{"id": "q", "d": "10000-01-01"}', ('dead', 'out_of_range', 'd')),
    ('{"id": "r", "g": "POINT(1 2)"}', ('row', {'g': 'POINT (1 2)'})),
    ('{"id": "s", "g": "POINT(1 91)"}', ('dead', 'bad_value', 'g')),
    ('{"id": "t", "r": {"deep": "\\udc00"}}', ('dead', 'bad_value', 'r.Deep')),
    ('{"id": "u", "i": %s}' % ('9' * 80), ('dead', 'out_of_range', 'i')),
    ('{"id": "v", "s": %s}' % ('7' * 5000), ('row', {'s': '7' * 5000})),
    ('{"id": "w", "j": %s1%s}' % ('[' * 600, ']' * 600), ('dead', 'bad_value', 'j')),
    ('{"id": "x", "j": %s1%s}' % ('[' * 400, ']' * 400), ('row', {})),
    # The Kelvin sign lowers to k, but only A-Z fold: another key, ignored.
    ('{"id": "y", "k": 1, "\\u212a": 2}', ('row', {'k': 1})),
    ('{"id": "z", "\\u212a": 2}', ('row', {'k': None})),
    ('{"id": "A", "ts": "2016-12-31T23:59:60Z"}',  # a leap second
     ('row', {'ts': datetime.datetime(2017, 1, 1, tzinfo=UTC)})),
    ('{"id": "B", "ts": "2017-10-17T20:57:17.1234567Z"}',
     ('dead', 'bad_value', 'ts')),
]


def test_pubsub_to_bigquery_replay_exact_values_and_named_dead_letters(tmp_path):
  schema = tmp_path / 'things.json'
  schema.write_text(json.dumps(SCHEMA))
  replay = tmp_path / 'things.jsonl'
  replay.write_text('\n'.join(m for m, _ in MESSAGES) + '\n')
  db = tmp_path / 'w.duckdb'
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    replay, '--warehouse', db)
  assert result.returncode == 0, result.stderr
  cursor_rows = query(db, 'SELECT * FROM things')
  names = [f['name'] for f in SCHEMA] + ['message_id']
  rows = {r[-1].rsplit(':', 1)[1]: dict(zip(names, r)) for r in cursor_rows}
  dead = {m.rsplit(':', 1)[1]: (reason, field) for m, reason, field in query(
      db, 'SELECT message_id, reason, field FROM things_error_records')}
  assert len(rows) + len(dead) == len(MESSAGES)
  for line, (_, expected) in enumerate(MESSAGES, start=1):
    if expected[0] == 'dead':
      assert dead.get(str(line)) == expected[1:], (line, expected)
    else:
      assert str(line) in rows, (line, dead.get(str(line)))
      for column, value in expected[1].items():
        assert rows[str(line)][column] == value, (line, column)


@pytest.mark.emulator
def test_a_poison_message_in_a_live_stream_is_a_dead_letter(pubsub_emulator, tmp_path):
  """A lone surrogate once crashed every process that pulled it: now the
  others are stored, the poison is a dead letter, and the stream goes on."""
  from google.cloud import pubsub_v1
  project = pubsub_emulator.project
  topic, sub = 'poison-%s' % uuid.uuid4().hex[:8], 'sub-%s' % uuid.uuid4().hex[:8]
  publisher = pubsub_v1.PublisherClient()
  subscriber = pubsub_v1.SubscriberClient()
  topic_path = publisher.topic_path(project, topic)
  sub_path = subscriber.subscription_path(project, sub)
  publisher.create_topic(name=topic_path)
  subscriber.create_subscription(name=sub_path, topic=topic_path)

  def publish(payloads):
    for future in [publisher.publish(topic_path, p) for p in payloads]:
      future.result(timeout=30)
  good = [b'{"userid": "u%d", "date": "2024-01-01T00:00:00Z"}' % i
          for i in range(200)]
  publish(good[:100] + [SURROGATE_SIGNIN] + good[100:])
  db, status = tmp_path / 'w.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(tmp_path, '--input_subscription', sub_path,
                        '--warehouse', db, '--progress_seconds', 0.5,
                        '--status_file', status)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= 201, proc)
  publish([b'{"userid": "late", "date": "2024-01-01T00:00:00Z"}'])
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= 202, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert 'Traceback' not in err
  assert query(db, 'SELECT count(*) FROM signins') == [(201,)]
  assert query(db, 'SELECT reason FROM signin_errors') == [('bad_userid',)]


@pytest.mark.emulator
def test_the_same_hostile_replay_into_the_bigquery_emulator(bigquery_emulator, tmp_path):
  """Through Beam's WriteToBigQuery (streaming inserts) into the BigQuery
  emulator: the same dead letters, and the same exact values as DuckDB for
  the columns the emulator stores faithfully (docs/local-stack.md: its deviations)."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  schema = tmp_path / 'things.json'
  # bqemulator cannot make a BIGNUMERIC column (its DuckDB's DECIMAL stops
  # at 38 digits): BIGNUMERIC is checked against DuckDB only.
  schema.write_text(json.dumps([f for f in SCHEMA if f['name'] != 'bn']))
  messages = [(m, e) for m, e in MESSAGES if '"bn"' not in m]
  replay = tmp_path / 'things.jsonl'
  replay.write_text('\n'.join(m for m, _ in messages) + '\n')
  db = tmp_path / 'w.duckdb'
  replay_into_bigquery_and_duckdb(schema, replay, dataset, 'things', db)
  columns = 'message_id, id, i, k, n, f, s, ts, d, %s'
  sql = 'SELECT %s FROM %%s ORDER BY message_id' % columns
  from_bigquery = [tuple(r.values()) for r in client.query(
      sql % ('ST_ASTEXT(g)', '%s.things' % dataset)).result()]
  from_duckdb = query(db, sql % ('g', 'things'))
  assert len(from_duckdb) == sum(1 for _, e in messages if e[0] == 'row')
  assert from_bigquery == from_duckdb
  dead_sql = 'SELECT message_id, reason, field FROM %s ORDER BY message_id'
  assert [tuple(r.values()) for r in client.query(
      dead_sql % ('%s.things_error_records' % dataset)).result()] == query(
          db, dead_sql % 'things_error_records')
