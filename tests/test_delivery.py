"""Delivery belongs to the runner (issue 27): every pulled message settled by
its own delivery whatever the graph makes of it (rows, several rows, none,
a dead letter), carried whole up to Pub/Sub's limits, its reader's
bookkeeping beside it and never in it. On the official emulator."""

import gzip
import json
import os
import signal
import time
import uuid

import duckdb
import pytest

from tests.conftest import duckdb_dicts
from tests.conftest import run_main
from tests.test_archive import archived
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins
from transforms import archive

pytestmark = pytest.mark.emulator
GOOD = b'{"userid": "u1", "date": "2017-10-17T20:57:17Z"}'
SCHEMA = [{'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
          {'name': 'qty', 'type': 'INTEGER', 'mode': 'REQUIRED'}]
UDF = '''
def shape(order):
  kind = order.get('kind')
  if kind == 'drop':
    return None
  if kind == 'fan':
    return [dict(order, order_id=order['order_id'] + '-a'),
            dict(order, order_id=order['order_id'] + '-b')]
  if kind == 'boom':
    raise ValueError('boom')
  if kind == 'bad':
    order.pop('qty', None)          # REQUIRED: a dead letter
  return order
'''
# What each kind becomes: (rows, dead letters).
OUTCOMES = {'keep': (1, 0), 'fan': (2, 0), 'drop': (0, 0), 'boom': (0, 1),
            'bad': (0, 1)}


def topic_and_subscriptions(emulator, n=1):
  """A new topic and ``n`` subscriptions of it (full paths)."""
  from google.cloud import pubsub_v1
  project = emulator.project
  topic = 'dlv-%s' % uuid.uuid4().hex[:8]
  subs = ['dlv-sub-%s' % uuid.uuid4().hex[:8] for _ in range(n)]
  publish_signins.publish(project, topic, 0, subscription=subs[0])
  subscriber = pubsub_v1.SubscriberClient()
  for sub in subs[1:]:
    subscriber.create_subscription(
        name=subscriber.subscription_path(project, sub),
        topic=subscriber.topic_path(project, topic))
  return topic, ['projects/%s/subscriptions/%s' % (project, s) for s in subs]


def publish(emulator, topic, payloads, attributes=None, per_second=None):
  """Publishes each payload (with ``attributes(i)`` if given; at most
  ``per_second`` a second if given); their ids."""
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient(
      batch_settings=pubsub_v1.types.BatchSettings(max_messages=100))
  path = publisher.topic_path(emulator.project, topic)
  futures = []
  started = time.monotonic()
  for i, p in enumerate(payloads):
    if per_second and i and i % 20 == 0:
      time.sleep(max(0.0, started + i / per_second - time.monotonic()))
    futures.append(
        publisher.publish(path, p, **(attributes(i) if attributes else {})))
  return [f.result(timeout=120) for f in futures]


def left_in(subscription, wait=3.0):
  """How many messages Pub/Sub still delivers on ``subscription`` (pulled
  for ``wait`` seconds, not acknowledged)."""
  from google.api_core import exceptions
  from google.cloud import pubsub_v1
  subscriber = pubsub_v1.SubscriberClient()
  seen = set()
  deadline = time.monotonic() + wait
  while time.monotonic() < deadline:
    try:
      response = subscriber.pull(subscription=subscription, max_messages=100,
                                 timeout=1, retry=None)
    except exceptions.DeadlineExceeded:
      continue
    seen.update(r.message.message_id for r in response.received_messages)
  return len(seen)


def stop(proc):
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=90)
  assert proc.returncode == 0, err
  assert 'Traceback' not in err, err
  return out, err


def orders_run(tmp_path, subscription, db, status, *flags):
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  (tmp_path / 'shape.py').write_text(UDF)
  return start_pipeline(
      tmp_path, '--schema', tmp_path / 'orders.json', '--input_subscription',
      subscription, '--warehouse', db, '--udf', '%s:shape' % (
          tmp_path / 'shape.py'), '--progress_seconds', '0.2',
      '--status_file', status, *flags, name='pubsub_to_bigquery')


def orders(kinds):
  return [json.dumps({'order_id': 'o%d' % i, 'qty': i, 'kind': k}).encode()
          for i, k in enumerate(kinds)]


def expected(kinds):
  rows = sum(OUTCOMES[k][0] for k in kinds)
  dead = sum(OUTCOMES[k][1] for k in kinds)
  return rows, dead


