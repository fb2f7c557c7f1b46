"""Pub/Sub messages -> rows of any BigQuery schema, or dead letters naming
the reason and the field: the schema-driven counterpart of ParseSignins.

Every message yields exactly one output and the step never raises. Rows
carry ``message_id`` (when the schema has that column) and are stamped with
``event_time_field`` (a TIMESTAMP) or else the publish time.
"""

import datetime
import traceback

import apache_beam as beam
from apache_beam.metrics import Metrics

from transforms import event_time
from transforms import json_rows
from transforms import pubsub_message
from transforms import tally

DEAD_LETTERS = pubsub_message.DEAD_LETTERS
REASONS = (('too_large', 'not_utf8', 'not_json', 'not_object')
           + json_rows.REASONS
           + ('sink_rejected', 'internal_error', 'too_many_attempts',
              'bad_timestamp_attribute'))


class ParseJsonMessageFn(beam.DoFn):
  """One message in, one row (main output) or one dead letter out."""
  def __init__(self, schema, unknown_fields='ignore', event_time_field=None,
               max_message_bytes=pubsub_message.MAX_MESSAGE_BYTES,
               namespace='pubsub_to_bigquery'):
    self._schema = schema
    self._unknown = unknown_fields
    self._event_time_field = event_time_field
    self._max_bytes = max_message_bytes
    self._data_fields = tuple(f for f in schema.fields if f.name != 'message_id')
    self._with_id = 'message_id' in schema.column_names
    self.rows = Metrics.counter(namespace, 'rows')
    self.counters = {r: Metrics.counter(namespace, 'dead_letter_' + r)
                     for r in REASONS}

  def setup(self):
    self._convert = json_rows.RowConverter(self._data_fields, self._unknown)

  def start_bundle(self):
    self._seen = self._rows = 0

  def finish_bundle(self):
    tally.add('messages_in', self._seen)
    self.rows.inc(self._rows)  # per bundle: a counter update costs ~1 us

  def process(self, message, timestamp=beam.DoFn.TimestampParam):
    self._seen += 1
    try:
      payload, checked = pubsub_message.decode_object(message, self._max_bytes)
      row = self._convert(payload)
      if not checked:
        unencodable = json_rows.first_unencodable(row)
        if unencodable is not None:
          raise json_rows.surrogate_refusal(unencodable)
    except pubsub_message.Invalid as e:
      yield self._dead(message, e.reason, e)
      return
    except json_rows.Refused as e:
      yield self._dead(message, e.reason, e, field=e.path)
      return
    except Exception as e:  # pylint: disable=broad-except
      yield self._dead(message, 'internal_error', e, traceback.format_exc())
      return
    if self._with_id:
      row['message_id'] = message.message_id
    self._rows += 1
    when = row.get(self._event_time_field) if self._event_time_field else (
        pubsub_message.publish_time(message))
    if isinstance(when, datetime.datetime):
      yield event_time.stamped(row, when)
    else:  # no event time (a file replay without the field): the input's
      yield beam.window.TimestampedValue(row, timestamp)

  def _dead(self, message, reason, error, stacktrace=None, field=None):
    self.counters[reason].inc()
    letter = pubsub_message.dead_letter(message, reason, error, stacktrace)
    letter['field'] = field
    return beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


class ParseJsonMessages(beam.PTransform):
  """PubsubMessages -> rows (main) and dead letters (``dead_letters``)."""
  def __init__(self, schema, unknown_fields='ignore', event_time_field=None,
               max_message_bytes=pubsub_message.MAX_MESSAGE_BYTES):
    super().__init__()
    self._fn = ParseJsonMessageFn(schema, unknown_fields, event_time_field,
                                  max_message_bytes)

  def expand(self, messages):
    return messages | 'ParseAndValidate' >> beam.ParDo(self._fn).with_outputs(
        DEAD_LETTERS, main='rows')
