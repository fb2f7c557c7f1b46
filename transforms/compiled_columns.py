"""A block of JSON payloads -> the Arrow columns of their rows, with no row
dict in between: a bounded replay into DuckDB stores Arrow, and building a
dict per row (then reading the dicts back into columns) was a third of its
time.

Each payload is decoded by a msgspec ``Struct`` per RECORD level, typed as
``compiled_rows`` types them (the same guards: unknown keys, INT64 range,
the seventh fractional digit), then each column is finished and built as
an Arrow array in one pass over the block: a RECORD's fields from its
structs, a REPEATED column's items flattened beside their offsets. The
values are the values ``compiled_rows`` gives, finished by the same
readers, so the table equals ``TableSchema.to_arrow_table`` of the exact
path's rows; a property test holds it on random schemas and hostile
messages.

Speed only: a payload this does not take (``decode`` raises) or whose
column fails (``columns`` raises: the caller then finds the message by
the row path) goes to the exact path, which names the reason and the field.
"""

import itertools
import operator
from typing import List
from typing import Optional

import msgspec

from transforms import bigquery_values
from transforms import compiled_rows
from transforms import exact_json
from transforms import schemas

_NULL = compiled_rows._NULL  # pylint: disable=protected-access
_REQUIRED = compiled_rows._REQUIRED  # pylint: disable=protected-access
_TYPED = compiled_rows._TYPED  # pylint: disable=protected-access


class CompiledColumns(object):
  """``fields`` -> ``decode(data)`` (bytes -> a Struct, or raises) and
  ``columns(structs)`` (the decoded payloads -> one Arrow array per field,
  in order, or raises). Build once per schema (in a DoFn's ``setup``)."""

  def __init__(self, fields):
    self.fields = tuple(fields)
    struct, self._build = _record(self.fields)
    self.decode = msgspec.json.Decoder(struct).decode

  def columns(self, structs):
    return self._build(structs)


def _record(fields):
  """(the Struct type of one RECORD level, structs -> [Arrow array per
  field]); a struct's place may hold None (a null record's, or a
  placeholder under one)."""
  attributes, builders = [], []
  for i, field in enumerate(fields):
    kind, default, build = _column(field)
    name = 'f%d' % i
    attributes.append((name, kind) if default is _REQUIRED else
                      (name, kind, default))
    builders.append((operator.attrgetter(name), build))
  struct = msgspec.defstruct(
      'Columns%d' % next(compiled_rows._struct_names), attributes,  # pylint: disable=protected-access
      forbid_unknown_fields=True, gc=False, kw_only=True,
      rename={'f%d' % i: f.name for i, f in enumerate(fields)})

  def build(structs):
    if None in structs:
      return [b([None if s is None else get(s) for s in structs])
              for get, b in builders]
    return [b(list(map(get, structs))) for get, b in builders]
  return struct, build


def _column(field):
  """(the msgspec type of a column, its default, values -> Arrow array)."""
  import pyarrow as pa
  arrow_type = field.arrow_type()
  repeated = field.mode == 'REPEATED'
  required = field.mode == 'REQUIRED'
  if field.type == 'RECORD':
    item, build_fields = _record(field.fields)
    arrow_fields = list(arrow_type.value_type if repeated else arrow_type)

    def finish(values):
      mask = None
      if None in values:
        mask = pa.array([v is None for v in values], pa.bool_())
      return pa.StructArray.from_arrays(build_fields(values),
                                        fields=arrow_fields, mask=mask)
  elif field.type in _TYPED:
    item = _TYPED[field.type]
    scalar_type = arrow_type.value_type if repeated else arrow_type

    def finish(values):
      return pa.array(values, type=scalar_type)
  else:
    scalar_type = arrow_type.value_type if repeated else arrow_type
    nullable = field.mode == 'NULLABLE'  # an array's item never null
    from_value = None
    if field.type == 'TIMESTAMP':
      item, read = str, compiled_rows.read_timestamp
    else:  # the raw text, to the exact reader
      item = msgspec.Raw
      read = compiled_rows._raw_reader(field.type, nullable)  # pylint: disable=protected-access
      from_value = compiled_rows._value_reader(field.type, nullable)  # pylint: disable=protected-access
    if field.type == 'BIGNUMERIC':  # kept as its exact text (to_arrow_value)
      read, from_value = _as_text(read), _as_text(from_value)

    def each(values):
      return pa.array([None if v is None else read(v) for v in values],
                      type=scalar_type)
    finish = each
    if field.type == 'JSON':
      finish = _json_values(scalar_type, each, nullable)
    elif from_value is not None:
      finish = _raw_values(scalar_type, each, from_value)
    if field.type == 'TIMESTAMP':
      finish = _timestamps(scalar_type, each)
    elif field.type == 'NUMERIC':
      finish = _numerics(scalar_type, finish, nullable)
  if repeated:
    def build(values):
      if values.count(None):  # a missing or null array, or a placeholder
        values = [v or () for v in values]
      offsets = pa.array(itertools.accumulate(map(len, values), initial=0),
                         pa.int32())
      return pa.ListArray.from_arrays(
          offsets, finish(list(itertools.chain.from_iterable(values))),
          type=arrow_type)
    return Optional[List[item]], None, build
  if field.type not in _TYPED and field.type not in ('RECORD', 'TIMESTAMP'):
    return item, _REQUIRED if required else _NULL, finish
  if required:
    return item, _REQUIRED, finish
  return Optional[item], None, finish


