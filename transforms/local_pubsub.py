"""A local Pub/Sub source that acknowledges a message only after its row or
dead letter is committed to the warehouse, in large bundles.

Beam's own Pub/Sub read on the local runner acknowledges each pull of at most
10 messages before processing it, so a kill, a stop or a failed bundle loses
what is in flight, and per-bundle costs cap it near 700 messages/s. Here:

- ``PubSubPump`` keeps one subscriber client for the life of the process
  (gRPC receive cap raised, so messages the emulator's default 4 MiB cap
  refuses still arrive), pulls up to 2,000 messages at a time and serves them
  as ``TestStream`` events over Beam's TestStreamService (the mechanism Beam
  provides to feed a live event stream into the local runner; Beam's
  PeriodicImpulse and splittable DoFns do not run on the local streaming
  runner in Beam 2.77, and processing-time timers there never fire);
- every pulled message is leased in ``LEASES`` until a sink reports it
  committed (``AckOnCommit``); a lease thread acknowledges committed
  messages in batches and extends the ack deadline of those still in flight;
- anything not committed is never acknowledged, so Pub/Sub redelivers it
  after a crash, and the warehouse's message-id key absorbs the duplicate.

Local runner only (the sink must run in the launcher's process): on Dataflow
use Beam's ``ReadFromPubSub``, whose source checkpoints and deduplicates.
"""

import collections
import datetime
import logging
import os
import shutil
import tempfile
import threading
import time

import apache_beam as beam
import grpc
from apache_beam import coders
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.test_stream_service import TestStreamServiceController
from apache_beam.utils.timestamp import Timestamp

from transforms import outages
from transforms import pubsub_message

_LOG = logging.getLogger(__name__)

MAX_EVENT_BYTES = 3 << 20  # Beam's TestStream client keeps gRPC's 4 MiB cap
MAX_PAYLOAD_BYTES = 2 << 20  # longer payloads travel cut to this + 1 byte
ORIGINAL_SIZE_ATTRIBUTE = 'x-original-size'
ACK_DEADLINE_SECONDS = 10
# Read-ahead bound: pulled but not yet acknowledged. Two of the pump's
# 2,000-message bundles plus what is being acknowledged keep the runner busy
# (~1 s of work at the measured rates) while bounding memory, lease
# extensions and the work left at a stop. Bytes as Pub/Sub's own client.
MAX_IN_FLIGHT = 5000
MAX_IN_FLIGHT_BYTES = 100 << 20
ACK_CALL_SECONDS = 10  # acknowledge / modify deadline while running
STOP_CALL_SECONDS = 2  # the same at a stop: a stop never waits on Pub/Sub
START_SECONDS = 10  # how long a start waits for Pub/Sub to answer
UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
WATERMARK_EVERY_SECONDS = 0.5
IDLE_SECONDS = 1.0  # pulls empty this long: nothing waiting, watermark = now
HEARTBEAT_SECONDS = 5.0  # the longest the reader stays silent
FORGET_EVERY_SECONDS = 1.0  # delivery counts of stored messages, dropped