def test_drops_and_fan_outs_are_settled_and_never_stall_a_small_read_ahead(
    pubsub_emulator, tmp_path):
  """30 drops in a row with --max_in_flight 10 (the read-ahead full of
  dropped messages three times over), fan-outs, dead letters: every message
  acknowledged once what it became is stored; a restart reads nothing again
  and makes no too_many_attempts dead letter."""
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  kinds = ['drop'] * 30 + ['keep', 'fan', 'boom', 'bad'] * 10 + ['drop'] * 5
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = orders_run(tmp_path, subscription, db, status,
                    '--max_in_flight', '10', '--max_delivery_attempts', '1')
  wait_for_status(status, lambda s: 'messages_in' in s, proc)
  publish(pubsub_emulator, topic, orders(kinds))
  rows, dead = expected(kinds)
  wait_for_status(status, lambda s: s.get('messages_in') == len(kinds) and
                  s.get('in_flight') == 0, proc, timeout=60)
  out, _ = stop(proc)
  assert 'not acknowledged' not in out, out
  assert left_in(subscription) == 0
  again = orders_run(tmp_path, subscription, db, tmp_path / 'again.json',
                     '--max_delivery_attempts', '1')
  wait_for_status(tmp_path / 'again.json', lambda s: 'messages_in' in s, again)
  time.sleep(2)
  out, _ = stop(again)
  stored = duckdb_dicts(db, 'SELECT order_id FROM orders')
  letters = duckdb_dicts(db, 'SELECT reason FROM orders_error_records')
  assert len(stored) == rows and len(letters) == dead
  assert sorted({r['reason'] for r in letters}) == ['missing_field', 'udf_error']


@pytest.mark.parametrize('flag', [['--message_id_column', 'false'],
                                  ['--nomessage_id_column']])
def test_a_local_stream_refuses_to_run_without_the_message_id_column(
    pubsub_emulator, tmp_path, flag):
  """Without message ids a redelivery would be stored twice: said in one
  line before anything is read."""
  _, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  (tmp_path / 'orders.json').write_text(json.dumps(SCHEMA))
  result = run_main('pubsub_to_bigquery', '--schema', tmp_path / 'orders.json',
                    '--input_subscription', subscription, '--warehouse',
                    tmp_path / 'wh.duckdb', *flag)
  assert result.returncode == 2
  assert result.stderr.strip().count('\n') == 0, result.stderr
  assert '--message_id_column' in result.stderr


def test_big_attributes_and_a_10_mb_payload_are_stored_whole(
    pubsub_emulator, tmp_path):
  """100 sign-ins with 100 attributes of 1,000 bytes each (100 KB, within
  Pub/Sub's limits) and one 9,500,000-byte sign-in: rows, with a larger
  --max_message_bytes; a bad one keeps its 100 attributes exactly."""
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  big = json.dumps({'userid': 'big', 'date': '2017-10-17T20:57:17Z',
                    'pad': 'p' * 9_500_000}).encode()
  payloads = [GOOD] * 100 + [big, b'not json']
  attributes = {'a%02d' % i: chr(0x4e00 + i) * 333 for i in range(100)}
  ids = publish(pubsub_emulator, topic, payloads, lambda i: attributes)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(tmp_path, '--input_subscription', subscription,
                        '--warehouse', db, '--max_message_bytes', 10_000_000,
                        '--progress_seconds', 0.2, '--status_file', status)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids),
                  proc, timeout=90)
  stop(proc)
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM signins')[0]['n'] == 101
  dead = duckdb_dicts(db, 'SELECT message_id, reason, attributes, '
                      'octet_length(payloadBytes) AS size FROM signin_errors')
  assert [(d['message_id'], d['reason'], d['size']) for d in dead] == [
      (ids[-1], 'not_json', 8)]
  assert {a['key']: a['value'] for a in dead[0]['attributes']} == attributes


