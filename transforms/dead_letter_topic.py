"""Dead letters also published to a Pub/Sub topic (``--dead_letter_topic``),
for alerting and for other consumers: a table is hard to alert on, and
BigQuery's row metrics lag by hours.

Each is published with the original payload (a prefix for too_large) and
attributes ``dead_letter_reason``, ``dead_letter_field`` (when known),
``original_message_id`` and ``error_message`` (at most 1,000 characters).
The step passes a bundle's dead letters on only once Pub/Sub has accepted
them all, so the dead-letter table (and, locally, the acknowledgement of
the message) comes after the topic. A crash between the two publishes a
dead letter again when its message is redelivered: at least once on the
topic, ``original_message_id`` to tell.
"""

import logging

import apache_beam as beam

from storage import outages

_LOG = logging.getLogger(__name__)
ERROR_CHARS = 1000  # Pub/Sub attribute values stop at 1,024 bytes


def attributes(letter):
  """A dead letter's attributes on the topic."""
  out = {'dead_letter_reason': letter.get('reason') or '',
         'original_message_id': (letter.get('message_id') or '')[:ERROR_CHARS],
         'error_message': (letter.get('errorMessage') or '')[:ERROR_CHARS]}
  if letter.get('field'):
    out['dead_letter_field'] = letter['field'][:ERROR_CHARS]
  # Byte limits: a character is up to 4 bytes in UTF-8.
  return {k: v.encode('utf-8', 'replace')[:1024].decode('utf-8', 'ignore')
          for k, v in out.items()}


class _PublishFn(beam.DoFn):
  def __init__(self, topic):
    self._topic = topic

  def setup(self):
    from google.cloud import pubsub_v1
    self._client = pubsub_v1.PublisherClient()

  def start_bundle(self):
    self._buffer = []

  def process(self, letter, element=beam.DoFn.WindowedValueParam):
    self._buffer.append(element)

  def finish_bundle(self):
    buffered, self._buffer = self._buffer, []
    if buffered:
      outages.wait_out('Pub/Sub topic %s' % self._topic,
                       lambda: self._publish(buffered), max_delay=5.0)
    yield from buffered

  def _publish(self, buffered):
    from google.api_core import exceptions
    futures = [self._client.publish(
        self._topic, wv.value.get('payloadBytes') or b'',
        **attributes(wv.value)) for wv in buffered]
    try:
      for future in futures:
        future.result(timeout=60)
    except (exceptions.GoogleAPICallError, TimeoutError) as e:
      # Pub/Sub down or slow: an outage, waited out; the bundle is published
      # again whole (those already accepted twice: at least once).
      raise OSError('publishing dead letters: %s' % str(e).splitlines()[0])

  def teardown(self):
    client = getattr(self, '_client', None)
    if client is not None:
      client.stop()


class PublishDeadLetters(beam.PTransform):
  """Dead letters -> the same dead letters, once ``topic`` has them."""
  def __init__(self, topic):
    super().__init__()
    self._topic = topic

  def expand(self, dead):
    return dead | 'PublishToTopic' >> beam.ParDo(_PublishFn(self._topic))
