"""Messages and rows carried many to an element, so that a bounded replay
pays the runner's per-element cost (~3-5 us a step on the local runner)
once per block instead of once per message, as wordcount's line blocks do.

Only a replay into tables reads in blocks: a block has one timestamp, so a
graph that windows rows by event time (user_signin's counts) reads one
message per element. Dead letters leave a block one by one, as always.

A read gives MessageBlocks, or LazyBlocks (a file's lines, an archive's
records) whose messages are made only when a step asks (``messages_of``);
a parse gives RowBlocks, or for DuckDB one ColumnBlock (an Arrow table).
"""

import pickle
import typing

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.windowed_value import WindowedValue

from transforms import dead_letters

BLOCK_MESSAGES = 2000  # at most, per block
BLOCK_BYTES = 4 << 20  # held, at most (a 10 MB message is alone)
# What a message or an archive record holds beside its texts (its objects,
# ids and times), about: the bytes a block counts for each.
MESSAGE_OVERHEAD = 512


class ReadBlock(object):
  """What a replay's read gives: a MessageBlock or a LineBlock (steps take
  either through ``messages_of``)."""
  __slots__ = ()


class MessageBlock(list, ReadBlock):
  """PubsubMessages read together from one file, in file order."""


class RowBlock(list):
  """Rows parsed together (dicts by column), stored together. ``nbytes``:
  what the messages they came from held (``held_bytes``: payloads,
  attributes, ids), which a sink's buffer counts for them: a row holds
  about what its message said."""
  nbytes = 0


class LazyBlock(ReadBlock):
  """Messages read together whose PubsubMessages are made when a step asks
  (``messages()``): the columnar parse reads only their payloads
  (``datas``) and ids (``ids()``), and making a message costs ~1 us. Every
  step that takes MessageBlocks takes these through ``messages_of``."""
  __slots__ = ()

  def __len__(self):
    return len(self.datas)


class LineBlock(LazyBlock):
  """Lines of one JSON-lines file read together: a MessageBlock of them,
  kept as the payloads and line numbers."""
  __slots__ = ('location', 'datas', 'numbers', '_messages')

  def __init__(self, location, datas, numbers):
    self.location = location  # the file's canonical location
    self.datas = datas
    self.numbers = numbers  # each line's number in the file, from 1
    self._messages = None

  def ids(self):
    """The messages' ids (``file:LOCATION:LINE``), in order."""
    prefix = 'file:%s:' % self.location
    return [prefix + str(n) for n in self.numbers]

  @property
  def nbytes(self):
    """What it holds, about: its payloads, and its messages once made."""
    held = sum(map(len, self.datas))
    if self._messages is not None:
      held += len(self.datas) * (MESSAGE_OVERHEAD + len(self.location))
    return held

  def messages(self):
    """The MessageBlock of these lines, as a line-by-line read makes it."""
    if self._messages is None:
      location = self.location
      prefix = 'file:%s:' % location
      block = MessageBlock()
      for data, number in zip(self.datas, self.numbers):
        n = str(number)
        block.append(PubsubMessage(data, {'source_file': location, 'line': n},
                                   message_id=prefix + n))
      self._messages = block
    return self._messages


class RecordBlock(LazyBlock):
  """Records of one archive file read together (``transforms.archive``: as
  its reader gives them): a MessageBlock of the messages they keep."""
  __slots__ = ('records', 'datas', '_messages', '_held')

  def __init__(self, records, held=None):
    self.records = records
    self.datas = [r['data'] for r in records]
    self._messages = None
    self._held = held  # record_bytes of them all, when known

  @property
  def nbytes(self):
    """What it holds, about: its records (and their messages once made,
    as much again)."""
    if self._held is None:
      self._held = sum(map(record_bytes, self.records))
    return self._held * (1 if self._messages is None else 2)

  def ids(self):
    """The messages' ids, as ``archive.message`` gives them."""
    return [r['message_id'] or None for r in self.records]

  def messages(self):
    if self._messages is None:
      from transforms import archive
      self._messages = MessageBlock(map(archive.message, self.records))
    return self._messages


def messages_of(block):
  """A block's MessageBlock (a LazyBlock's messages, made now)."""
  return block.messages() if isinstance(block, LazyBlock) else block


def _text_bytes(value):
  return len(value) if hasattr(value, '__len__') else 0


def _attribute_bytes(attributes):
  """The text of attributes (a dict, or (key, value) pairs as Parquet
  reads a map)."""
  if not attributes:
    return 0
  pairs = attributes.items() if isinstance(attributes, dict) else attributes
  return sum(_text_bytes(k) + _text_bytes(v) for k, v in pairs)


def record_bytes(record):
  """What an archive record holds, about: its payload, attributes and ids,
  and MESSAGE_OVERHEAD (Pub/Sub allows ~128 KB of attributes beside a
  payload of a few bytes)."""
  return (_text_bytes(record.get('data')) + MESSAGE_OVERHEAD +
          _text_bytes(record.get('message_id')) +
          _text_bytes(record.get('ordering_key')) +
          _attribute_bytes(record.get('attributes')))