def test_a_10_mb_message_is_archived_byte_for_byte(pubsub_emulator, tmp_path):
  """9.8 MB of data and 100 attributes of 1,000 bytes: Pub/Sub's limit."""
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  payload = os.urandom(9_800_000)
  attributes = {'k%02d' % i: 'v' * 1000 for i in range(100)}
  ids = publish(pubsub_emulator, topic, [payload, GOOD],
                lambda i: attributes if i == 0 else {'n': '1'})
  directory = str(tmp_path / 'archive')
  status = tmp_path / 'status.json'
  proc = start_pipeline(tmp_path, '--input_subscription', subscription,
                        '--output_directory', directory, '--warehouse',
                        tmp_path / 'wh.duckdb', '--progress_seconds', 0.2,
                        '--status_file', status, name='pubsub_to_gcs')
  wait_for_status(status, lambda s: s.get('messages_in', 0) >= 2 and
                  s.get('in_flight') == 0, proc, timeout=60)
  stop(proc)
  kept = archived(directory)
  assert set(kept) == set(ids)
  message = kept[ids[0]][0]
  assert message.data == payload and message.attributes == attributes
  assert kept[ids[1]][0].attributes == {'n': '1'}
  assert left_in(subscription) == 0


def test_two_pipelines_on_one_warehouse_never_count_each_others_deliveries(
    pubsub_emulator, tmp_path):
  """user_signin and pubsub_to_gcs on two subscriptions of one topic, one
  warehouse, --max_delivery_attempts 1, 200 msgs/s: no message is given up
  (each counts only its own subscription's deliveries), the archive
  holds exactly what was published, and its replay stores every sign-in."""
  topic, (signins, archiver) = topic_and_subscriptions(pubsub_emulator, 2)
  db = tmp_path / 'wh.duckdb'
  directory = str(tmp_path / 'archive')
  live = start_pipeline(tmp_path, '--input_subscription', signins,
                        '--warehouse', db, '--max_delivery_attempts', 1,
                        '--progress_seconds', 0.3, '--status_file',
                        tmp_path / 'live.json')
  arch = start_pipeline(tmp_path, '--input_subscription', archiver,
                        '--output_directory', directory, '--warehouse', db,
                        '--max_delivery_attempts', 1, '--progress_seconds',
                        0.3, '--status_file', tmp_path / 'arch.json',
                        name='pubsub_to_gcs')
  # Both reading before anything is published: each pulls every message
  # while the other holds it.
  wait_for_status(tmp_path / 'live.json', lambda s: 'messages_in' in s, live)
  wait_for_status(tmp_path / 'arch.json', lambda s: 'messages_in' in s, arch)
  ids = publish(pubsub_emulator, topic, [GOOD] * 2000,
                lambda i: {'n': str(i)}, per_second=200)
  wait_for_status(tmp_path / 'live.json',
                  lambda s: s.get('stored_total', 0) >= 2000, live, timeout=120)
  wait_for_status(tmp_path / 'arch.json', lambda s: s.get(
      'messages_in', 0) >= 2000 and s.get('in_flight') == 0, arch, timeout=120)
  stop(arch)
  stop(live)
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM signin_errors')[0]['n'] == 0
  assert duckdb_dicts(db, 'SELECT count(DISTINCT message_id) AS n '
                      'FROM signins')[0]['n'] == 2000
  kept = archived(directory)
  assert set(kept) == set(ids)
  assert all(m.attributes == {'n': str(ids.index(i))}
             for i, (m, _) in kept.items())
  replay = tmp_path / 'replay.duckdb'
  result = run_main('user_signin', '--input_file', directory + '/**',
                    '--warehouse', replay)
  assert result.returncode == 0, result.stderr
  assert duckdb_dicts(replay, 'SELECT count(*) AS n FROM signins')[0]['n'] == 2000
  assert duckdb_dicts(replay, 'SELECT count(*) AS n FROM signin_errors'
                      )[0]['n'] == 0