# The RFC 3339 text Arrow reads as the exact reader does, checked in C for a
# whole column: a 'T', one to six fractional digits, 'Z' or a +HH:MM offset,
# every part in its range (a day the month has not fails Arrow's cast).
# Years 0001 and 9999 are left to the exact reader: an offset can take
# them past the calendar, which it refuses and Arrow would not.
_RFC3339 = (r'^[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])'
            r'T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?'
            r'(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$')


def _timestamps(arrow_type, each):
  """TIMESTAMP texts (or None) -> Arrow: the column read by Arrow's cast in
  C when every text is the common form, else by ``each`` (the exact
  reader's value for each, or what it raises)."""
  import pyarrow as pa
  import pyarrow.compute as pc

  def finish(values):
    texts = pa.array(values, pa.string())
    if texts.null_count < len(texts) and pc.all(
        pc.match_substring_regex(texts, _RFC3339)).as_py():
      years = pc.min_max(pc.utf8_slice_codeunits(texts, 0, 4))
      if '0001' < years['min'].as_py() and years['max'].as_py() < '9999':
        try:
          return texts.cast(arrow_type)
        except pa.ArrowInvalid:
          pass  # a day its month has not: the exact reader says so
    return each(values)
  return finish


def _numerics(arrow_type, each, nullable):
  """NUMERIC raw JSON texts (or None) -> Arrow: when each is the common
  decimal text (``bigquery_values.plain_decimal``: stored as written), as a
  string or a number, or a null where one is taken, cast in C; else by
  ``each``."""
  import pyarrow as pa
  import pyarrow.compute as pc
  plain = r'(?:[0-9]{1,27}|-[0-9]{1,26})\.[0-9]{1,9}'
  common = '^(?:"%s"|%s%s)$' % (plain, plain, '|null' if nullable else '')

  def finish(values):
    raw = _binary(values)
    if raw.null_count < len(raw) and pc.all(
        pc.match_substring_regex(raw, common)).as_py():
      texts = raw.cast(pa.large_string())
      if nullable:
        texts = pc.if_else(pc.equal(texts, 'null'),
                           pa.scalar(None, pa.large_string()), texts)
      return pc.utf8_trim(texts, '"').cast(arrow_type)
    return each(values)
  return finish


def _binary(values):
  """Raw JSON texts (or None) -> an Arrow binary array: joined in one call
  beside their offsets when none is None."""
  import pyarrow as pa
  if values.count(None):
    return pa.array([None if v is None else bytes(v) for v in values],
                    pa.large_binary())
  offsets = pa.array(itertools.accumulate(map(len, values), initial=0),
                     pa.int64())
  return pa.Array.from_buffers(pa.large_binary(), len(values), [
      None, offsets.buffers()[1], pa.py_buffer(b''.join(values))])


def _as_text(read):
  """A BIGNUMERIC reader whose value is kept as its exact text."""
  def read_text(value):
    value = read(value)
    return None if value is None else schemas.decimal_text(value)
  return read_text


def _raw_values(arrow_type, each, from_value):
  """Raw JSON texts of a column (or None) -> Arrow: all decoded in one
  msgspec call (as one JSON array), then each read by ``from_value`` (the
  exact reader of its value); by ``each`` when the array does not decode
  (a lone surrogate, nesting at msgspec's limit) or holds a placeholder."""
  import pyarrow as pa

  def finish(values):
    decoded = _decoded(values)
    if decoded is None:
      return each(values)
    return pa.array([from_value(v) for v in decoded], type=arrow_type)
  return finish


def _decoded(values):
  """A column's raw JSON texts decoded in one msgspec call (as one array),
  or None when it holds a placeholder (None, under a null record) or does
  not decode (a lone surrogate, nesting at msgspec's limit)."""
  if values.count(None):
    return None
  try:
    return exact_json.msgspec_decode(b'[%s]' % b','.join(values))
  except Exception:  # pylint: disable=broad-except
    return None


def _json_values(arrow_type, each, nullable):
  """A JSON column's raw texts (or None) -> Arrow: decoded in one msgspec
  call, checked and encoded in one (``bigquery_values.json_texts``: what
  the JSON reader gives each); by ``each`` otherwise."""
  import pyarrow as pa

  def finish(values):
    decoded = _decoded(values)
    if decoded is None:
      return each(values)
    nulls = decoded.count(None)
    if nulls and not nullable:
      return each(values)  # the exact reader refuses the null
    if nulls == len(decoded):
      return pa.nulls(len(decoded), arrow_type)
    texts = bigquery_values.json_texts(
        [v for v in decoded if v is not None] if nulls else decoded)
    if nulls:
      texts = iter(texts)
      texts = [None if v is None else next(texts) for v in decoded]
    return pa.array(texts, type=arrow_type)
  return finish


def compile_columns(fields):
  """``fields`` -> CompiledColumns, or None when ``compiled_rows`` would not
  compile them (every message then takes the row path)."""
  if compiled_rows.compile_rows(fields) is None:
    return None
  try:
    return CompiledColumns(fields)
  except (TypeError, ValueError):
    return None