class Leases(object):
  """Messages pulled but not yet acknowledged, process-wide.

  ``add`` when pulled, ``committed`` when a sink has stored the row or dead
  letter, ``take_acks`` for the lease thread (``requeue_acks`` what Pub/Sub
  did not take). Counts and bytes bound the read-ahead. Thread-safe.
  """
  def __init__(self):
    self._lock = threading.Condition()
    # message id -> (subscription, ack id, bytes, publish time in epoch s)
    self._in_flight = {}
    self._to_ack = collections.defaultdict(list)  # subscription -> ack ids
    self._to_ack_count = 0
    self._committed_ids = []
    self._bytes = 0
    self.committed_total = 0  # messages stored (and so acknowledgeable)

  def add(self, subscription, message_id, ack_id, size=0, published=None):
    with self._lock:
      if message_id not in self._in_flight:
        self._bytes += size
      else:
        self._bytes += size - self._in_flight[message_id][2]
      self._in_flight[message_id] = (
          subscription, ack_id, size, published or time.time())

  def committed(self, message_ids):
    with self._lock:
      for message_id in message_ids:
        lease = self._in_flight.pop(message_id, None)
        if lease is not None:
          self._bytes -= lease[2]
          self._to_ack[lease[0]].append(lease[1])
          self._to_ack_count += 1
          self._committed_ids.append(message_id)
          self.committed_total += 1
      self._lock.notify_all()

  def take_acks(self):
    with self._lock:
      acks, self._to_ack = dict(self._to_ack), collections.defaultdict(list)
      self._to_ack_count = 0
      return acks

  def requeue_acks(self, subscription, ack_ids):
    """Acknowledgements Pub/Sub did not take, to be tried again."""
    with self._lock:
      self._to_ack[subscription].extend(ack_ids)
      self._to_ack_count += len(ack_ids)

  def take_committed_ids(self):
    with self._lock:
      ids, self._committed_ids = self._committed_ids, []
      return ids

  def in_flight(self, subscription=None):
    with self._lock:
      return [(mid, lease[1]) for mid, lease in self._in_flight.items()
              if subscription in (None, lease[0])]

  def count(self):
    """Pulled and not yet acknowledged (stored or not)."""
    with self._lock:
      return len(self._in_flight) + self._to_ack_count

  def unstored(self):
    with self._lock:
      return len(self._in_flight)

  def unstored_bytes(self):
    with self._lock:
      return self._bytes

  def lag_seconds(self):
    """Age (since publishing) of the oldest message pulled but not stored."""
    with self._lock:
      if not self._in_flight:
        return 0.0
      return max(0.0, time.time() - min(
          lease[3] for lease in self._in_flight.values()))

  def wait_until_empty(self, timeout):
    deadline = time.monotonic() + timeout
    with self._lock:
      while self._in_flight:
        left = deadline - time.monotonic()
        if left <= 0:
          return False
        self._lock.wait(min(left, 0.2))
    return True


LEASES = Leases()


class AckOnCommit(object):
  """A sink's on_commit hook: rows carrying ``message_id`` are committed."""
  def __call__(self, rows):
    LEASES.committed([row['message_id'] for row in rows
                      if row.get('message_id') is not None])


def subscriber_client(receive_bytes=256 << 20):
  """A SubscriberClient whose gRPC receive cap fits Pub/Sub's 10 MB messages.

  With PUBSUB_EMULATOR_HOST set the client library keeps gRPC's 4 MiB default,
  so one pull of a few large messages fails; we build its channel ourselves.
  """
  import grpc
  from google.cloud import pubsub_v1
  from google.pubsub_v1.services.subscriber.transports import (
      SubscriberGrpcTransport)
  options = [('grpc.max_receive_message_length', receive_bytes),
             ('grpc.max_send_message_length', -1)]
  host = os.environ.get('PUBSUB_EMULATOR_HOST')
  if host:
    channel = grpc.insecure_channel(host, options=options)
  else:
    channel = SubscriberGrpcTransport.create_channel(options=options)
  return pubsub_v1.SubscriberClient(
      transport=SubscriberGrpcTransport(channel=channel))