def test_timestamp_attributes_at_the_edges_hold_no_other_message(
    pubsub_emulator, tmp_path):
  """Past a Beam timestamp (year 10000 and far beyond), RFC 3339 with seven
  fractional digits: the bad ones are dead letters with the attributes as
  published, the good ones rows, and the stream goes on; pubsub_to_gcs
  archives every one of them, the bad by its publish time."""
  topic, (signins, archiver) = topic_and_subscriptions(pubsub_emulator, 2)
  values = ['1508273837000'] * 10 + [
      '10000000000000000', '253402300800000', '2024-05-01T12:00:00.1234567Z',
      'soon', '9999-12-31T23:59:59.999999Z']
  ids = publish(pubsub_emulator, topic, [GOOD] * len(values),
                lambda i: {'ts': values[i]})
  db = tmp_path / 'wh.duckdb'
  live = start_pipeline(tmp_path, '--input_subscription', signins,
                        '--warehouse', db, '--timestamp_attribute', 'ts',
                        '--progress_seconds', 0.2, '--status_file',
                        tmp_path / 'live.json')
  directory = str(tmp_path / 'archive')
  arch = start_pipeline(tmp_path, '--input_subscription', archiver,
                        '--output_directory', directory, '--warehouse',
                        tmp_path / 'arch.duckdb', '--timestamp_attribute', 'ts',
                        '--progress_seconds', 0.2, '--status_file',
                        tmp_path / 'arch.json', name='pubsub_to_gcs')
  wait_for_status(tmp_path / 'live.json', lambda s: s.get(
      'stored_total', 0) >= len(ids) and s.get('in_flight') == 0, live)
  wait_for_status(tmp_path / 'arch.json', lambda s: s.get(
      'messages_in', 0) >= len(ids) and s.get('in_flight') == 0, arch)
  stop(live)
  stop(arch)
  dead = duckdb_dicts(db, 'SELECT message_id, reason, attributes '
                      'FROM signin_errors ORDER BY message_id')
  assert sorted(d['message_id'] for d in dead) == sorted(
      [ids[10], ids[11], ids[13]])
  assert {d['reason'] for d in dead} == {'bad_timestamp_attribute'}
  assert all(len(d['attributes']) == 1 and d['attributes'][0]['key'] == 'ts'
             for d in dead)
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM signins')[0]['n'] == 12
  kept = archived(directory)
  assert set(kept) == set(ids)
  assert all(m.attributes == {'ts': values[ids.index(i)]}
             for i, (m, _) in kept.items())


def test_lone_surrogates_in_ids_and_attributes_of_an_archive_replay(tmp_path):
  """An archive written by another tool may hold any string: each message
  is stored (its id escaped, the same way every time), never a crash, in
  both message pipelines."""
  folder = tmp_path / 'archive' / '2024' / '05' / '01' / '12'
  folder.mkdir(parents=True)
  records = [
      {'message_id': 'id-\ud800-%d' % i, 'publish_time': 1714564800000000,
       'attributes': {'k\udfff': 'v\ud800', 'n': str(i)}, 'ordering_key': '',
       'data': GOOD if i else b'{"oops'}
      for i in range(3)]
  with gzip.open(folder / 'x.messages.jsonl.gz', 'wb') as f:
    for r in records:
      f.write(archive.jsonl_line(r))
  (tmp_path / 'orders.json').write_text(json.dumps(
      [{'name': 'userid', 'type': 'STRING', 'mode': 'REQUIRED'}]))
  for args, rows_table, errors_table in (
      (['user_signin'], 'signins', 'signin_errors'),
      (['pubsub_to_bigquery', '--schema', tmp_path / 'orders.json'],
       'orders', 'orders_error_records')):
    db = tmp_path / ('%s.duckdb' % args[0])
    for _ in range(2):  # a second replay adds nothing
      result = run_main(*args, '--input_file', str(tmp_path / 'archive/**'),
                        '--warehouse', db)
      assert result.returncode == 0, result.stderr
      assert 'Traceback' not in result.stderr, result.stderr
    rows = duckdb_dicts(db, 'SELECT message_id FROM %s ORDER BY 1' % rows_table)
    dead = duckdb_dicts(db, 'SELECT message_id, attributes FROM %s'
                        % errors_table)
    assert [r['message_id'] for r in rows] == ['id-\\ud800-1', 'id-\\ud800-2']
    assert [d['message_id'] for d in dead] == ['id-\\ud800-0']
    assert {a['key']: a['value'] for a in dead[0]['attributes']} == {
        'k\\udfff': 'v\\ud800', 'n': '0'}


def test_a_long_tmpdir_leaves_the_reader_room_for_its_socket(
    pubsub_emulator, tmp_path):
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  long_tmp = tmp_path / ('t' * 60) / ('u' * 60)
  long_tmp.mkdir(parents=True)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  ids = publish(pubsub_emulator, topic, [GOOD] * 5)
  env_before = os.environ.get('TMPDIR')
  os.environ['TMPDIR'] = str(long_tmp)
  try:
    proc = start_pipeline(tmp_path, '--input_subscription', subscription,
                          '--warehouse', db, '--progress_seconds', 0.2,
                          '--status_file', status)
  finally:
    if env_before is None:
      del os.environ['TMPDIR']
    else:
      os.environ['TMPDIR'] = env_before
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids), proc)
  stop(proc)
  assert list(long_tmp.iterdir()) == []  # nothing left behind


