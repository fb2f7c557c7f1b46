"""The ack-after-commit local reader: nothing lost, nothing doubled when the
pipeline is killed, stopped or interrupted mid-stream, and poison messages
end as dead letters without stalling the stream. On the official emulator."""

import datetime
import os
import random
import signal
import time
import uuid

import duckdb
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage

from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins
from storage import duckdb_files
from local_runner import channel
from local_runner import pump as pump_lib
from local_runner.leases import DeliveryAttempts
from local_runner.leases import Leases
from transforms import signin_messages as pm

MAX_BYTES = 2048


def start(subscription, db, status, *extra):
  return start_pipeline(
      os.path.dirname(str(db)), '--input_subscription', subscription,
      '--warehouse', str(db), '--max_message_bytes', str(MAX_BYTES),
      '--progress_seconds', '0.2', '--status_file', str(status), *extra)


def stored_ids(db):
  con = duckdb.connect(str(db), read_only=True)
  try:
    rows = [r[0] for r in con.execute('SELECT message_id FROM signins').fetchall()]
    dead = [r[0] for r in con.execute(
        'SELECT message_id FROM signin_errors').fetchall()]
  finally:
    con.close()
  return rows, dead


def fresh_subscription(emulator):
  topic = 'signins-%s' % uuid.uuid4().hex[:8]
  sub = 'sub-%s' % uuid.uuid4().hex[:8]
  return topic, sub, 'projects/%s/subscriptions/%s' % (emulator.project, sub)


