"""The channel from the local reader to Beam's runner: pulled messages as
TestStream events over Beam's TestStreamService, privately.

Each message travels as Pub/Sub's own message proto (an encoding that cannot
run code, unlike pickles), on a unix socket in a folder only this user can
enter, served to one client: the runner.
"""

import datetime
import logging
import os
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
from apache_beam.utils.timestamp import Timestamp

from transforms import dead_letters

_LOG = logging.getLogger(__name__)

MAX_EVENT_BYTES = 3 << 20  # Beam's TestStream client keeps gRPC's 4 MiB cap
MAX_PAYLOAD_BYTES = 2 << 20  # longer payloads travel cut to this + 1 byte
ORIGINAL_SIZE_ATTRIBUTE = 'x-original-size'
UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


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
        message_id=message.message_id or '',
        ordering_key=getattr(message, 'ordering_key', None) or '')
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
                         publish_time=publish_time,
                         ordering_key=proto.ordering_key)

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
    changes[dead_letters.TOO_MANY_ATTEMPTS_ATTRIBUTE] = str(attempts)
  if timestamp_attribute and timestamp_attribute in attributes:
    try:
      micros = parse_timestamp_attribute(
          attributes[timestamp_attribute]).micros
    except ValueError as e:
      changes[dead_letters.BAD_TIMESTAMP_ATTRIBUTE] = (
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