def test_kill_9_amid_drops_and_fan_outs_then_a_restart_accounts_for_each_once(
    pubsub_emulator, tmp_path):
  """Rows + dead letters + drops == messages, each once, after kill -9 and a
  restart; no message given up (nothing crashed twice on it)."""
  import random
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  rng = random.Random(27)
  kinds = [rng.choice(list(OUTCOMES)) for _ in range(3000)]
  db = tmp_path / 'wh.duckdb'
  first = orders_run(tmp_path, subscription, db, tmp_path / 'first.json',
                     '--max_in_flight', '200')
  wait_for_status(tmp_path / 'first.json', lambda s: 'messages_in' in s, first)
  ids = publish(pubsub_emulator, topic, orders(kinds))
  wait_for_status(tmp_path / 'first.json',
                  lambda s: s.get('messages_in', 0) >= 1000, first)
  first.send_signal(signal.SIGKILL)
  first.communicate(timeout=30)
  second = orders_run(tmp_path, subscription, db, tmp_path / 'second.json')
  rows, dead = expected(kinds)
  wait_for_status(tmp_path / 'second.json', lambda s: s.get(
      'stored_total', 0) >= rows + dead and s.get('in_flight') == 0, second,
                  timeout=120)
  stop(second)
  assert left_in(subscription) == 0
  con = duckdb.connect(str(db), read_only=True)
  stored = con.execute('SELECT message_id FROM orders').fetchall()
  letters = con.execute(
      'SELECT message_id, reason FROM orders_error_records').fetchall()
  con.close()
  by_id = dict(zip(ids, kinds))
  made = {}
  for (message_id,) in stored:
    made.setdefault(message_id.split('#')[0], []).append('row')
  for message_id, _ in letters:
    made.setdefault(message_id, []).append('dead')
  # What went missing, or where, says what failed (a failure on a loaded
  # machine once gave only the counts).
  missing = {i: k for i, k in by_id.items() if k != 'drop' and i not in made}
  assert not missing, (missing, sorted(set(r[1] for r in letters)))
  assert len(stored) == len({r[0] for r in stored}) == rows, letters
  assert len(letters) == len({r[0] for r in letters}) == dead
  assert 'too_many_attempts' not in {r[1] for r in letters}
  assert {i: by_id[i] for i in made} == {i: k for i, k in by_id.items()
                                         if k != 'drop'}


def test_a_dead_letter_keeps_at_most_1_mib_of_payload_and_says_so():
  """So that the dead-letter table (a BigQuery row: 10 MB) never refuses one
  for its size, whatever --max_message_bytes lets through."""
  from apache_beam.io.gcp.pubsub import PubsubMessage

  from transforms import dead_letters
  data = b'\x01' * (3 << 20)
  letter = dead_letters.dead_letter(
      PubsubMessage(data, {'k': 'v'}, message_id='1'), 'not_json', 'bad')
  assert letter['payloadBytes'] == data[:1 << 20]
  assert 'keeps the first 1048576 of the payload\'s 3145728 bytes' in (
      letter['errorMessage'])
  small = dead_letters.dead_letter(
      PubsubMessage(b'x' * (1 << 20), {}, message_id='2'), 'not_json', 'bad')
  assert small['payloadBytes'] == b'x' * (1 << 20)
  assert small['errorMessage'] == 'bad'


def test_a_message_given_up_keeps_its_attributes_and_can_be_redriven(
    pubsub_emulator, tmp_path):
  """A message the reader gives up on (delivered past
  --max_delivery_attempts: here its count is seeded as if it had crashed
  the pipeline five times) is a too_many_attempts dead letter with the
  attributes as published, no mark of the reader's among them; a redrive
  makes it the row it always was."""
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  poison, fine = publish(pubsub_emulator, topic, [GOOD, GOOD],
                         lambda i: {'origin': 'app', 'n': str(i)})
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  con = duckdb.connect(str(db))
  con.execute('CREATE TABLE pubsub_delivery_attempts (subscription VARCHAR '
              'NOT NULL, message_id VARCHAR NOT NULL, attempts INTEGER NOT '
              'NULL, PRIMARY KEY (subscription, message_id))')
  con.execute('INSERT INTO pubsub_delivery_attempts VALUES (?, ?, 5)',
              [subscription, poison])
  con.close()
  proc = start_pipeline(tmp_path, '--input_subscription', subscription,
                        '--warehouse', db, '--progress_seconds', 0.2,
                        '--status_file', status)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= 2 and
                  s.get('in_flight') == 0, proc)
  stop(proc)
  dead = duckdb_dicts(db, 'SELECT message_id, reason, attributes FROM '
                      'signin_errors')
  assert [(d['message_id'], d['reason']) for d in dead] == [
      (poison, 'too_many_attempts')]
  assert {a['key']: a['value'] for a in dead[0]['attributes']} == {
      'origin': 'app', 'n': '0'}
  assert duckdb_dicts(db, 'SELECT message_id FROM signins') == [
      {'message_id': fine}]
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM pubsub_delivery_attempts'
                      )[0]['n'] == 0  # forgotten once acknowledged
  result = run_main('redrive', '--pipeline', 'user_signin', '--warehouse', db)
  assert result.returncode == 0 and '1 moved' in result.stdout, (
      result.stdout, result.stderr)
  assert sorted(r['message_id'] for r in duckdb_dicts(
      db, 'SELECT message_id FROM signins')) == sorted([poison, fine])


