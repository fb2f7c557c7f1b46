"""A JSON payload -> its row in one C call for the common message: a msgspec
decoder compiled from the table's fields, then a generated function that
finishes what C cannot read as BigQuery does.

Each RECORD level is a msgspec ``Struct`` (unknown keys forbidden, so a key
of another case or an unknown key is not taken), and each column is typed
as msgspec checks it exactly: STRING ``str``, INTEGER ``int`` within INT64,
FLOAT ``float`` (refusing what overflows), BOOLEAN ``bool``, DATE ``date``,
a nullable column ``Optional``, REPEATED a list. TIMESTAMP is read as text
and parsed by msgspec's RFC 3339 reader, except a seventh fractional digit,
which msgspec rounds and BigQuery refuses. The other types (NUMERIC,
BIGNUMERIC, BYTES, TIME, DATETIME, JSON, GEOGRAPHY) arrive as their raw
JSON text and go through the exact readers (``bigquery_values``).

Anything the compiled decoder does not take raises, and the caller reads
the message on the exact path (``json_rows``), which names the reason and
the field. So this is speed only: the row it gives is the exact path's
row, which a property test holds on random schemas and hostile messages.
"""

import datetime
import decimal
import itertools
import logging
from typing import Annotated
from typing import Any
from typing import List
from typing import Optional

import msgspec
from apache_beam.utils import windowed_value

from transforms import bigquery_values
from transforms import dead_letters
from transforms import event_time
from transforms import exact_json

UTC = datetime.timezone.utc
_INT64 = Annotated[int, msgspec.Meta(ge=bigquery_values.INT64_MIN,
                                     le=bigquery_values.INT64_MAX)]
# Types msgspec reads exactly as the exact readers read their common form.
_TYPED = {'STRING': str, 'INTEGER': _INT64, 'FLOAT': float, 'BOOLEAN': bool,
          'DATE': datetime.date}
_NULL = msgspec.Raw(b'null')  # an absent nullable raw column
_struct_names = itertools.count()


class NotTaken(Exception):
  """The compiled decoder leaves this message to the exact path."""


def read_timestamp(text, _convert=msgspec.convert, _datetime=datetime.datetime):
  """RFC 3339 text -> aware UTC datetime, as the exact TIMESTAMP reader gives
  it; NotTaken (or msgspec's error) for anything else. A digit at index 26
  is a seventh fractional digit (or, rarely, an offset after one digit):
  msgspec would round it, so it is left to the exact reader."""
  if text[26:27].isdigit():
    raise NotTaken
  parsed = _convert(text, _datetime)
  zone = parsed.tzinfo
  if zone is UTC:
    return parsed
  if zone is None:
    return parsed.replace(tzinfo=UTC)
  return parsed.astimezone(UTC)  # OverflowError past years 1-9999: not taken


def _raw_reader(kind, nullable):
  """A column read from its raw JSON text by its exact reader: the value the
  exact path gives (the same ``exact_json`` parse, the same reader). A null
  where none is taken (a required column, an array's item) is not taken."""
  from_value = _value_reader(kind, nullable)
  loads = exact_json.loads

  def from_raw(raw):
    value, checked = loads(raw)
    if not checked:  # a lone surrogate: the exact path names it
      raise NotTaken
    return from_value(value)
  return from_raw


def _value_reader(kind, nullable):
  """``_raw_reader``'s reader of the value its raw text decodes to (msgspec
  decoded it: no lone surrogate)."""
  read = bigquery_values.value_reader(kind)
  # A decimal's common text, as its reader takes it first: no call more.
  plain, decimal_type = bigquery_values.plain_decimal(kind), decimal.Decimal

  def from_value(value):
    if value is None:
      if nullable:
        return None
      raise NotTaken
    if plain is not None and type(value) is str and plain(value):  # pylint: disable=unidiomatic-typecheck
      return decimal_type(value)
    return read(value, None)
  return from_value


