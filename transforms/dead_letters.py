"""The one dead-letter shape every message pipeline of ours writes, and the
parse step's frame that guarantees it: each message in yields exactly one
row or one dead letter, and the step never raises.

A dead letter keeps the raw payload (a prefix when too large), the
attributes, the message id, a stable ``reason`` and the error: Google's
Pub/Sub-to-BigQuery template's error records, plus ``reason``.
"""

import copy
import datetime
import json
import typing

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Timestamp

from transforms import exact_json

DEAD_LETTERS = 'dead_letters'  # the parse steps' tagged output
MAX_MESSAGE_BYTES = 1 << 20
PAYLOAD_PREFIX_BYTES = 1024  # what a too_large dead letter keeps
# The most payload any dead letter keeps: with its text form (JSON-escaped,
# up to 6 bytes a byte) and base64 copy it stays under BigQuery's 10 MB row
# (Beam's streaming inserts refuse rows of 9 MiB), so the dead-letter table
# never refuses a dead letter for its size.
MAX_DEAD_LETTER_PAYLOAD_BYTES = 1 << 20
UTC = datetime.timezone.utc

# Why any message may fail, before and after its shape is known.
MESSAGE_REASONS = ('too_large', 'not_utf8', 'not_json', 'not_object')
PIPELINE_REASONS = ('sink_rejected', 'internal_error', 'too_many_attempts',
                    'bad_timestamp_attribute')

# A row or a dead letter: a dict by column name. Typed as a Mapping, which
# Beam encodes as it does untyped elements (FastPrimitivesCoder), so typing
# the graph changed no coder of a running job.
Row = typing.Mapping[str, typing.Any]


def reasons(*specific):
  """Every reason a parse step with these ``specific`` reasons can give."""
  return MESSAGE_REASONS + tuple(specific) + PIPELINE_REASONS


class Invalid(Exception):
  """A message that cannot become a row: ``reason`` is a stable code."""
  def __init__(self, reason, message):
    super().__init__(message)
    self.reason = reason


def clip(text, limit=100):
  """Text for an error message: at most ``limit`` characters, printable."""
  return exact_json.printable(
      text if len(text) <= limit else text[:limit] + '...')


def json_kind(value):
  """What a JSON value is, for an error message."""
  if type(value) is exact_json.Number:  # pylint: disable=unidiomatic-typecheck
    return 'the number %s' % clip(str(value), 40)
  return {dict: 'an object', list: 'an array', bool: 'a boolean',
          float: 'a number'}.get(type(value), type(value).__name__)


def check_given_up(message):
  """A reader may deliver a message with ``given_up = (reason, error)``
  beside it (not in it): it gave up on it (delivered more than
  --max_delivery_attempts times without being stored, or a
  --timestamp_attribute that is not a timestamp). Such a message is that
  dead letter, its payload and attributes as published."""
  given_up = getattr(message, 'given_up', None)
  if given_up is not None:
    raise Invalid(*given_up)


def decode_object(message, max_bytes=MAX_MESSAGE_BYTES):
  """PubsubMessage -> (its JSON object, strings_checked); raises Invalid
  (too_large, not_utf8, not_json, not_object, or why a reader gave it up).
  Numbers keep their text (``exact_json``); ``strings_checked`` is False
  when a string may hold a lone surrogate. Any message pipeline's first step."""
  check_given_up(message)
  data = message.data or b''
  if len(data) > max_bytes:
    raise Invalid('too_large', 'payload is %d bytes, over the limit of %d'
                  % (len(data), max_bytes))
  try:
    payload, checked = exact_json.loads(data)
  except exact_json.NotUtf8 as e:
    raise Invalid('not_utf8', str(e))
  except exact_json.NotJson as e:
    raise Invalid('not_json', str(e))
  if type(payload) is not dict:  # pylint: disable=unidiomatic-typecheck
    raise Invalid('not_object', 'payload is JSON %s, not an object'
                  % json_kind(payload).split(' ')[-1])
  return payload, checked


def stored_id(message_id):
  """A message id as every table stores it: any string an archive or a
  file may hold, lone surrogates escaped (``\\ud800``), the same way every
  time, so that a replay still finds it stored. An id that is not text (a
  hostile archive's number) is stored as its text."""
  if message_id is not None and type(message_id) is not str:  # pylint: disable=unidiomatic-typecheck
    message_id = str(message_id)
  return message_id and exact_json.printable(message_id)


def publish_time(message):
  """The message's publish time as an aware UTC datetime (None for files)."""
  published = getattr(message, 'publish_time', None)
  if published is None:
    return None
  if isinstance(published, Timestamp):
    return published.to_utc_datetime(has_tz=True)
  if published.tzinfo is None:
    return published.replace(tzinfo=UTC)
  return published.astimezone(UTC)