@pytest.mark.emulator
@pytest.mark.parametrize('how', [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=['kill-9', 'sigterm', 'ctrl-c'])
def test_interrupted_stream_stores_every_message_exactly_once(
    pubsub_emulator, tmp_path, how):
  topic, sub, subscription = fresh_subscription(pubsub_emulator)
  count, ids, kinds = publish_signins.publish(
      pubsub_emulator.project, topic, 4000, bad_fraction=0.2,
      subscription=sub, max_message_bytes=MAX_BYTES)
  db = tmp_path / 'wh.duckdb'
  # Interrupt at a random point while messages are flowing.
  cut = random.Random(how).randint(count // 10, count * 6 // 10)
  first = start(subscription, db, tmp_path / 'first.json')
  wait_for_status(tmp_path / 'first.json',
                  lambda s: s.get('messages_in', 0) >= cut, first)
  first.send_signal(how)
  out, err = first.communicate(timeout=90)
  if how == signal.SIGKILL:
    assert first.returncode == -signal.SIGKILL
  else:  # a clean stop: in-flight messages stored and acknowledged, exit 0
    assert first.returncode == 0, err
    assert 'Traceback' not in err and 'user_signin: ' in out
  # Restart on the same subscription and wait until all is stored.
  second = start(subscription, db, tmp_path / 'second.json')
  wait_for_status(tmp_path / 'second.json',
                  lambda s: s.get('stored_total', 0) >= count, second,
                  timeout=180)
  second.send_signal(signal.SIGTERM)
  _, err = second.communicate(timeout=90)
  assert second.returncode == 0, err
  rows, dead = stored_ids(db)
  assert len(rows) + len(dead) == count  # nothing doubled...
  assert set(rows) | set(dead) == set(ids)  # ...nothing lost
  assert len(rows) == kinds['valid']


@pytest.mark.emulator
def test_poison_messages_become_dead_letters_and_the_stream_flows(
    pubsub_emulator, tmp_path):
  """A 5 MB message (over the emulator's 4 MiB gRPC default, which stalls
  Beam's own local read) among good ones."""
  from google.cloud import pubsub_v1
  topic, sub, subscription = fresh_subscription(pubsub_emulator)
  publish_signins.publish(pubsub_emulator.project, topic, 0, subscription=sub)
  publisher = pubsub_v1.PublisherClient()
  topic_path = publisher.topic_path(pubsub_emulator.project, topic)
  good = b'{"userid": "u1", "date": "2017-10-17T20:57:17Z"}'
  futures = [publisher.publish(topic_path, good, ts='1508273837000')
             for _ in range(50)]
  futures.append(publisher.publish(topic_path, b'{"userid": "' + b'x' * 5_000_000 + b'"}'))
  futures.append(publisher.publish(topic_path, good, ts='not a time'))
  futures += [publisher.publish(topic_path, good) for _ in range(50)]
  ids = [f.result(timeout=60) for f in futures]
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start(subscription, db, status, '--timestamp_attribute', 'ts')
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=90)
  assert proc.returncode == 0, err
  con = duckdb.connect(str(db), read_only=True)
  dead = con.execute('SELECT message_id, reason, octet_length(payloadBytes) '
                     'FROM signin_errors ORDER BY reason').fetchall()
  rows = con.execute('SELECT count(*) FROM signins').fetchone()[0]
  con.close()
  assert dead == [(ids[51], 'bad_timestamp_attribute', len(good)),
                  (ids[50], 'too_large', 1024)]
  assert rows == 100


def test_leases_ack_only_what_was_settled():
  leases = Leases()
  leases.add('sub', 'a1', 'm1')
  leases.add('sub', 'a2', 'm2')
  leases.add('sub', 'a3', 'm1')  # a second delivery of m1: its own lease
  leases.settled(['a1', 'unknown'])
  assert leases.take_acks() == {'sub': ['a1']}
  assert leases.in_flight() == ['a2', 'a3']
  assert not leases.wait_until_empty(0.05)
  leases.settled(['a2', 'a3'])
  assert leases.wait_until_empty(0.05)
  assert leases.take_acks() == {'sub': ['a2', 'a3']}
  assert leases.take_settled_ids() == {'sub': ['m1', 'm2', 'm1']}
  assert leases.count() == 0


def received_proto(data, attributes, message_id,
                   published=datetime.datetime(2020, 1, 1,
                                               tzinfo=datetime.timezone.utc)):
  """A ReceivedMessage as the pump pulls it: the raw protobuf."""
  from google.pubsub_v1.types import ReceivedMessage
  received = ReceivedMessage.pb()()
  received.message.data = data
  received.message.attributes.update(attributes)
  received.message.message_id = message_id
  received.message.publish_time.FromDatetime(published)
  return received


def test_a_message_travels_whole_and_unchanged_whatever_its_size():
  """10 MB of data and 100 attributes of 1,000 bytes (within Pub/Sub's
  limits), a lone surrogate in the id: handed to the runner as they are."""
  attributes = {'k%03d' % i: 'v' * 1000 for i in range(100)}
  received = received_proto(b'y' * 10_000_000, attributes, '42')
  message, micros = channel.delivered_message(received)
  assert isinstance(message, PubsubMessage)
  assert message.data == b'y' * 10_000_000 and message.attributes == attributes
  assert message.given_up is None
  assert micros == 1577836800 * 10**6
  odd = PubsubMessage(b'x', {'\ud800k': '\udfff'}, message_id='id-\ud800')
  coder = channel.HandOffCoder()
  token = coder.encode(odd)
  assert len(token) < 32
  assert coder.decode(token) is odd
  with pytest.raises(KeyError):  # a token is taken once
    coder.decode(token)


@pytest.mark.emulator
def test_a_message_that_never_gets_stored_is_dead_lettered_after_max_attempts(
    pubsub_emulator, tmp_path):
  """Each pump here pulls and stops without storing (as if the pipeline
  crashed on the message); delivery counts live in the warehouse file, so
  after max_attempts the message is marked for the dead-letter table."""
  from google.cloud import pubsub_v1
  topic, sub, subscription = fresh_subscription(pubsub_emulator)
  publish_signins.publish(pubsub_emulator.project, topic, 0, subscription=sub)
  publisher = pubsub_v1.PublisherClient()
  publisher.publish(publisher.topic_path(pubsub_emulator.project, topic),
                    b'{"userid": "u", "date": "2017-10-17"}').result(timeout=60)
  db = str(tmp_path / 'wh.duckdb')
  seen = []
  for _ in range(4):
    pump = pump_lib.PubSubPump(
        subscription, Leases(), attempts=DeliveryAttempts(db, subscription),
        max_attempts=3).start()
    pulled = []
    for _ in range(20):
      pulled = pump._pull()  # pylint: disable=protected-access
      if pulled:
        break
    pump.close()  # not stored: handed back at once, counted
    assert len(pulled) == 1
    received, attempts = pulled[0]
    message, _ = channel.delivered_message(received, attempts, 3)
    seen.append((attempts, message))
  user_signin_warehouse_close(db)
  assert [a for a, _ in seen] == [1, 2, 3, 4]
  assert [m.given_up is None for _, m in seen] == [True, True, True, False]
  given_up = seen[3][1]
  assert given_up.attributes == {}  # the mark is beside the message, not in it
  with pytest.raises(pm.Invalid) as raised:
    pm.parse_signin(given_up)
  assert raised.value.reason == 'too_many_attempts'


def user_signin_warehouse_close(db):
  from storage.duckdb_files import DuckDBFiles
  DuckDBFiles.close(db)


def test_timestamp_attribute_sets_the_element_time_or_gives_the_message_up():
  received = received_proto(b'{}', {'ts': '1508273837250'}, '7')
  cases = {
      '1508273837250': 1508273837250 * 1000,
      '2017-10-17T20:57:17.25Z': 1508273837250 * 1000,
      # RFC 3339 allows any number of fractional digits: past micros dropped.
      '2024-05-01T12:00:00.1234567Z': 1714564800123456,
      '2024-05-01T12:00:00.123456789+02:00': 1714557600123456,
      '2016-12-31T23:59:60Z': 1483228800 * 10**6,  # a leap second: next :00
      '0001-01-01T00:00:00Z': -62135596800 * 10**6,
  }
  for value, micros in cases.items():
    received.message.attributes['ts'] = value
    message, at = channel.delivered_message(received, timestamp_attribute='ts')
    assert (at, message.given_up) == (micros, None), value
  for value in ('yesterday', '10000000000000000', '253402300800000',
                '2024-02-30T00:00:00Z', '2024-05-01T12:00:00', '',
                '1e3', 'é', '9' * 80, '\u0663', '２０２４-05-01T12:00:00Z'):
    received.message.attributes['ts'] = value
    message, at = channel.delivered_message(received, timestamp_attribute='ts')
    assert at == 1577836800 * 10**6, value  # the publish time
    assert message.attributes['ts'] == value  # the message as published
    with pytest.raises(pm.Invalid) as raised:
      pm.parse_signin(message)
    assert raised.value.reason == 'bad_timestamp_attribute'
    assert 'ts=' in str(raised.value)


@pytest.mark.emulator
def test_live_windows_fire_and_count_exactly_the_stored_rows(
    pubsub_emulator, tmp_path):
  """The reader's watermark follows the clock, so event-time windows of live
  sign-ins close during the run; each count equals the rows in its window."""
  topic, sub, subscription = fresh_subscription(pubsub_emulator)
  publish_signins.publish(pubsub_emulator.project, topic, 0, subscription=sub)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start(subscription, db, status, '--window_seconds', '1')
  wait_for_status(status, lambda s: 'messages_in' in s, proc)
  count, _, _ = publish_signins.publish(
      pubsub_emulator.project, topic, 300, bad_fraction=0.0, rate=150)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= count and
                  s.get('count_rows', 0) > 0, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=90)
  assert proc.returncode == 0, err
  con = duckdb.connect(str(db), read_only=True)
  mismatched = con.execute('''
      SELECT c.window_start, c.userid, c.signins, count(s.message_id) AS rows
      FROM signin_counts c LEFT JOIN signins s
        ON s.userid = c.userid AND s.date >= c.window_start AND s.date < c.window_end
      GROUP BY ALL HAVING c.signins <> count(s.message_id)''').fetchall()
  counted = con.execute('SELECT sum(signins) FROM signin_counts').fetchone()[0]
  con.close()
  assert not mismatched
  assert 0 < counted <= count