class PubsubMessageProtoCoder(coders.Coder):
  """PubsubMessage <-> Pub/Sub's own message proto: how pulled messages
  travel from the pump to the runner (an encoding that cannot run code,
  unlike pickles)."""
  _PROTO = None

  @classmethod
  def _proto_class(cls):
    if cls._PROTO is None:
      from google.pubsub_v1.types import PubsubMessage as ProtoPlusMessage
      cls._PROTO = ProtoPlusMessage.pb()
    return cls._PROTO

  def encode(self, message):
    proto = self._proto_class()(
        data=message.data or b'', attributes=message.attributes or {},
        message_id=message.message_id or '')
    if message.publish_time is not None:
      proto.publish_time.FromDatetime(message.publish_time)
    return proto.SerializeToString()

  def decode(self, encoded):
    proto = self._proto_class().FromString(encoded)
    publish_time = None
    if proto.HasField('publish_time'):
      # What ToDatetime(tzinfo=UTC) gives, exactly, at a third of its cost.
      published = proto.publish_time
      publish_time = _EPOCH + datetime.timedelta(
          seconds=published.seconds, microseconds=published.nanos // 1000)
    return PubsubMessage(proto.data, dict(proto.attributes),
                         message_id=proto.message_id or None,
                         publish_time=publish_time)

  def is_deterministic(self):
    return True


def message_proto(received, attempts=1, max_attempts=None,
                  timestamp_attribute=None):
  """A pulled ReceivedMessage (raw protobuf) -> (Pub/Sub message proto cut to
  travel, its timestamp in microseconds): what the runner decodes with
  PubsubMessageProtoCoder.

  The timestamp is the publish time, or ``timestamp_attribute``'s value
  (milliseconds since the epoch or RFC 3339, as Beam's read takes it). A
  message over ``max_attempts`` deliveries, or whose timestamp attribute is
  not a timestamp, is marked for the parse step to dead-letter. Raw protos,
  not the client's proto-plus wrappers: those cost 12% of a live stream's
  time (benchmarks/README.md).
  """
  msg = received.message
  published = msg.publish_time
  micros = published.seconds * 1000000 + published.nanos // 1000
  attributes = msg.attributes
  changes = {}
  if len(msg.data) > MAX_PAYLOAD_BYTES:
    changes[ORIGINAL_SIZE_ATTRIBUTE] = str(len(msg.data))
  if max_attempts and attempts > max_attempts:
    changes[pubsub_message.TOO_MANY_ATTEMPTS_ATTRIBUTE] = str(attempts)
  if timestamp_attribute and timestamp_attribute in attributes:
    try:
      micros = parse_timestamp_attribute(
          attributes[timestamp_attribute]).micros
    except ValueError as e:
      changes[pubsub_message.BAD_TIMESTAMP_ATTRIBUTE] = (
          'attribute %s=%r is not a timestamp: %s' % (
              timestamp_attribute, attributes[timestamp_attribute][:100], e))
  if changes:
    copy = type(msg)()
    copy.CopyFrom(msg)
    if ORIGINAL_SIZE_ATTRIBUTE in changes:
      copy.data = msg.data[:MAX_PAYLOAD_BYTES + 1]
    copy.attributes.update(changes)
    msg = copy
  return msg, micros


def to_message(received, attempts=1, max_attempts=None,
               timestamp_attribute=None):
  """A pulled ReceivedMessage -> (PubsubMessage as the runner sees it, its
  timestamp)."""
  proto, micros = message_proto(received, attempts, max_attempts,
                                timestamp_attribute)
  return (PubsubMessageProtoCoder().decode(proto.SerializeToString()),
          Timestamp(micros=micros))


def parse_timestamp_attribute(value):
  """Milliseconds since the epoch, or RFC 3339: what Beam's read accepts."""
  try:
    return Timestamp(micros=int(value) * 1000)
  except ValueError:
    return Timestamp.from_rfc3339(value)


# Beam 2.77's TestStream events write times to the proto in milliseconds, but
# the local runner reads TestStreamService events as microseconds (a 1000x
# error that leaves the watermark in January 1970, so no window ever fires).
# We build the protos with microseconds, which is what the reader expects.
def element_event(protos_and_micros):
  """[(message proto, timestamp in microseconds)] -> a TestStreamPayload
  element event proto; each message travels serialized as it came
  (PubsubMessageProtoCoder reads it on the runner's side)."""
  payload = beam_runner_api_pb2.TestStreamPayload
  return payload.Event(element_event=payload.Event.AddElements(
      elements=[payload.TimestampedElement(
          encoded_element=proto.SerializeToString(), timestamp=micros)
                for proto, micros in protos_and_micros],
      tag='None'))


def watermark_event(watermark):
  """Timestamp -> a TestStreamPayload watermark event proto."""
  payload = beam_runner_api_pb2.TestStreamPayload
  return payload.Event(watermark_event=payload.Event.AdvanceWatermark(
      new_watermark=watermark.micros, tag='None'))


def next_watermark(last, newest, idle, now=None):
  """The reader's next watermark: what Dataflow's Pub/Sub read estimates
  (the oldest message not yet read), as far as one subscriber can tell.

  Messages just pulled hold it at the newest of their timestamps
  (``newest``): while a backlog is read (the pipeline behind live traffic,
  or a restart reading what the last run left), what is still in Pub/Sub is
  no older than what was just pulled, so event-time windows do not close
  over it and its rows are on time, not late. Only once the pulls have come
  back empty for IDLE_SECONDS (``idle``: nothing is waiting; one empty
  answer is no proof, Pub/Sub may return one with a backlog) is it now.
  Otherwise it stays. Never past now, never backwards.
  """
  now = Timestamp.of(int((time.time() if now is None else now) * 1000) / 1000.0)
  if newest is not None:
    candidate = min(now, newest)
  elif idle:
    candidate = now
  else:
    return last
  return max(last, candidate)


class DeliveryAttempts(object):
  """How often each unacknowledged message was pulled, kept in the warehouse
  file so that it survives crashes: a message that kills the pipeline every
  time is delivered at most max_delivery_attempts times, then dead-lettered.
  Rows are forgotten once their message is acknowledged."""
  TABLE = 'pubsub_deliveries'

  def __init__(self, path):
    self._path = path
    self._created = False

  @property
  def path(self):
    return self._path

  def _execute(self, sql, table):
    from transforms.duckdb_files import DuckDBFiles
    with DuckDBFiles.use(self._path) as cursor:
      if not self._created:
        cursor.execute(
            'CREATE TABLE IF NOT EXISTS %s (message_id VARCHAR PRIMARY KEY, '
            'attempts INTEGER NOT NULL)' % self.TABLE)
        self._created = True
      cursor.register('message_ids', table)
      try:
        return cursor.execute(sql.format(t=self.TABLE)).fetchall()
      finally:
        cursor.unregister('message_ids')

  def record(self, message_ids):
    """Counts one more delivery of each; returns {message id: deliveries}."""
    if not message_ids:
      return {}
    import pyarrow as pa
    return dict(self._execute(
        'INSERT INTO {t} SELECT DISTINCT message_id, 1 FROM message_ids '
        'ON CONFLICT (message_id) DO UPDATE SET attempts = {t}.attempts + 1 '
        'RETURNING message_id, attempts',
        pa.table({'message_id': list(message_ids)})))

  def forget(self, message_ids):
    if not message_ids:
      return
    import pyarrow as pa
    self._execute(
        'DELETE FROM {t} WHERE message_id IN (SELECT message_id FROM '
        'message_ids)', pa.table({'message_id': list(message_ids)}))


class PubSubPump(object):
  """Pulls a subscription in large batches and serves them as TestStream events.

  ``read_multiple`` is the TestStreamService reader: a generator of event
  protos that never ends until ``close``. Its watermark follows the messages
  pulled, and is now once nothing waits (``next_watermark``); it speaks at
  least every HEARTBEAT_SECONDS (Beam stops a TestStream silent for 30 s).
  """
  def __init__(self, subscription, max_messages=2000, pull_timeout=1.0,
               leases=LEASES, attempts=None, max_attempts=5,
               timestamp_attribute=None, max_in_flight=MAX_IN_FLIGHT,
               max_in_flight_bytes=MAX_IN_FLIGHT_BYTES):
    self.max_in_flight = max_in_flight
    self._last_forget = 0.0
    self.max_in_flight_bytes = max_in_flight_bytes
    self.reachability = Reachability(subscription)
    self.attempts = attempts
    self.max_attempts = max_attempts
    self.timestamp_attribute = timestamp_attribute
    self.subscription = subscription
    self.max_messages = max_messages
    self.pull_timeout = pull_timeout
    self.leases = leases
    self._client = None
    self._pulling = threading.Event()
    self._pulling.set()
    self._closed = threading.Event()
    self._lease_thread = None

  # -- control -------------------------------------------------------------
  @property
  def client(self):
    return self._client

  def start(self):
    self._client = subscriber_client()
    self._lease_thread = threading.Thread(
        target=self._keep_leases, daemon=True, name='pubsub-leases')
    self._lease_thread.start()
    return self

  def stop_pulling(self):
    """No new pulls; in-flight messages still commit and get acknowledged."""
    self._pulling.clear()

  def close(self, timeout=STOP_CALL_SECONDS):
    """Stops; acknowledges what was committed and hands back (deadline 0)
    what was not, so that the next run gets it at once, each in one call of
    at most ``timeout`` seconds that is not retried: a stop never waits on
    Pub/Sub (what is not acknowledged is redelivered and absorbed by the
    message-id key). Returns how many pulled messages stay unacknowledged."""
    self._pulling.clear()
    self._closed.set()
    if self._lease_thread:
      self._lease_thread.join(timeout)
    if self._flush_acks(timeout, final=True):
      self._modify_deadlines(0, timeout)
    return self.leases.count()

  # -- the TestStreamService reader ------------------------------------------
  def read_multiple(self, unused_keys):
    last_watermark = Timestamp.of(0)
    empty_since = None  # when the pulls began to come back empty
    last_event_at = time.monotonic()
    while not self._closed.is_set():
      try:
        pulled_at = time.monotonic()
        received = self._pull() if self._pulling.is_set() else None
        events, newest = self._element_events(received or [])
      except Exception:  # pylint: disable=broad-except
        # An exception here would end Beam's TestStream, and the stream with
        # it. Pulled messages stay unacknowledged: Pub/Sub redelivers them.
        _LOG.exception('pulling from %s failed; retrying', self.subscription)
        time.sleep(1)
        continue
      if not received and not self._pulling.is_set():
        time.sleep(0.2)
      if events:
        last_event_at = time.monotonic()
      yield from events
      if received:
        empty_since = None
      elif received is not None and empty_since is None:
        empty_since = pulled_at
      watermark = next_watermark(
          last_watermark, newest, idle=empty_since is not None and
          time.monotonic() - empty_since >= IDLE_SECONDS)
      # Every event costs the runner a round through the graph, so at most a
      # few watermark advances per second; and one at least every
      # HEARTBEAT_SECONDS, even unchanged (Beam ends a TestStream silent for
      # 30 s: a long stall at the read-ahead bound, a Pub/Sub outage).
      if (watermark - last_watermark >= WATERMARK_EVERY_SECONDS or
          time.monotonic() - last_event_at >= HEARTBEAT_SECONDS):
        last_watermark = max(last_watermark, watermark)
        last_event_at = time.monotonic()
        yield watermark_event(last_watermark)

  def _room(self):
    """How many more messages may be pulled now (read-ahead bound). At the
    bound it waits until a whole bundle's worth is free (or half the bound),
    not a few messages at a time: small bundles cost the runner per bundle
    what large ones do, and fell behind live traffic."""
    if self.leases.unstored_bytes() >= self.max_in_flight_bytes:
      return 0
    room = min(self.max_messages, self.max_in_flight - self.leases.count())
    return room if room >= min(self.max_messages,
                               max(1, self.max_in_flight // 2)) else 0

  def _pull(self):
    """Up to max_messages as (ReceivedMessage, deliveries so far), or None
    when it did not pull (read-ahead bound reached, Pub/Sub not answering).
    Pulls again while the backlog keeps answering (the emulator returns at
    most 100 per pull), for ~0.1 s at most; counts deliveries once per
    batch. Pulls nothing (waits a little) while ``max_in_flight`` messages
    or ``max_in_flight_bytes`` are pulled and not yet acknowledged."""
    room = self._room()
    if not room:
      time.sleep(0.02)
      return None
    received = self._pull_once(self.pull_timeout, room)
    if received is None:
      return None
    started = time.monotonic()
    while (received and len(received) < room and
           time.monotonic() - started < self.GATHER_SECONDS):
      more = self._pull_once(self.GATHER_SECONDS, room - len(received))
      if not more:
        break
      received.extend(more)
    counts = {}
    if self.attempts is not None and received:
      # Held until it can be recorded (a full disk): these messages are
      # leased already and must be served, not left in flight.
      ids = [r.message.message_id for r in received]
      counts = outages.wait_out(
          'delivery counts in %s' % self.attempts.path,
          lambda: self.attempts.record(ids))
    return [(r, counts.get(r.message.message_id, 1)) for r in received]

  GATHER_SECONDS = 0.1

  def _pull_once(self, timeout, room):
    from google.api_core import exceptions
    try:
      response = self._client.pull(
          subscription=self.subscription, max_messages=min(room, 1000),
          timeout=timeout, retry=None)
    except exceptions.DeadlineExceeded:
      return []  # nothing to pull within the timeout (or Pub/Sub is frozen)
    except exceptions.GoogleAPICallError as e:
      time.sleep(self.reachability.failed('pull', e))
      return None  # not known what is waiting
    self.reachability.answered()
    received = list(type(response).pb(response).received_messages)
    for r in received:
      msg = r.message
      self.leases.add(self.subscription, msg.message_id, r.ack_id,
                      len(msg.data),
                      msg.publish_time.seconds + msg.publish_time.nanos * 1e-9)
    return received

  def _element_events(self, received):
    """[(ReceivedMessage, deliveries)] -> (element event protos, the newest
    message timestamp among them or None)."""
    events, batch, size, newest = [], [], 0, None
    for r, attempts in received:
      message, micros = message_proto(
          r, attempts, self.max_attempts, self.timestamp_attribute)
      if newest is None or micros > newest:
        newest = micros
      cost = len(message.data) + 200
      if batch and size + cost > MAX_EVENT_BYTES:
        events.append(element_event(batch))
        batch, size = [], 0
      batch.append((message, micros))
      size += cost
    if batch:
      events.append(element_event(batch))
    return events, None if newest is None else Timestamp(micros=newest)

  # -- acknowledgements and deadlines ----------------------------------------
  def _keep_leases(self):
    last_extension = time.monotonic()
    wait = 0.1
    while not self._closed.wait(wait):
      # Backs off while Pub/Sub does not answer; the acks are kept.
      wait = 0.1 if self._flush_acks() else min(
          0.25 * 2 ** self.reachability.failures(), 5.0)
      if time.monotonic() - last_extension > ACK_DEADLINE_SECONDS / 3.0:
        last_extension = time.monotonic()
        self._extend_deadlines()

  def _flush_acks(self, timeout=ACK_CALL_SECONDS, final=False):
    """Acknowledges what was stored; what Pub/Sub does not take is tried
    again later. Returns False if Pub/Sub did not answer. Delivery counts of
    stored messages are dropped every FORGET_EVERY_SECONDS (each is a
    DuckDB commit) and at the end."""
    acks = self.leases.take_acks()
    if self.attempts is None:
      self.leases.take_committed_ids()  # nothing to forget: not kept
    elif (
        final or time.monotonic() - self._last_forget >= FORGET_EVERY_SECONDS):
      self._last_forget = time.monotonic()
      try:
        self.attempts.forget(self.leases.take_committed_ids())
      except Exception as e:  # pylint: disable=broad-except
        _LOG.warning('could not forget delivery counts: %s', e)
    answered = True
    for subscription, ack_ids in acks.items():
      for start in range(0, len(ack_ids), 1000):
        chunk = ack_ids[start:start + 1000]
        try:
          if not answered:
            raise _NotTried()
          self._client.acknowledge(subscription=subscription, ack_ids=chunk,
                                   timeout=timeout, retry=None)
          self.reachability.answered()
        except Exception as e:  # pylint: disable=broad-except
          if answered and not isinstance(e, _NotTried):
            self.reachability.failed('acknowledge', e)
          answered = False
          self.leases.requeue_acks(subscription, chunk)
    return answered

  def _extend_deadlines(self):
    self._modify_deadlines(ACK_DEADLINE_SECONDS)

  def _modify_deadlines(self, seconds, timeout=ACK_CALL_SECONDS):
    ack_ids = [ack for _, ack in self.leases.in_flight(self.subscription)]
    for start in range(0, len(ack_ids), 1000):
      try:
        self._client.modify_ack_deadline(
            subscription=self.subscription, ack_ids=ack_ids[start:start + 1000],
            ack_deadline_seconds=seconds, timeout=timeout, retry=None)
        self.reachability.answered()
      except Exception as e:  # pylint: disable=broad-except
        self.reachability.failed('modify_ack_deadline', e)
        return False
    return True

  def status(self):
    """The reader's part of the progress: read-ahead, lag, reachability."""
    return {'in_flight': self.leases.count(),
            'lag_s': round(self.leases.lag_seconds(), 2),
            'pubsub_unreachable_s': self.reachability.down_for()}


class _NotTried(Exception):
  """Pub/Sub did not answer an earlier call of this round."""


class Reachability(object):
  """Whether Pub/Sub answers: backs off while it does not, says so once."""
  def __init__(self, subscription):
    self._subscription = subscription
    self._lock = threading.Lock()
    self._down_since = None
    self._failures = 0

  def failed(self, call, error):
    """Notes a failed call; returns how long to wait before the next."""
    with self._lock:
      self._failures += 1
      if self._down_since is None:
        self._down_since = time.monotonic()
        _LOG.warning('Pub/Sub does not answer (%s %s: %s); waiting for it, '
                     'nothing pulled is lost', call, self._subscription,
                     str(error).splitlines()[0][:200])
      return min(0.25 * 2 ** min(self._failures, 5), 5.0)

  def answered(self):
    with self._lock:
      if self._down_since is not None:
        _LOG.info('Pub/Sub answers again after %.1f s',
                  time.monotonic() - self._down_since)
      self._down_since = None
      self._failures = 0

  def failures(self):
    return min(self._failures, 5)

  def down_for(self):
    with self._lock:
      if self._down_since is None:
        return 0.0
      return round(time.monotonic() - self._down_since, 1)


class PubSubUnavailable(Exception):
  """Pub/Sub did not answer at start-up, or the subscription is missing."""
  def __init__(self, message, missing=False):
    super().__init__(message)
    self.missing = missing


def check_subscription(client, subscription, timeout=START_SECONDS):
  """Waits up to ``timeout`` for Pub/Sub to show the subscription; raises
  PubSubUnavailable (``missing`` when it answers that there is none)."""
  from google.api_core import exceptions
  deadline = time.monotonic() + timeout
  while True:
    try:
      client.get_subscription(subscription=subscription, timeout=2, retry=None)
      return
    except exceptions.NotFound:
      raise PubSubUnavailable('subscription %s does not exist' % subscription,
                              missing=True)
    except exceptions.GoogleAPICallError as e:
      if time.monotonic() > deadline:
        host = os.environ.get('PUBSUB_EMULATOR_HOST', 'pubsub.googleapis.com')
        raise PubSubUnavailable('Pub/Sub at %s did not answer within %.0f s '
                                '(%s)' % (host, timeout, str(e).splitlines()[0][:120]))
      time.sleep(0.5)


def serve(subscription, max_messages=2000, attempts_db=None, max_attempts=5,
          timestamp_attribute=None, max_in_flight=MAX_IN_FLIGHT,
          max_in_flight_bytes=MAX_IN_FLIGHT_BYTES):
  """Starts a pump and Beam's TestStreamService for it, privately (see
  ``PrivateEventService``).

  ``attempts_db`` (the DuckDB warehouse) keeps delivery counts across
  crashes. Raises PubSubUnavailable if Pub/Sub does not show the
  subscription within START_SECONDS. Returns (pump, controller);
  controller.endpoint goes to ``ReadFromPubSubAckOnCommit``. Stop with
  pump.close(); controller.stop().
  """
  pump = PubSubPump(
      subscription, max_messages=max_messages,
      attempts=DeliveryAttempts(attempts_db) if attempts_db else None,
      max_attempts=max_attempts, timestamp_attribute=timestamp_attribute,
      max_in_flight=max_in_flight, max_in_flight_bytes=max_in_flight_bytes)
  pump.start()
  try:
    check_subscription(pump.client, subscription)
  except PubSubUnavailable:
    pump.close(timeout=0.5)
    raise
  controller = PrivateEventService(pump)
  controller.start()
  return pump, controller


class PrivateEventService(TestStreamServiceController):
  """Beam's TestStreamService, private: on a unix socket in a folder only
  this user can enter (mkdtemp: mode 0700, a random name), so no other
  user's process can connect, as any could to a loopback TCP port; and it
  serves one event stream, the runner's (Beam's runner asks once): a later
  client is refused, so none can take messages from the pump."""
  def __init__(self, reader):
    self._folder = tempfile.mkdtemp(prefix='beam-pubsub-reader-')
    super().__init__(reader, endpoint='unix:%s' % os.path.join(
        self._folder, 'events'))
    self._claimed = threading.Lock()

  def Events(self, request, context):  # pylint: disable=invalid-name
    if not self._claimed.acquire(blocking=False):
      _LOG.warning('refused a second client of the reader\'s channel (%s): '
                   'it serves the runner only', context.peer())
      context.abort(grpc.StatusCode.PERMISSION_DENIED,
                    'this channel serves one runner')
    yield from super().Events(request, context)

  def stop(self):
    super().stop()
    shutil.rmtree(self._folder, ignore_errors=True)


class ReadFromPubSubAckOnCommit(beam.PTransform):
  """PubsubMessages from a pump's TestStreamService endpoint (see ``serve``)."""
  def __init__(self, endpoint):
    super().__init__()
    self._endpoint = endpoint

  def expand(self, pbegin):
    return pbegin | 'PulledMessages' >> TestStream(
        coder=PubsubMessageProtoCoder(), output_tags=[None],
        endpoint=self._endpoint)