def attribute_list(attributes):
  """{'k': 'v'} -> [{'key': 'k', 'value': 'v'}], BigQuery's REPEATED RECORD form."""
  printable = exact_json.printable
  return [{'key': printable(str(k)),
           'value': None if v is None else printable(str(v))}
          for k, v in sorted((attributes or {}).items())]


def dead_letter(message, reason, error, stacktrace=None,
                now=None) -> typing.Dict[str, typing.Any]:
  """The dead-letter row for a message: the raw payload kept (a prefix if
  too_large; the first MAX_DEAD_LETTER_PAYLOAD_BYTES of a larger one, said
  in the error)."""
  data = message.data or b''
  if reason == 'too_large':
    data = data[:PAYLOAD_PREFIX_BYTES]
  elif len(data) > MAX_DEAD_LETTER_PAYLOAD_BYTES:
    error = '%s (this dead letter keeps the first %d of the payload\'s %d ' \
        'bytes)' % (error, MAX_DEAD_LETTER_PAYLOAD_BYTES, len(data))
    data = data[:MAX_DEAD_LETTER_PAYLOAD_BYTES]
  return {
      'timestamp': now or datetime.datetime.now(UTC),
      'payloadString': data.decode('utf-8', errors='replace'),
      'payloadBytes': bytes(data),
      'attributes': attribute_list(message.attributes),
      'errorMessage': exact_json.printable(str(error)),
      'stacktrace': stacktrace and exact_json.printable(stacktrace),
      'message_id': stored_id(message.message_id),
      'reason': reason,
  }


def refused_row_dead_letter(
    refused: typing.Tuple[Row, str]) -> typing.Dict[str, typing.Any]:
  """(row, error) refused by the warehouse -> a sink_rejected dead letter."""
  row, error = refused
  payload = json.dumps(row, default=str, sort_keys=True).encode('utf-8')
  message = PubsubMessage(payload, {}, message_id=row.get('message_id'))
  return dead_letter(message, 'sink_rejected', error)


class ParseMessageFn(beam.DoFn):
  """The frame of a parse step: counts (Beam metrics, per bundle) the
  messages read, rows, dead letters by reason, and the messages a UDF
  dropped.
  A subclass's ``process`` yields a row, or ``self.dead(...)``; a row
  stamped with its event time unless ``stamp_rows`` is False (blocks of
  rows, which nothing windows). ``global_window``: the input is in the
  global window (``ParseMessages`` sets it), so a row's stamp is the
  WindowedValue Beam would make of it (``event_time.stamper``). Both are
  read in ``setup``."""
  stamp_rows = True
  global_window = False

  def __init__(self, namespace, reasons_):
    self.messages = Metrics.counter(namespace, 'messages')
    self.rows = Metrics.counter(namespace, 'rows')
    self.dropped = Metrics.counter(namespace, 'dropped')  # by a UDF
    self.counters = {r: Metrics.counter(namespace, 'dead_letter_' + r)
                     for r in reasons_}

  def setup(self):
    self._seen = self._rows = self._dropped = 0

  def start_bundle(self):
    self._seen = self._rows = self._dropped = 0

  def finish_bundle(self):
    self.messages.inc(self._seen)  # a counter update costs ~0.5 us
    self.rows.inc(self._rows)
    if self._dropped:
      self.dropped.inc(self._dropped)

  def outputs(self, message, timestamp):
    """``process``'s outputs for one message, as a sequence (a block's
    parse calls this); a subclass may give them without a generator."""
    return list(self.process(message, timestamp))

  def dead(self, message, reason, error, stacktrace=None, **extra):
    """The dead letter of ``message``, on the DEAD_LETTERS output."""
    self.counters[reason].inc()
    letter = dead_letter(message, reason, error, stacktrace)
    letter.update(extra)
    return beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)


class ParseMessages(beam.PTransform):
  """PubsubMessages -> rows (``rows``) and dead letters (``dead_letters``)
  through one ParseMessageFn; with ``blocks``, MessageBlocks -> RowBlocks
  (``transforms.blocks``: a bounded replay's)."""
  def __init__(self, fn: ParseMessageFn, blocks=False):
    super().__init__()
    self._fn = fn
    self._blocks = blocks
    if not blocks:
      self.with_input_types(PubsubMessage)

  def expand(self, messages):
    fn = self._fn
    if self._blocks:
      from transforms import blocks
      fn = blocks.ParseBlocksFn(fn)
    else:  # a copy: one transform may be applied to several inputs
      fn = copy.copy(fn)
      fn.global_window = isinstance(messages.windowing.windowfn,
                                    beam.window.GlobalWindows)
    return messages | 'ParseAndValidate' >> beam.ParDo(fn).with_outputs(
        DEAD_LETTERS, main='rows')
