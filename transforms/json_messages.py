"""Pub/Sub messages -> rows of any BigQuery schema, or dead letters naming
the reason and the field: the schema-driven counterpart of ParseSignins.

Every message yields exactly one output and the step never raises. Rows
carry ``message_id`` (when the schema has that column) and are stamped with
``event_time_field`` (a TIMESTAMP) or else the publish time. A UDF runs in a
worker process, each call bounded by ``udf_timeout_seconds`` (``udf.Calls``;
default ``udf.DEFAULT_TIMEOUT_SECONDS``, wherever this parse is used): one
request per message, or per block of a replay.
"""

import datetime
import itertools
import traceback
from typing import Iterable

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import blocks as blocks_lib
from transforms import compiled_columns
from transforms import compiled_rows
from transforms import dead_letters
from transforms import event_time
from transforms import exact_json
from transforms import json_rows
from transforms import payloads as payloads_lib
from transforms import udf

DEAD_LETTERS = dead_letters.DEAD_LETTERS
REASONS = dead_letters.reasons(*json_rows.REASONS, 'udf_error', 'udf_timeout',
                               *payloads_lib.REASONS)
# What --write_metadata adds, named and typed as a BigQuery subscription
# writes them (https://cloud.google.com/pubsub/docs/create-bigquery-subscription):
# message_id is the pipeline's own key column already.
METADATA_FIELDS = (
    ('subscription_name', 'STRING', 'The subscription the message was read '
     'from (null for a file replay).'),
    ('publish_time', 'TIMESTAMP', 'When Pub/Sub accepted the message (null '
     'for a JSON-lines replay).'),
    ('attributes', 'JSON', 'The message\'s attributes as a JSON object, with '
     'its ordering_key when it has one.'),
)
METADATA_COLUMNS = frozenset(n for n, _, _ in METADATA_FIELDS)


