"""Pub/Sub messages -> rows of any BigQuery schema, or dead letters naming
the reason and the field: the schema-driven counterpart of ParseSignins.

Every message yields exactly one output and the step never raises. Rows
carry ``message_id`` (when the schema has that column) and are stamped with
``event_time_field`` (a TIMESTAMP) or else the publish time.
"""

import datetime
import traceback
from typing import Iterable

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import dead_letters
from transforms import event_time
from transforms import json_rows
from transforms import udf

DEAD_LETTERS = dead_letters.DEAD_LETTERS
REASONS = dead_letters.reasons(*json_rows.REASONS, 'udf_error')


class ParseJsonMessageFn(dead_letters.ParseMessageFn):
  """One message in, one row (main output) or one dead letter out."""
  def __init__(self, schema, unknown_fields='ignore', event_time_field=None,
               max_message_bytes=dead_letters.MAX_MESSAGE_BYTES,
               namespace='pubsub_to_bigquery', udf=None):
    super().__init__(namespace, REASONS)
    self._udf = udf
    self._schema = schema
    self._unknown = unknown_fields
    self._event_time_field = event_time_field
    self._max_bytes = max_message_bytes
    self._data_fields = tuple(f for f in schema.fields if f.name != 'message_id')
    self._with_id = 'message_id' in schema.column_names

  def setup(self):
    super().setup()
    self._convert = json_rows.RowConverter(self._data_fields, self._unknown)
    self._udf_function = self._udf.function() if self._udf else None

  def process(self, message: PubsubMessage,
              timestamp=beam.DoFn.TimestampParam) -> Iterable[dead_letters.Row]:
    if self._udf_function is not None:
      self._seen += 1
      yield from self._through_udf(message, timestamp)
      return
    yield self._one(message, timestamp)

  def outputs(self, message, timestamp):
    """``process``'s outputs for one message, as a sequence (a block's
    parse calls this: no generator per message)."""
    if self._udf_function is not None:
      self._seen += 1
      return list(self._through_udf(message, timestamp))
    return (self._one(message, timestamp),)

  def _one(self, message, timestamp):
    """The row or the dead letter of one message (no UDF: exactly one)."""
    self._seen += 1
    try:
      payload, checked = dead_letters.decode_object(message, self._max_bytes)
      row = self._row(payload, checked)
    except Exception as e:  # pylint: disable=broad-except
      return self._dead_for(message, e)
    if self._with_id:
      row['message_id'] = dead_letters.stored_id(message.message_id)
    self._rows += 1
    return self._stamped(row, message, timestamp)

  def _row(self, obj, checked):
    """A JSON object -> its row; Refused names the field (a lone surrogate
    too, where the parse could not check the strings)."""
    row = self._convert(obj)
    if not checked:
      unencodable = json_rows.first_unencodable(row)
      if unencodable is not None:
        raise json_rows.surrogate_refusal(unencodable)
    return row

  def _dead_for(self, message, error):
    """The dead letter for what reading ``message`` raised (called in the
    ``except`` block: an unexpected error keeps its stack trace)."""
    if isinstance(error, dead_letters.Invalid):
      return self.dead(message, error.reason, error, field=None)
    if isinstance(error, json_rows.Refused):
      return self.dead(message, error.reason, error, field=error.path)
    return self.dead(message, 'internal_error', error, traceback.format_exc(),
                     field=None)

  def _stamped(self, row, message, timestamp):
    if not self.stamp_rows:
      return row
    when = row.get(self._event_time_field) if self._event_time_field else (
        dead_letters.publish_time(message))
    if isinstance(when, datetime.datetime):
      return event_time.stamped(row, when)
    # No event time (a file replay without the field): the input's.
    return beam.window.TimestampedValue(row, timestamp)

  def _through_udf(self, message, timestamp):
    """The UDF's objects (none: dropped) as rows, all or none of them: one
    refused object makes the message a dead letter. Several rows of one
    message have ids ``ID#0``, ``ID#1``, ... (stable: replays add nothing)."""
    try:
      payload, checked = dead_letters.decode_object(message, self._max_bytes)
    except Exception as e:  # pylint: disable=broad-except
      yield self._dead_for(message, e)
      return
    try:
      objects = udf.objects(self._udf_function(payload))
    except Exception as e:  # pylint: disable=broad-except
      yield self.dead(message, 'udf_error', '%s: %s' % (type(e).__name__, e),
                      traceback.format_exc(), field=None)
      return
    if not objects:
      self._dropped += 1
      return
    try:
      rows = [self._row(obj, checked) for obj in objects]
    except Exception as e:  # pylint: disable=broad-except
      yield self._dead_for(message, e)
      return
    for i, row in enumerate(rows):
      if self._with_id:
        message_id = dead_letters.stored_id(message.message_id)
        row['message_id'] = message_id if len(rows) == 1 else (
            '%s#%d' % (message_id, i))
      self._rows += 1
      yield self._stamped(row, message, timestamp)


class ParseJsonMessages(dead_letters.ParseMessages):
  """PubsubMessages -> rows (main) and dead letters (``dead_letters``).
  ``blocks``: MessageBlocks in, RowBlocks out (a bounded replay)."""
  def __init__(self, schema, unknown_fields='ignore', event_time_field=None,
               max_message_bytes=dead_letters.MAX_MESSAGE_BYTES, udf=None,
               blocks=False):
    super().__init__(ParseJsonMessageFn(
        schema, unknown_fields, event_time_field, max_message_bytes,
        udf=udf), blocks=blocks)