def message_bytes(message):
  """What a PubsubMessage holds, about (as ``record_bytes``)."""
  return (_text_bytes(getattr(message, 'data', None)) + MESSAGE_OVERHEAD +
          _text_bytes(getattr(message, 'message_id', None)) +
          _text_bytes(getattr(message, 'ordering_key', None)) +
          _attribute_bytes(getattr(message, 'attributes', None)))


def held_bytes(block):
  """What a block holds in memory, about: a LazyBlock's ``nbytes``, or its
  messages' ``message_bytes``."""
  if isinstance(block, LazyBlock):
    return block.nbytes
  return sum(map(message_bytes, block))


class ColumnBlock(object):
  """Rows parsed together as one Arrow table of the schema (``table``, in
  the order of their messages), stored together: a replay into DuckDB
  builds no row dict (``transforms.compiled_columns``). ``messages`` are
  the rows' messages (those at ``at`` in the ``source`` block, made when
  asked), and ``rows_of(messages)`` gives their rows as the row path does,
  for what needs a row (a refused row's dead letter, a sink that takes
  rows); without it (a block that crossed a process) the rows are read
  back from the table."""
  __slots__ = ('table', '_source', '_at', 'rows_of')

  def __init__(self, table, source, at=None, rows_of=None):
    self.table = table
    self._source = source  # a MessageBlock, LineBlock or list of messages
    self._at = at  # the rows' positions in it (None: all, in order)
    self.rows_of = rows_of

  def __len__(self):
    return self.table.num_rows

  @property
  def messages(self):
    messages = messages_of(self._source)
    if self._at is not None:
      messages = [messages[i] for i in self._at]
      self._source, self._at = messages, None
    return messages

  @property
  def nbytes(self):
    """What it holds in memory, about: its table, and its source block
    (kept for a refused row's dead letter: a row of a few bytes may come
    from a message of megabytes of payload or attributes)."""
    return self.table.nbytes + held_bytes(self._source)

  def rows(self, start=0, stop=None):
    """The rows from ``start`` to ``stop``, as dicts by column."""
    stop = len(self) if stop is None else stop
    if self.rows_of is not None:
      return list(self.rows_of(self.messages[start:stop]))
    return self.table.slice(start, stop - start).to_pylist()


class BlockCoder(beam.coders.Coder):
  """A MessageBlock, RowBlock or ColumnBlock, pickled (fused steps never
  encode it; a ColumnBlock crosses without ``rows_of``) with a size
  estimate that does not encode it: the runner samples element sizes for
  its metrics, and pickling a 2,000-message block to measure it cost a
  replay 5% of its time."""
  def encode(self, value):
    kind = type(value)
    if kind is ColumnBlock:
      return pickle.dumps(('ColumnBlock', (value.table, list(value.messages))),
                          pickle.HIGHEST_PROTOCOL)
    if kind is LineBlock:
      return pickle.dumps(('LineBlock', (value.location, value.datas,
                                         value.numbers)),
                          pickle.HIGHEST_PROTOCOL)
    if kind is RecordBlock:
      return pickle.dumps(('RecordBlock', (value.records,)),
                          pickle.HIGHEST_PROTOCOL)
    if kind is RowBlock:
      return pickle.dumps(('RowBlock+', (list(value), value.nbytes)),
                          pickle.HIGHEST_PROTOCOL)
    return pickle.dumps((type(value).__name__, list(value)),
                        pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded):
    kind, items = pickle.loads(encoded)
    if kind == 'ColumnBlock':
      return ColumnBlock(*items)
    if kind == 'LineBlock':
      return LineBlock(*items)
    if kind == 'RecordBlock':
      return RecordBlock(*items)
    if kind == 'RowBlock+':
      rows = RowBlock(items[0])
      rows.nbytes = items[1]
      return rows
    return (MessageBlock if kind == 'MessageBlock' else RowBlock)(items)

  def is_deterministic(self):
    return False

  def estimate_size(self, value):
    # The encoded size (what crosses a process): a ColumnBlock's table
    # alone, as its source messages are not encoded; ``nbytes`` is what a
    # block holds in memory, a different question.
    if type(value) is MessageBlock:  # pylint: disable=unidiomatic-typecheck
      return sum(len(m.data or b'') + 64 for m in value)
    if type(value) is ColumnBlock:  # pylint: disable=unidiomatic-typecheck
      return value.table.nbytes
    if isinstance(value, LazyBlock):
      return sum(len(d or b'') for d in value.datas) + 64 * len(value)
    return 128 * len(value)  # a row: its values and their column names

  def to_type_hint(self):
    return typing.Any