class ParseJsonMessageFn(dead_letters.ParseMessageFn):
  """One message in, one row (main output) or one dead letter out."""
  def __init__(self, schema, unknown_fields='ignore', event_time_field=None,
               max_message_bytes=dead_letters.MAX_MESSAGE_BYTES,
               namespace='pubsub_to_bigquery', udf=None,
               udf_timeout_seconds=None, payloads=None, metadata=None):
    super().__init__(namespace, REASONS)
    # How payloads decode (JSON by default); ``metadata``: the subscription
    # name, to write the metadata columns (--write_metadata), else None.
    self._payloads = payloads or payloads_lib.JsonPayloads()
    self._metadata = metadata
    self._udf = udf
    self._udf_timeout = udf_timeout_seconds  # None: the default
    self._schema = schema
    self._unknown = unknown_fields
    self._event_time_field = event_time_field
    self._max_bytes = max_message_bytes
    skip = {'message_id'} | (set(METADATA_COLUMNS) if metadata is not None
                             else set())
    self._data_fields = tuple(f for f in schema.fields if f.name not in skip)
    self._with_id = 'message_id' in schema.column_names

  def setup(self):
    super().setup()
    self._convert = json_rows.RowConverter(self._data_fields, self._unknown)
    # The common JSON message in one C call; the rest on the exact path.
    compiled = compiled_rows.compile_fields(self._data_fields) if (
        self._payloads.format == 'json') else None
    self._compiled = compiled and compiled.rows
    self._stamp = event_time.stamper(self.global_window)
    # A stream's common message, row to stamped output, in one generated
    # call (not with the metadata columns, which read the message further).
    # ``stamp_rows`` is read here: a block's parse turns it off before.
    self._message_outputs = compiled.message_outputs(
        self._max_bytes, self._with_id, self._event_time_field,
        self._stamped if self.stamp_rows else None, self.global_window) if (
            compiled is not None and self._metadata is None and
            self._udf is None) else None
    # The UDF's calls, in worker processes started at the first call.
    self._udf_calls = udf.Calls(self._udf, self._udf_timeout) if (
        self._udf) else None

  def process(self, message: PubsubMessage,
              timestamp=beam.DoFn.TimestampParam) -> Iterable[dead_letters.Row]:
    """A sequence of outputs (not a generator: ~0.3 us less a message)."""
    fast = self._message_outputs  # the common message (``_one``, inline)
    if fast is not None:
      try:
        output = fast(message, timestamp)  # never None
      except Exception:  # pylint: disable=broad-except
        output = None  # the exact path decides (outside this handler, so
        # that its dead letter's stack trace is its own), and names the reason
      self._seen += 1
      if output is not None:
        self._rows += 1
        return (output,)
      return (self._exact_one(message, timestamp),)
    if self._udf_calls is not None:
      return self._through_udf(message, timestamp)
    return (self._one(message, timestamp),)

  def outputs(self, message, timestamp):
    """``process``'s outputs for one message, as a sequence (a block's
    parse calls this: no generator per message)."""
    if self._udf_calls is not None:
      return self._through_udf(message, timestamp)
    return (self._one(message, timestamp),)

  @property
  def has_udf(self):
    return self._udf is not None

  def compile_columns(self):
    """The columnar parse of a block (``column_outputs``), or None when
    this step's rows need more than the payload and the id: a UDF, another
    payload format, the metadata columns."""
    if (self._udf is not None or self._payloads.format != 'json' or
        self._metadata is not None or self._compiled is None):
      return None
    return compiled_columns.compile_columns(self._data_fields)

  def column_outputs(self, block, timestamp, compiled):
    """A read block's outputs (a MessageBlock's or a LazyBlock's) with its
    rows as one ColumnBlock (with ``compiled``, this step's
    ``compile_columns()``): the payloads ``compiled`` takes become Arrow
    columns, the rest take the exact path (each a row or a dead letter),
    and the rows are in message order. The same rows and dead letters as
    ``outputs`` message by message. A LazyBlock's messages are made only
    for the exact path (or a refused row's dead letter)."""
    decode = compiled.decode
    lazy = isinstance(block, blocks_lib.LazyBlock)  # read, never given up
    datas = block.datas if lazy else [m.data for m in block]
    structs = None
    if (set(map(type, datas)) == {bytes} and
        max(map(len, datas), default=0) <= self._max_bytes and (lazy or (
            not any(map(getattr, block, itertools.repeat('given_up'),
                        itertools.repeat(None)))))):
      try:  # the common block: every payload in one pass
        structs = list(map(decode, datas))
        taken, left = list(range(len(datas))), []
      except Exception:  # pylint: disable=broad-except
        pass  # one by one, to find which are taken
    if structs is None:
      structs, taken, left = self._decoded(blocks_lib.messages_of(block),
                                           decode)
    arrays = None
    if structs:
      try:
        arrays = compiled.columns(structs)
      except Exception:  # pylint: disable=broad-except
        # A value the readers leave (a seventh digit, a lone surrogate in a
        # raw value): the row path finds whose; those take the exact path.
        kept = []
        for k, i in enumerate(taken):
          try:
            self._compiled(datas[i])
            kept.append(k)
          except Exception:  # pylint: disable=broad-except
            left.append(i)
        structs, taken = [structs[k] for k in kept], [taken[k] for k in kept]
        left.sort()
        try:
          arrays = compiled.columns(structs) if structs else None
        except Exception:  # pylint: disable=broad-except
          return self._rows_of_block(block, timestamp, {})
    messages = blocks_lib.messages_of(block) if left else None
    outs = [(i, self._one(messages[i], timestamp)) for i in left]
    dead = [out for _, out in outs if type(out) is beam.pvalue.TaggedOutput]  # pylint: disable=unidiomatic-typecheck
    exact = [(i, out) for i, out in outs
             if type(out) is not beam.pvalue.TaggedOutput]  # pylint: disable=unidiomatic-typecheck
    try:
      table = self._table(block, taken, arrays, compiled.fields, exact)
    except Exception:  # pylint: disable=broad-except
      return self._rows_of_block(block, timestamp, dict(outs))
    self._seen += len(taken)
    self._rows += len(taken)
    if table is None:
      return dead
    at = None
    if len(taken) != len(datas):
      at = sorted(taken + [i for i, _ in exact]) if exact else taken
    dead.append(blocks_lib.ColumnBlock(table, block, at, self.rows_again))
    return dead

  def _decoded(self, block, decode):
    """(the structs ``decode`` makes of a block's payloads, their positions
    in the block, the positions of the messages left to the exact path)."""
    max_bytes = self._max_bytes
    structs, taken, left = [], [], []
    for i, message in enumerate(block):
      data = message.data
      if (type(data) is bytes and len(data) <= max_bytes  # pylint: disable=unidiomatic-typecheck
          and getattr(message, 'given_up', None) is None):
        try:
          structs.append(decode(data))
          taken.append(i)
          continue
        except Exception:  # pylint: disable=broad-except
          pass  # the exact path decides, and names the reason
      left.append(i)
    return structs, taken, left

  def _table(self, block, taken, arrays, fields, exact):
    """The Arrow table of a block's rows in message order: the columnar
    parse's (``arrays`` of ``fields`` for the messages at ``taken``) and
    the exact path's ([(position, row)]); None when there are none."""
    import pyarrow as pa
    schema = self._schema
    parts = []
    if arrays is not None:
      by_name = dict(zip((f.name for f in fields), arrays))
      if self._with_id:
        by_name['message_id'] = _stored_ids(block, taken)
      parts.append(pa.Table.from_arrays(
          [by_name[f.name] for f in schema.fields],
          schema=schema.arrow_schema()))
    if exact:
      parts.append(schema.to_arrow_table([row for _, row in exact]))
    if not parts:
      return None
    if len(parts) == 1:
      return parts[0]
    positions = taken + [i for i, _ in exact]
    return pa.concat_tables(parts).take(
        sorted(range(len(positions)), key=positions.__getitem__))

  def _rows_of_block(self, block, timestamp, done):
    """A block's outputs as rows (a RowBlock), as ``outputs`` gives them,
    for a block whose rows Arrow did not take as columns; ``done``: the
    outputs given already, by position (counted: not given again)."""
    return list(blocks_lib.gathered((
        (done[i],) if i in done else self.outputs(message, timestamp)
        for i, message in enumerate(blocks_lib.messages_of(block))),
                                    blocks_lib.held_bytes(block)))

  def rows_again(self, messages):
    """The rows of messages the columnar parse took, as the row path gives
    them (for a refused row's dead letter), uncounted."""
    seen, rows = self._seen, self._rows
    try:
      return [self._one(message, None) for message in messages]
    finally:
      self._seen, self._rows = seen, rows

  def _one(self, message, timestamp):
    """The row or the dead letter of one message (no UDF: exactly one)."""
    self._seen += 1
    fast = self._message_outputs
    if fast is not None:
      try:
        output = fast(message, timestamp)
        self._rows += 1
        return output
      except Exception:  # pylint: disable=broad-except
        pass  # the exact path decides, and names the reason
    return self._exact_one(message, timestamp)

  def _exact_one(self, message, timestamp):
    """``_one`` once the one-call path left the message (counted seen):
    the compiled row (with the metadata columns), or the exact path."""
    row = None
    if self._message_outputs is None and self._compiled is not None:
      data = message.data
      if (type(data) is bytes and len(data) <= self._max_bytes  # pylint: disable=unidiomatic-typecheck
          and getattr(message, 'given_up', None) is None):
        try:
          row = self._compiled(data)
        except Exception:  # pylint: disable=broad-except
          pass  # the exact path decides, and names the reason
    try:
      if row is None:
        payload, checked = self._payloads.decode(message, self._max_bytes)
        row = self._row(payload, checked)
      if self._metadata is not None:
        self._add_metadata(row, message)
    except Exception as e:  # pylint: disable=broad-except
      return self._dead_for(message, e)
    if self._with_id:
      message_id = message.message_id
      row['message_id'] = message_id if type(message_id) is str and (  # pylint: disable=unidiomatic-typecheck
          message_id.isascii()) else dead_letters.stored_id(message_id)
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

  def _add_metadata(self, row, message):
    """The metadata columns of --write_metadata (Refused when the attributes
    are not Unicode text, as only a hostile replay file's can be)."""
    attributes = dict(message.attributes or {})
    ordering_key = getattr(message, 'ordering_key', None)
    if ordering_key:
      attributes['ordering_key'] = ordering_key
    row['subscription_name'] = self._metadata or None
    row['publish_time'] = dead_letters.publish_time(message)
    row['attributes'] = _JSON(attributes, 'attributes')

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
      return self._stamp(row, when)
    # No event time (a file replay without the field): the input's.
    return beam.window.TimestampedValue(row, timestamp)

  def _through_udf(self, message, timestamp):
    """One message's outputs through the UDF (its worker released)."""
    for outputs in self.udf_outputs((message,), timestamp):
      pass
    return outputs

  def udf_outputs(self, messages, timestamp):
    """Each message's outputs through the UDF, a list each, in order, as
    its call ends (the messages' UDF calls are one request to a worker).
    The UDF's objects (none: dropped) become rows, all or none of them: one
    refused object makes the message a dead letter. Several rows of one
    message have ids ``ID#0``, ``ID#1``, ... (stable: replays add nothing).
    A call that raised, ended its process or ran over the time limit is a
    ``udf_error`` or ``udf_timeout`` dead letter."""
    sent, datas = [], []  # (message, its dead letter before the UDF)
    for message in messages:
      self._seen += 1
      data = message.data or b''
      if getattr(message, 'given_up', None) is not None or (
          len(data) > self._max_bytes):
        sent.append((message, self._undecodable(message)))
        continue
      if self._payloads.format != 'json':
        try:  # the UDF takes the decoded message as JSON
          obj, checked = self._payloads.decode(message, self._max_bytes)
          if not checked:  # a lone surrogate: named, as without a UDF
            unencodable = json_rows.first_unencodable(obj)
            if unencodable is not None:
              raise json_rows.surrogate_refusal(unencodable)
          data = exact_json.dumps(payloads_lib.json_object(obj)).encode(
              'utf-8')
        except Exception as e:  # pylint: disable=broad-except
          sent.append((message, self._dead_for(message, e)))
          continue
      sent.append((message, None))
      datas.append(data)  # the worker parses it: bytes cross the pipe
    outcomes = self._udf_calls.outcomes(datas) if datas else iter(())
    for message, dead in sent:
      if dead is not None:
        yield [dead]
        continue
      outcome = next(outcomes)
      kind = outcome[0]
      if kind == 'ok':
        yield self._udf_rows(message, timestamp, outcome[1], outcome[2])
      elif kind == 'undecodable':
        yield [self._undecodable(message)]
      else:
        reason, error, stacktrace = outcome
        yield [self.dead(message, reason, error, stacktrace, field=None)]

  def _undecodable(self, message):
    """The dead letter of a message the UDF cannot get (too large, not a
    JSON object, given up by its reader): what decode_object says."""
    try:
      self._payloads.decode(message, self._max_bytes)
      raise AssertionError('the UDF\'s worker could not decode a message '
                           'that decodes')
    except Exception as e:  # pylint: disable=broad-except
      return self._dead_for(message, e)

  def _udf_rows(self, message, timestamp, objects, checked):
    if not objects:
      self._dropped += 1
      return []
    try:
      rows = [self._row(obj, checked) for obj in objects]
      if self._metadata is not None:
        for row in rows:
          self._add_metadata(row, message)
    except Exception as e:  # pylint: disable=broad-except
      return [self._dead_for(message, e)]
    out = []
    for i, row in enumerate(rows):
      if self._with_id:
        message_id = dead_letters.stored_id(message.message_id)
        row['message_id'] = message_id if len(rows) == 1 else (
            '%s#%d' % (message_id, i))
      self._rows += 1
      out.append(self._stamped(row, message, timestamp))
    return out