TIMED_SCHEMA = SCHEMA + [
    {'name': 'placed_at', 'type': 'TIMESTAMP', 'mode': 'REQUIRED'}]


def timed_order(i):
  """The common order (the one-call parse), a key of another case (the
  exact path, still a row), a lone surrogate and a missing time (dead
  letters), in turn."""
  at = '2026-12-06T10:%02d:%02d.%06dZ' % (i // 60 % 60, i % 60, i)
  return [
      json.dumps({'order_id': 'o%d' % i, 'qty': i, 'placed_at': at}),
      json.dumps({'ORDER_ID': 'o%d' % i, 'qty': i, 'placed_at': at}),
      '{"order_id": "o%d\\ud800", "qty": %d, "placed_at": "%s"}' % (i, i, at),
      json.dumps({'order_id': 'o%d' % i, 'qty': i}),
  ][i % 4].encode()


def test_kill_9_amid_the_one_call_parse_then_a_restart_stores_each_once(
    pubsub_emulator, tmp_path):
  """Without a UDF the stream's common message is parsed, stamped and
  windowed in one call (``CompiledRows.message_outputs``): after kill -9
  and a restart, every message is one row (its time exact) or one dead
  letter, and none is left unacknowledged."""
  topic, (subscription,) = topic_and_subscriptions(pubsub_emulator)
  db = tmp_path / 'wh.duckdb'
  (tmp_path / 'orders.json').write_text(json.dumps(TIMED_SCHEMA))

  def run(status, *flags):
    return start_pipeline(
        tmp_path, '--schema', tmp_path / 'orders.json', '--input_subscription',
        subscription, '--warehouse', db, '--event_time_field', 'placed_at',
        '--progress_seconds', '0.2', '--status_file', status, *flags,
        name='pubsub_to_bigquery')
  first = run(tmp_path / 'first.json', '--max_in_flight', '200')
  wait_for_status(tmp_path / 'first.json', lambda s: 'messages_in' in s, first)
  n = 4000
  ids = publish(pubsub_emulator, topic, [timed_order(i) for i in range(n)])
  wait_for_status(tmp_path / 'first.json',
                  lambda s: s.get('messages_in', 0) >= 1000, first)
  first.send_signal(signal.SIGKILL)
  first.communicate(timeout=30)
  second = run(tmp_path / 'second.json')
  wait_for_status(tmp_path / 'second.json', lambda s: s.get(
      'stored_total', 0) >= n and s.get('in_flight') == 0, second, timeout=120)
  stop(second)
  assert left_in(subscription) == 0
  con = duckdb.connect(str(db), read_only=True)
  stored = con.execute(
      "SELECT message_id, order_id, qty, strftime(placed_at AT TIME ZONE "
      "'UTC', '%Y-%m-%dT%H:%M:%S.%fZ') FROM orders").fetchall()
  letters = con.execute(
      'SELECT message_id, reason FROM orders_error_records').fetchall()
  con.close()
  index = {message_id: i for i, message_id in enumerate(ids)}
  assert len(stored) == len({r[0] for r in stored}) == n // 2
  assert len(letters) == len({r[0] for r in letters}) == n // 2
  assert {index[r[0]] % 4 for r in stored} == {0, 1}
  assert {index[r[0]] % 4 for r in letters} == {2, 3}
  for message_id, order_id, qty, at in stored:
    i = index[message_id]
    assert (order_id, qty) == ('o%d' % i, i)
    assert at == json.loads(timed_order(i))['placed_at'], (i, at)