class CompiledRows(object):
  """``fields`` -> ``rows(data)``: bytes -> the row dict, or an exception
  (NotTaken, msgspec's errors, a reader's Refused) when the exact path must
  decide. Build once per schema (in a DoFn's ``setup``)."""

  def __init__(self, fields):
    self.sources = []  # the generated functions, for a reader of this code
    self._scope = {'timestamp': read_timestamp, 'NotTaken': NotTaken,
                   'convert': msgspec.convert, 'datetime': datetime.datetime,
                   'UTC': UTC, 'Decimal': decimal.Decimal}
    self._top = None  # the top level's (lines, {column: value expression})
    self._timestamps = {}  # a TIMESTAMP's variable: whether it may be None
    self.rows = self._record(fields, top=True)[1]

  def message_outputs(self, max_bytes, with_id, event_time_field,
                      stamp_otherwise, global_window=False):
    """(message, timestamp) -> the one output of a message the decoder
    takes, as a stream's parse gives it, in one generated call: its row
    (with ``message_id`` when ``with_id``), stamped with its
    ``event_time_field`` when that is a TIMESTAMP column that has a value
    (in the global window, inline), else by
    ``stamp_otherwise(row, message, timestamp)``; with ``stamp_otherwise``
    None, the row unstamped. The stamp is ``event_time.stamper``'s of
    ``global_window``. Raises where ``rows`` raises, and when the
    payload is not bytes, is over ``max_bytes`` or was given up on (the
    exact path makes the dead letter)."""
    lines, values = self._top
    head = [
        'def message_outputs(message, element_timestamp):',
        '  data = message.data',
        '  if (type(data) is not bytes or len(data) > max_bytes or',
        '      getattr(message, "given_up", None) is not None):',
        '    raise NotTaken',
        '  s = decode(data)']
    items = ['%r: %s' % (name, value) for name, value in values.items()]
    if with_id:
      lines = lines + [
          '  message_id = message.message_id',
          '  if type(message_id) is not str or not message_id.isascii():',
          '    message_id = stored_id(message_id)']
      items.append("'message_id': message_id")
    lines = lines + ['  row = {%s}' % ', '.join(items)]
    when = values.get(event_time_field) if event_time_field else None
    if stamp_otherwise is None:
      lines.append('  return row')
    elif when is None or when not in self._timestamps:
      lines.append('  return stamp_otherwise(row, message, '
                   'element_timestamp)')
    else:
      if self._timestamps[when]:  # nullable: an absent time
        lines.append('  if %s is None: return stamp_otherwise(row, message, '
                     'element_timestamp)' % when)
      if global_window and event_time.WINDOWED_FAST:  # inline, as
        lines += [  # event_time._in_global_window_fast
            '  since = %s - EPOCH' % when,
            '  return create(row, (since.days * 86400 + since.seconds) * '
            '1000000 + since.microseconds, GLOBAL_WINDOWS)']
      else:
        lines.append('  return stamp(row, %s)' % when)
    scope = dict(self._scope, max_bytes=max_bytes,
                 stored_id=dead_letters.stored_id,
                 stamp_otherwise=stamp_otherwise,
                 stamp=event_time.stamper(global_window),
                 create=windowed_value.create,
                 GLOBAL_WINDOWS=event_time.GLOBAL_WINDOWS,
                 EPOCH=event_time._EPOCH)  # pylint: disable=protected-access
    source = '\n'.join(head + lines)
    exec(source, scope)  # pylint: disable=exec-used
    self.sources.append(source)
    return scope['message_outputs']

  def _record(self, fields, top=False):
    """(the Struct type of one RECORD level, the function from it to a
    dict; at the top, from the payload's bytes to the row)."""
    number = next(_struct_names)
    attributes, lines, items, values = [], [], [], {}
    for i, field in enumerate(fields):
      kind, default, value = self._column(field, 's.f%d' % i, lines,
                                          '%d_%d' % (number, i))
      values[field.name] = value
      attributes.append(('f%d' % i, kind) if default is _REQUIRED else
                        ('f%d' % i, kind, default))
      items.append('%r: %s' % (field.name, value))
    if not top and not lines and all(
        value == 's.f%d' % i and f.name.isidentifier() and
        not f.name.startswith('__')
        for i, (f, value) in enumerate(zip(fields, values.values()))):
      # msgspec's values are the record's: a Struct with the columns' own
      # names, made a dict in C (~0.1 us less a record than a function).
      struct = msgspec.defstruct(
          'Row%d' % number, [(f.name,) + a[1:] for f, a in zip(
              fields, attributes)], forbid_unknown_fields=True, gc=False,
          kw_only=True)
      self.sources.append('# Row%d: msgspec.structs.asdict' % number)
      return struct, msgspec.structs.asdict
    struct = msgspec.defstruct(
        'Row%d' % number, attributes, forbid_unknown_fields=True, gc=False,
        kw_only=True,
        rename={'f%d' % i: f.name for i, f in enumerate(fields)})
    name = 'record%d' % number
    if top:
      self._scope['decode'] = msgspec.json.Decoder(
          struct, float_hook=exact_json.Number).decode
      self._top = (list(lines), values)
      lines.insert(0, '  s = decode(data)')
    source = '\n'.join(['def %s(%s):' % (name, 'data' if top else 's')] +
                       lines + ['  return {%s}' % ', '.join(items)])
    exec(source, self._scope)  # pylint: disable=exec-used
    self.sources.append(source)
    return struct, self._scope[name]

  def _column(self, field, attribute, lines, suffix):
    """(the msgspec type of one column, its default, the expression of its
    value), adding to ``lines`` what computes it."""
    v = 'v' + suffix
    required = field.mode == 'REQUIRED'
    if field.type == 'RECORD':
      item, convert = self._record(field.fields)
      call = 'c' + suffix
      self._scope[call] = convert
    elif field.type in _TYPED:
      item, call = _TYPED[field.type], None
    elif field.type == 'TIMESTAMP':
      item, call = str, 'timestamp'
      if field.mode != 'REPEATED':  # a datetime, or None when nullable
        self._timestamps[v] = not required
        # read_timestamp, inline (a call is ~0.06 us of a ~0.4 us read)
        lines.append('  %s = %s' % (v, attribute))
        indent = '  '
        if not required:
          lines.append('  if %s is not None:' % v)
          indent = '    '
        lines.extend(indent + line % {'v': v} for line in (
            'if %(v)s[26:27].isdigit(): raise NotTaken',
            '%(v)s = convert(%(v)s, datetime)',
            'if %(v)s.tzinfo is not UTC:',
            '  %(v)s = (%(v)s.replace(tzinfo=UTC) if %(v)s.tzinfo is None',
            '        else %(v)s.astimezone(UTC))'))
        return (item, _REQUIRED, v) if required else (Optional[item], None, v)
    elif field.mode == 'NULLABLE':  # decoded as exact_json decodes it
      # _value_reader's from_value, inline: a NUMERIC's common text to
      # Decimal here, the rest to the type's reader.
      read = 'r' + suffix
      self._scope[read] = bigquery_values.value_reader(field.type)
      lines.append('  %s = %s' % (v, attribute))
      plain = bigquery_values.plain_decimal(field.type)
      if plain is None:
        lines.append('  if %s is not None: %s = %s(%s, None)' % (
            v, v, read, v))
      else:
        self._scope['plain' + suffix] = plain
        lines.append('  if %s is not None: %s = (Decimal(%s) if type(%s) is '
                     'str and plain%s(%s) else %s(%s, None))' % (
                         v, v, v, v, suffix, v, read, v))
      return Any, None, v
    else:  # the raw text, to the exact reader
      call = 'r' + suffix
      self._scope[call] = _raw_reader(field.type, False)
      if field.mode == 'REPEATED':
        lines.append('  %s = %s' % (v, attribute))
        lines.append('  %s = [] if %s is None else [%s(x) for x in %s]' % (
            v, v, call, v))
        return Optional[List[msgspec.Raw]], None, v
      lines.append('  %s = %s(%s)' % (v, call, attribute))
      return msgspec.Raw, _REQUIRED if required else _NULL, v
    if field.mode == 'REPEATED':
      lines.append('  %s = %s' % (v, attribute))
      lines.append('  %s = [] if %s is None else %s' % (
          v, v, v if call is None else '[%s(x) for x in %s]' % (call, v)))
      return Optional[List[item]], None, v
    if call is None:  # msgspec's value is the value
      return (item, _REQUIRED, attribute) if required else (
          Optional[item], None, attribute)
    lines.append('  %s = %s' % (v, attribute))
    if required:
      lines.append('  %s = %s(%s)' % (v, call, v))
      return item, _REQUIRED, v
    lines.append('  if %s is not None: %s = %s(%s)' % (v, v, call, v))
    return Optional[item], None, v


_REQUIRED = object()  # no default: a missing key is not taken


def compile_rows(fields):
  """``fields`` -> bytes -> row (raises when the exact path must decide), or
  None when there is no column to compile, or the schema is one this
  module cannot compile (logged: every message then takes the exact path,
  slower, never different)."""
  compiled = compile_fields(fields)
  return compiled and compiled.rows


def compile_fields(fields):
  """``fields`` -> their CompiledRows, or None as ``compile_rows``."""
  if not fields:
    return None
  try:
    return CompiledRows(fields)
  except (TypeError, ValueError) as e:
    logging.getLogger(__name__).warning(
        'every message takes the exact parse: the schema does not compile '
        'to a msgspec decoder (%s)', e)
    return None
