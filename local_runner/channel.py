"""The channel from the local reader to Beam's runner: pulled messages as
TestStream events over Beam's TestStreamService, privately.

What crosses the channel is a token per message (``HandOffCoder``): the
runner, in this process, takes the message itself. The service listens on a
unix socket in a folder only this user can enter, and serves one client: the
runner.
"""

import datetime
import logging
import os
import re
import shutil
import tempfile
import threading

import apache_beam as beam
import grpc
from apache_beam import coders
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.test_stream_service import TestStreamServiceController

_LOG = logging.getLogger(__name__)

UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
# A unix socket's path has room for 107 bytes (sun_path) on Linux.
MAX_SOCKET_PATH = 100


class DeliveredMessage(PubsubMessage):
  """A pulled message as the reader delivers it: Pub/Sub's fields exactly as
  published, and beside them what the reader knows of this delivery:
  ``given_up`` ((reason, error) when the reader gives up on it: delivered
  too many times, or a timestamp attribute that is not a timestamp; the
  parse step makes it a dead letter) and ``batch`` (what the runner settles
  it with, ``local_runner.delivery``). Never pickled: it stays in process."""
  def __init__(self, data, attributes, message_id=None, publish_time=None,
               ordering_key='', given_up=None, batch=None):
    super().__init__(data, attributes, message_id, publish_time, ordering_key)
    self.given_up = given_up
    self.batch = batch


class HandOffCoder(coders.Coder):
  """Hands messages from the reader to the runner in this process: what
  crosses the channel is a token, and the runner's decode takes the message
  itself. So nothing of a message is copied, cut or re-encoded on the way,
  whatever its size (Pub/Sub's 10 MB and 100 attributes; Beam's TestStream
  client caps a channel message at 4 MiB), its attributes or its id (a lone
  surrogate cannot be encoded to a proto); and a token reaching another
  process is worth nothing."""
  _lock = threading.Lock()
  _waiting = {}  # token -> message
  _next = [0]

  @classmethod
  def hand_off(cls, messages):
    """Tokens for ``messages`` (one lock for the whole batch)."""
    with cls._lock:
      first = cls._next[0] + 1
      cls._next[0] += len(messages)
      tokens = [b'%d' % n for n in range(first, first + len(messages))]
      cls._waiting.update(zip(tokens, messages))
    return tokens

  def encode(self, message):
    return self.hand_off([message])[0]

  def decode(self, token):
    with self._lock:
      return self._waiting.pop(token)

  def is_deterministic(self):
    return False


def delivered_message(received, attempts=1, max_attempts=None,
                      timestamp_attribute=None):
  """A pulled ReceivedMessage (raw protobuf) -> (DeliveredMessage, its
  timestamp in microseconds). The timestamp is the publish time, or
  ``timestamp_attribute``'s value (``parse_timestamp_attribute``). Raw
  protos, not the client's proto-plus wrappers: those cost 12% of a live
  stream's time (benchmarks/README.md)."""
  msg = received.message
  published = msg.publish_time
  micros = published.seconds * 1000000 + published.nanos // 1000
  attributes = dict(msg.attributes)
  given_up = None
  if max_attempts and attempts > max_attempts:
    given_up = ('too_many_attempts', 'delivered %d times without being '
                'stored; not processed again' % attempts)
  if timestamp_attribute and timestamp_attribute in attributes:
    value = attributes[timestamp_attribute]
    try:
      micros = parse_timestamp_attribute(value)
    except ValueError as e:
      if given_up is None:
        given_up = ('bad_timestamp_attribute', 'attribute %s=%r is not a '
                    'timestamp: %s' % (timestamp_attribute, value[:100], e))
  publish_time = _EPOCH + datetime.timedelta(
      seconds=published.seconds, microseconds=published.nanos // 1000)
  return DeliveredMessage(
      msg.data, attributes, message_id=msg.message_id or None,
      publish_time=publish_time, ordering_key=msg.ordering_key,
      given_up=given_up), micros


_MIN_MICROS = -62135596800 * 10**6  # 0001-01-01T00:00:00Z
_MAX_MICROS = 253402300800 * 10**6 - 1  # 9999-12-31T23:59:59.999999Z
_RFC3339 = re.compile(
    r'(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?'
    r'(?:([Zz])|([+-])(\d{2}):(\d{2}))\Z', re.ASCII)
_MILLIS = re.compile(r'[+-]?\d+\Z', re.ASCII)  # ASCII digits only


def parse_timestamp_attribute(value):
  """A timestamp attribute -> microseconds since the epoch, as Dataflow's
  Pub/Sub read takes it: milliseconds since the epoch, or RFC 3339 with any
  number of fractional digits (those past microseconds are dropped: Beam's
  timestamps hold microseconds; a leap second ``:60`` is the next minute's
  ``:00``, as BigQuery reads it). ValueError for anything else, and for a
  time outside 0001-01-01 .. 9999-12-31 (BigQuery's TIMESTAMP range; a date
  cannot name a window past it)."""
  if _MILLIS.match(value):
    micros = int(value) * 1000
  else:
    m = _RFC3339.match(value)
    if m is None:
      raise ValueError('not milliseconds since the epoch or RFC 3339')
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if second > 60:
      raise ValueError('second %d' % second)
    try:
      day_start = datetime.datetime(year, month, day, tzinfo=UTC)
    except ValueError as e:
      raise ValueError(str(e))
    if hour > 23 or minute > 59:
      raise ValueError('time %02d:%02d' % (hour, minute))
    fraction = (m.group(7) or '')[:6].ljust(6, '0')
    offset = 0
    if m.group(9):
      offset_hours, offset_minutes = int(m.group(10)), int(m.group(11))
      if offset_hours > 23 or offset_minutes > 59:
        raise ValueError('offset %s' % value[-6:])
      offset = (offset_hours * 60 + offset_minutes) * 60
      if m.group(9) == '-':
        offset = -offset
    seconds = (day_start - _EPOCH) // datetime.timedelta(seconds=1) + (
        hour * 3600 + minute * 60 + second - offset)
    micros = seconds * 10**6 + int(fraction)
  if not _MIN_MICROS <= micros <= _MAX_MICROS:
    raise ValueError('outside 0001-01-01 .. 9999-12-31')
  return micros