beam.coders.registry.register_coder(MessageBlock, BlockCoder)
beam.coders.registry.register_coder(RowBlock, BlockCoder)
beam.coders.registry.register_coder(ColumnBlock, BlockCoder)
beam.coders.registry.register_coder(LineBlock, BlockCoder)
beam.coders.registry.register_coder(RecordBlock, BlockCoder)
beam.coders.registry.register_coder(ReadBlock, BlockCoder)


def message_blocks(messages: typing.Iterable[PubsubMessage],
                   max_messages=BLOCK_MESSAGES, max_bytes=BLOCK_BYTES):
  """Messages -> MessageBlocks of at most ``max_messages`` messages and
  ``max_bytes`` of payload (a message larger than that is a block alone)."""
  block, size = MessageBlock(), 0
  for message in messages:
    length = message_bytes(message)
    if block and (len(block) >= max_messages or size + length > max_bytes):
      yield block
      block, size = MessageBlock(), 0
    block.append(message)
    size += length
  if block:
    yield block


def record_blocks(records, max_messages=BLOCK_MESSAGES, max_bytes=BLOCK_BYTES):
  """Archive records -> RecordBlocks with the bounds ``message_blocks``
  keeps (what a record holds: its attributes too)."""
  block, size = [], 0
  overhead = MESSAGE_OVERHEAD
  for record in records:
    try:  # record_bytes, inline (a call a record is 0.3 us)
      length = (len(record['data'] or b'') + overhead +
                len(record['message_id'] or '') +
                len(record['ordering_key'] or ''))
      attributes = record['attributes']
      if attributes:
        length += _attribute_bytes(attributes)
    except (TypeError, KeyError):  # a field not of its type, or none
      length = record_bytes(record)
    if block and (len(block) >= max_messages or size + length > max_bytes):
      yield RecordBlock(block, size)
      block, size = [], 0
    block.append(record)
    size += length
  if block:
    yield RecordBlock(block, size)


def line_blocks(location, datas, numbers, size, max_messages=BLOCK_MESSAGES,
                max_bytes=BLOCK_BYTES):
  """A piece of a file's lines (their payloads, numbers and payload bytes)
  -> LineBlocks with the bounds ``message_blocks`` keeps."""
  if size <= max_bytes:
    for start in range(0, len(datas), max_messages):
      yield LineBlock(location, datas[start:start + max_messages],
                      numbers[start:start + max_messages])
    return
  start, total = 0, 0
  for end, data in enumerate(datas):
    if end > start and (end - start >= max_messages or
                        total + len(data) > max_bytes):
      yield LineBlock(location, datas[start:end], numbers[start:end])
      start, total = end, 0
    total += len(data)
  if start < len(datas):
    yield LineBlock(location, datas[start:], numbers[start:])


class ParseBlocksFn(beam.DoFn):
  """A parse step's DoFn (``dead_letters.ParseMessageFn``) over blocks: a
  MessageBlock in, one RowBlock of its rows out (event-time stamps dropped:
  nothing windows them), and its dead letters on their output. Every
  message still yields exactly one row or one dead letter (or, through a
  UDF, its rows or a counted drop)."""
  def __init__(self, fn: dead_letters.ParseMessageFn):
    self._fn = fn

  def setup(self):
    self._fn.stamp_rows = False  # a block has one timestamp: rows none
    self._fn.setup()

  def start_bundle(self):
    self._fn.start_bundle()

  def finish_bundle(self):
    self._fn.finish_bundle()

  def process(self, block: ReadBlock,
              timestamp=beam.DoFn.TimestampParam) -> typing.Iterable[RowBlock]:
    outputs = self._fn.outputs
    held = held_bytes(block)
    return gathered((outputs(message, timestamp)
                     for message in messages_of(block)), held)


def gathered(outputs_per_message, nbytes=0, made=None):
  """Each message's parse outputs -> its dead letters (tagged outputs) as
  they come, then one RowBlock of all the rows (none when there are none),
  of ``nbytes`` (what its messages held). With ``made`` (-> the bytes the
  outputs have brought so far: a UDF's answers), the rows are cut into
  RowBlocks at BLOCK_BYTES of those, each counting its own (the first
  ``nbytes`` too): rows larger than their messages stay bounded."""
  rows, start = RowBlock(), made() if made else 0
  for outputs in outputs_per_message:
    for out in outputs:
      kind = type(out)
      if kind is TimestampedValue or kind is WindowedValue:
        rows.append(out.value)
      elif kind is beam.pvalue.TaggedOutput:
        yield out
      else:
        rows.append(out)
    if made is not None and rows and made() - start >= BLOCK_BYTES:
      rows.nbytes = nbytes + made() - start
      yield rows
      rows, nbytes, start = RowBlock(), 0, made()
  if rows:
    rows.nbytes = nbytes + (made() - start if made else 0)
    yield rows


def unblocked(element):
  """A RowBlock's or ColumnBlock's rows, or the one row a non-block element
  is."""
  kind = type(element)
  if kind is RowBlock:
    return element
  if kind is ColumnBlock:
    return element.rows()
  return (element,)