def test_watermark_holds_at_what_was_pulled_while_a_backlog_is_read():
  from apache_beam.utils.timestamp import Timestamp
  now = 1000.0
  last = Timestamp.of(900)
  step = lambda newest, idle=False: pump_lib.next_watermark(  # noqa: E731
      last, newest, idle, now=now)
  # Messages pulled: their newest timestamp, not the clock.
  assert step(Timestamp.of(950)) == Timestamp.of(950)
  # Nothing pulled: unchanged, until the pulls have been empty a while.
  assert step(None) == last
  assert step(None, idle=True) == Timestamp.of(now)
  # Never past the clock, never backwards.
  assert step(Timestamp.of(5000)) == Timestamp.of(now)
  assert step(Timestamp.of(10)) == last


@pytest.mark.emulator
def test_a_backlog_read_in_small_pulls_is_counted_on_time(
    pubsub_emulator, tmp_path):
  """Sign-ins published seconds before the pipeline starts, read 100 at a
  time: each window's count equals its rows, as the watermark follows the
  messages read, not the clock (with the clock, all but the first pull's
  would be past a 2 s lateness, stored but not counted; and the emulator
  does answer a pull with nothing while a backlog waits)."""
  topic, sub, subscription = fresh_subscription(pubsub_emulator)
  count, _, _ = publish_signins.publish(
      pubsub_emulator.project, topic, 1500, bad_fraction=0.0,
      subscription=sub, rate=1000)
  time.sleep(4)  # the backlog ages past its windows' lateness
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start(subscription, db, status, '--window_seconds', '1',
               '--allowed_lateness_seconds', '2', '--max_in_flight', '100')
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= count, proc)
  # The last windows fire once the reader sees nothing more waiting.
  deadline = time.monotonic() + 30
  while True:
    with duckdb_files.wait_to_read(str(db)) as con:
      counted, rows, oldest = con.execute(
          'SELECT (SELECT sum(signins) FROM signin_counts), count(*), '
          'min(ingested_at) - max(date) FROM signins').fetchone()
    if counted == count or time.monotonic() > deadline:
      break
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=90)
  assert proc.returncode == 0, err
  assert rows == count
  assert oldest > datetime.timedelta(seconds=3)  # all past the lateness
  assert counted == count