# Beam 2.77's TestStream events write times to the proto in milliseconds, but
# the local runner reads TestStreamService events as microseconds (a 1000x
# error that leaves the watermark in January 1970, so no window ever fires).
# We build the protos with microseconds, which is what the reader expects.
def element_event(tokens_and_micros):
  """[(hand-off token, timestamp in microseconds)] -> a TestStreamPayload
  element event proto (``HandOffCoder`` gives the runner the messages)."""
  payload = beam_runner_api_pb2.TestStreamPayload
  return payload.Event(element_event=payload.Event.AddElements(
      elements=[payload.TimestampedElement(encoded_element=token,
                                           timestamp=micros)
                for token, micros in tokens_and_micros],
      tag='None'))


def watermark_event(watermark):
  """Timestamp -> a TestStreamPayload watermark event proto."""
  payload = beam_runner_api_pb2.TestStreamPayload
  return payload.Event(watermark_event=payload.Event.AdvanceWatermark(
      new_watermark=watermark.micros, tag='None'))


class PrivateEventService(TestStreamServiceController):
  """Beam's TestStreamService, private: on a unix socket in a folder only
  this user can enter (mkdtemp: mode 0700, a random name), so no other
  user's process can connect, as any could to a loopback TCP port; and it
  serves one event stream, the runner's (Beam's runner asks once): a later
  client is refused, so none can take messages from the pump."""
  def __init__(self, reader):
    self._folder = private_folder()
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


def private_folder():
  """A new folder only this user can enter, for the socket: under TMPDIR,
  or under /tmp when TMPDIR's path leaves a socket's name no room; OSError
  (one line) when neither can hold one."""
  tried = []
  for parent in (None, '/tmp'):
    try:
      folder = tempfile.mkdtemp(prefix='beam-reader-', dir=parent)
    except OSError as e:  # a TMPDIR too long or not writable
      tried.append('%s (%s)' % (parent or tempfile.gettempdir(), e.strerror))
      continue
    if len(os.path.join(folder, 'events')) <= MAX_SOCKET_PATH:
      return folder
    os.rmdir(folder)
    tried.append(os.path.dirname(folder))
  raise OSError('no folder short enough for the reader\'s socket (tried %s)'
                % ', '.join(tried))


class ReadFromPubSubAckOnCommit(beam.PTransform):
  """DeliveredMessages from a pump's TestStreamService endpoint."""
  def __init__(self, endpoint):
    super().__init__()
    self._endpoint = endpoint

  def expand(self, pbegin):
    return pbegin | 'PulledMessages' >> TestStream(
        coder=HandOffCoder(), output_tags=[None],
        endpoint=self._endpoint)
