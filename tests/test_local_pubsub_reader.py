"""The ack-after-commit local reader: nothing lost, nothing doubled when the
pipeline is killed, stopped or interrupted mid-stream, and poison messages
end as dead letters without stalling the stream. On the official emulator."""

import datetime
import os
import pickle
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
from local_runner import runs
from local_runner.leases import DeliveryAttempts
from local_runner.leases import Leases
from transforms import dead_letters
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


def test_leases_ack_only_what_was_committed():
  leases = Leases()
  leases.add('sub', 'm1', 'a1')
  leases.add('sub', 'm2', 'a2')
  leases.committed(['m1', 'unknown'])
  assert leases.take_acks() == {'sub': ['a1']}
  assert leases.in_flight() == [('m2', 'a2')]
  assert not leases.wait_until_empty(0.05)
  leases.committed(['m2'])
  assert leases.wait_until_empty(0.05)
  assert leases.take_acks() == {'sub': ['a2']}
  assert leases.count() == 0


def test_ack_on_commit_hook_marks_rows_and_dead_letters_of_its_run_only():
  with runs.Run() as run, runs.Run() as other:
    for r in (run, other):
      r.leases.add('s', 'id-1', 'ack-1')
      r.leases.add('s', 'id-2', 'ack-2')
    hook = pickle.loads(pickle.dumps(run.acknowledge_stored()))  # as in a DoFn
    hook([{'message_id': 'id-1'}, {'message_id': None}])
    assert ('id-2', 'ack-2') in run.leases.in_flight('s')
    assert ('id-1', 'ack-1') not in run.leases.in_flight('s')
    assert run.leases.take_acks() == {'s': ['ack-1']}
    assert other.leases.unstored() == 2  # another run's leases: untouched
    counter = pickle.loads(pickle.dumps(run.count_read()))
    counter.add(3)
    assert (run.messages_read, other.messages_read) == (3, 0)
  hook([{'message_id': 'id-2'}])  # the run has ended: a no-op
  counter.add(1)


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


def test_oversized_payloads_travel_cut_but_still_too_large():
  Received = received_proto(b'y' * (channel.MAX_PAYLOAD_BYTES + 500),
                            {'k': 'v'}, '42')
  message, ts = channel.to_message(Received)
  assert isinstance(message, PubsubMessage)
  assert len(message.data) == channel.MAX_PAYLOAD_BYTES + 1
  assert message.attributes[channel.ORIGINAL_SIZE_ATTRIBUTE] == str(
      channel.MAX_PAYLOAD_BYTES + 500)
  assert ts.micros == 1577836800 * 10**6


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
        subscription, Leases(), attempts=DeliveryAttempts(db),
        max_attempts=3).start()
    pulled = []
    for _ in range(20):
      pulled = pump._pull()  # pylint: disable=protected-access
      if pulled:
        break
    pump.close()  # not stored: handed back at once, counted
    assert len(pulled) == 1
    received, attempts = pulled[0]
    message, _ = channel.to_message(received, attempts, 3)
    seen.append((attempts, dict(message.attributes)))
  user_signin_warehouse_close(db)
  assert [a for a, _ in seen] == [1, 2, 3, 4]
  assert all(dead_letters.TOO_MANY_ATTEMPTS_ATTRIBUTE not in attrs for _, attrs in seen[:3])
  assert seen[3][1][dead_letters.TOO_MANY_ATTEMPTS_ATTRIBUTE] == '4'
  with pytest.raises(pm.Invalid) as raised:
    pm.parse_signin(PubsubMessage(b'{}', seen[3][1], message_id='x'))
  assert raised.value.reason == 'too_many_attempts'


def user_signin_warehouse_close(db):
  from storage.duckdb_files import DuckDBFiles
  DuckDBFiles.close(db)


def test_timestamp_attribute_sets_the_element_time_or_marks_the_message():

  Received = received_proto(b'{}', {'ts': '1508273837250'}, '7')
  _, ts = channel.to_message(Received, timestamp_attribute='ts')
  assert ts.micros == 1508273837250 * 1000
  Received.message.attributes['ts'] = '2017-10-17T20:57:17.25Z'
  _, ts = channel.to_message(Received, timestamp_attribute='ts')
  assert ts.micros == 1508273837250 * 1000
  Received.message.attributes['ts'] = 'yesterday'
  message, ts = channel.to_message(Received, timestamp_attribute='ts')
  assert ts.micros == 1577836800 * 10**6  # publish time
  with pytest.raises(pm.Invalid) as raised:
    pm.parse_signin(message)
  assert raised.value.reason == 'bad_timestamp_attribute'
  assert "ts='yesterday'" in str(raised.value)


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


def test_messages_travel_as_pubsub_protos_not_pickles():
  import pickle

  from apache_beam.io.gcp.pubsub import PubsubMessage
  from google.pubsub_v1.types import PubsubMessage as Proto

  from local_runner.channel import PubsubMessageProtoCoder
  coder = PubsubMessageProtoCoder()
  when = datetime.datetime(2017, 10, 17, 20, 57, 17, 338320,
                           tzinfo=datetime.timezone.utc)
  for message in (
      PubsubMessage(b'{"userid": "1"}', {'k': 'v', 'x-too-many-attempts': '6'},
                    message_id='42', publish_time=when),
      PubsubMessage(b'\xff\x00', {}, message_id='7', publish_time=None)):
    encoded = coder.encode(message)
    proto = Proto.deserialize(encoded)  # Pub/Sub's own message proto
    assert proto.data == message.data and proto.message_id == message.message_id
    back = coder.decode(encoded)
    assert (back.data, back.attributes, back.message_id, back.publish_time) == (
        message.data, message.attributes, message.message_id,
        message.publish_time)
  # What arrives on the port is decoded as a proto, never unpickled.
  with pytest.raises(Exception):
    coder.decode(pickle.dumps(PubsubMessage(b'x', {})))
