"""The local reader's puller: one subscriber client for the life of the run
(gRPC receive cap raised, so messages the emulator's default 4 MiB cap
refuses still arrive), pulling up to 2,000 messages at a time within a
read-ahead bound, leasing each delivery until the runner has settled what
it became (``local_runner.delivery``), and acknowledging settled ones in
batches while extending the deadlines of the rest. Anything not settled is
never acknowledged, so Pub/Sub redelivers it after a crash, and the
warehouse's message-id key absorbs the duplicate.

Its ``read_multiple`` is the TestStreamService reader (``channel``).
"""

import logging
import os
import threading
import time

from apache_beam.utils.timestamp import Timestamp

from local_runner import channel
from local_runner import delivery
from storage import outages

_LOG = logging.getLogger(__name__)

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
WATERMARK_EVERY_SECONDS = 0.5
IDLE_SECONDS = 1.0  # pulls empty this long: nothing waiting, watermark = now
HEARTBEAT_SECONDS = 5.0  # the longest the reader stays silent
FORGET_EVERY_SECONDS = 1.0  # delivery counts of stored messages, dropped


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


class PubSubPump(object):
  """Pulls a subscription in large batches and serves them as TestStream events.

  ``read_multiple`` is the TestStreamService reader: a generator of event
  protos that never ends until ``close``. Its watermark follows the messages
  pulled, and is now once nothing waits (``next_watermark``); it speaks at
  least every HEARTBEAT_SECONDS (Beam stops a TestStream silent for 30 s).
  """
  def __init__(self, subscription, leases, max_messages=2000, pull_timeout=1.0,
               attempts=None, max_attempts=5,
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
    self._served = 0

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

  @property
  def served(self):
    """Messages served to the runner so far (this run's messages read)."""
    return self._served

  # -- the TestStreamService reader ------------------------------------------
  def read_multiple(self, unused_keys):
    last_watermark = Timestamp.of(0)
    empty_since = None  # when the pulls began to come back empty
    last_event_at = time.monotonic()
    while not self._closed.is_set():
      received = None
      try:
        pulled_at = time.monotonic()
        received = self._pull() if self._pulling.is_set() else None
        events, newest = self._element_events(received or [])
      except Exception:  # pylint: disable=broad-except
        # An exception here would end Beam's TestStream, and the stream with
        # it. What was pulled is released, not acknowledged: Pub/Sub
        # redelivers it at its deadline.
        if received:
          self._release([r for r, _ in received])
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
        yield channel.watermark_event(last_watermark)

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
    try:
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
    except BaseException:
      self._release(received)
      raise

  def _release(self, received):
    """Leases of messages that will not be served: dropped, not
    acknowledged, so Pub/Sub redelivers them at their deadline."""
    self.leases.release([r.ack_id for r in received])

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
      # Everything the message carries (data and attributes), as Pub/Sub
      # counts a message's size.
      self.leases.add(self.subscription, r.ack_id, msg.message_id,
                      msg.ByteSize(),
                      msg.publish_time.seconds + msg.publish_time.nanos * 1e-9)
    return received

  def _element_events(self, received):
    """[(ReceivedMessage, deliveries)] -> (the element event proto serving
    them as one batch, the newest message timestamp among them); ([], None)
    for none. A message's ``given_up`` says why the reader gave up on it
    (``channel.delivered_message``); it is served all the same, for the
    parse step to dead-letter, and settled as any other."""
    if not received:
      return [], None
    ack_ids = [r.ack_id for r, _ in received]
    leases = self.leases
    batch = delivery.Batch(lambda: leases.settled(ack_ids))
    messages, times = [], []
    for r, attempts in received:
      message, micros = channel.delivered_message(
          r, attempts, self.max_attempts, self.timestamp_attribute)
      message.batch = batch
      messages.append(message)
      times.append(micros)
    tokens = channel.HandOffCoder.hand_off(messages)
    self._served += len(messages)
    return ([channel.element_event(zip(tokens, times))],
            Timestamp(micros=max(times)))

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
      self.leases.take_settled_ids()  # nothing to forget: not kept
    elif (
        final or time.monotonic() - self._last_forget >= FORGET_EVERY_SECONDS):
      self._last_forget = time.monotonic()
      try:
        self.attempts.forget(
            self.leases.take_settled_ids().get(self.subscription, []))
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
    ack_ids = self.leases.in_flight(self.subscription)
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