_JSON = json_rows.bigquery_values.value_reader('JSON')


def _stored_ids(block, taken):
  """The ids the table stores for the messages at ``taken`` in ``block``
  (as ``_one`` stores them: lone surrogates escaped), as an Arrow array."""
  import pyarrow as pa
  if type(block) is blocks_lib.LineBlock and len(taken) == len(block) and (  # pylint: disable=unidiomatic-typecheck
      block.location.isascii()):  # file:LOCATION:LINE, joined in C
    import pyarrow.compute as pc
    return pc.binary_join_element_wise(
        'file:%s:' % block.location,
        pa.array(block.numbers, pa.int64()).cast(pa.string()), '')
  if isinstance(block, blocks_lib.LazyBlock):
    ids = block.ids()
    if len(taken) != len(ids):
      ids = [ids[i] for i in taken]
  else:
    ids = [block[i].message_id for i in taken]
  if not (set(map(type, ids)) == {str} and all(map(str.isascii, ids))):
    ids = [i if type(i) is str and i.isascii() else dead_letters.stored_id(i)  # pylint: disable=unidiomatic-typecheck
           for i in ids]
  return pa.array(ids, pa.string())


class _ParseJsonBlocksFn(blocks_lib.ParseBlocksFn):
  """ParseBlocksFn whose block's UDF calls are one request to a worker
  (not one round trip per message); with ``columns``, a block's rows come
  as one ColumnBlock (Arrow columns, no row dicts) when the step can."""
  def __init__(self, fn, columns=False):
    super().__init__(fn)
    self._columnar = columns

  def setup(self):
    super().setup()
    self._columns = self._fn.compile_columns() if self._columnar else None

  def process(self, block: blocks_lib.ReadBlock,
              timestamp=beam.DoFn.TimestampParam
              ) -> Iterable[blocks_lib.RowBlock]:
    if self._columns is not None:
      return self._fn.column_outputs(block, timestamp, self._columns)
    if not self._fn.has_udf:
      return super().process(block, timestamp)
    return self._udf_block(block, timestamp)

  def _udf_block(self, block, timestamp):
    """A block's outputs through the UDF: its dead letters as they come,
    and its rows in RowBlocks cut at BLOCK_BYTES of what the UDF's answers
    brought (a UDF that fans a small message out into many rows, or makes
    rows larger than their messages, is counted and cut by its rows: a
    block of small messages is not one block of a gigabyte of rows). Each
    RowBlock's ``nbytes``: those answers, plus, in the first, what the
    block's messages held."""
    calls = self._fn._udf_calls  # pylint: disable=protected-access
    return blocks_lib.gathered(
        self._fn.udf_outputs(blocks_lib.messages_of(block), timestamp),
        blocks_lib.held_bytes(block), lambda: calls.answered_bytes)


class ParseJsonMessages(dead_letters.ParseMessages):
  """PubsubMessages -> rows (main) and dead letters (``dead_letters``).
  ``blocks``: MessageBlocks in, RowBlocks out (a bounded replay), or with
  ``columns`` ColumnBlocks where the step can (for a sink that stores
  Arrow: DuckDB's)."""
  def __init__(self, schema, unknown_fields='ignore', event_time_field=None,
               max_message_bytes=dead_letters.MAX_MESSAGE_BYTES, udf=None,
               blocks=False, udf_timeout_seconds=None, payloads=None,
               metadata=None, columns=False):
    super().__init__(ParseJsonMessageFn(
        schema, unknown_fields, event_time_field, max_message_bytes,
        udf=udf, udf_timeout_seconds=udf_timeout_seconds, payloads=payloads,
        metadata=metadata), blocks=blocks)
    self._columns = columns

  def expand(self, messages):
    if not self._blocks:
      return super().expand(messages)
    return messages | 'ParseAndValidate' >> beam.ParDo(
        _ParseJsonBlocksFn(self._fn, self._columns)).with_outputs(
            DEAD_LETTERS, main='rows')
