"""JSON values -> the exact values BigQuery stores, one reader per column
type, or a ``Refused`` naming the field and why.

Numbers arrive as their JSON text (``exact_json``) and are converted from
it, never through a binary float. The accepted and refused forms of every
type are listed in docs/values.md; a test checks each
line. ``json_rows`` puts the readers together for a schema.
"""

import base64
import binascii
import datetime
import decimal
import itertools
import math
import re

from transforms import exact_json
from transforms.exact_json import Number

UTC = datetime.timezone.utc
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1
# Exact arithmetic: 200 digits hold any BIGNUMERIC (77) with room to spare.
_EXACT = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP,
                         Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)
# (decimal places, smallest, largest) as BigQuery documents them.
_DECIMAL_TYPES = {
    'NUMERIC': (9, _EXACT.create_decimal('-' + '9' * 29 + '.' + '9' * 9),
                _EXACT.create_decimal('9' * 29 + '.' + '9' * 9)),
    'BIGNUMERIC': (38, _EXACT.create_decimal('-%de-38' % (1 << 255)),
                   _EXACT.create_decimal('%de-38' % ((1 << 255) - 1))),
}

# [0-9], never \d: Python's \d and int() take Arabic-Indic or full-width
# digits, which BigQuery does not.
_NUMBER_TEXT = re.compile(r'\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*')
_INTEGER_TEXT = re.compile(r'\s*[+-]?[0-9]+\s*')
ALIASES = {'INT64': 'INTEGER', 'FLOAT64': 'FLOAT', 'BOOL': 'BOOLEAN',
           'STRUCT': 'RECORD', 'BIGDECIMAL': 'BIGNUMERIC', 'DECIMAL': 'NUMERIC'}
TYPES = ('STRING', 'BYTES', 'INTEGER', 'FLOAT', 'NUMERIC', 'BIGNUMERIC',
         'BOOLEAN', 'TIMESTAMP', 'DATE', 'TIME', 'DATETIME', 'JSON',
         'GEOGRAPHY', 'RECORD')
REASONS = ('missing_field', 'bad_value', 'out_of_range', 'unknown_field',
           'duplicate_field')


class Symbol(str):
  """An enum value of an Avro or Protocol Buffer payload: its name, which a
  STRING column stores, and its ``number``, which an INTEGER column stores
  (as a BigQuery subscription maps enums: INTEGER)."""
  __slots__ = ('number',)

  def __new__(cls, name, number):
    self = super().__new__(cls, name)
    self.number = number
    return self


class Refused(Exception):
  """A value that cannot be stored: ``reason`` is a stable code, ``path`` the
  field (``items[2].price``)."""
  def __init__(self, reason, path, message):
    path = exact_json.printable(path) if path else path
    super().__init__('%s: %s' % (path, message) if path else message)
    self.reason = reason
    self.path = path


def _non_finite(value):
  """NaN, Infinity or -Infinity for a float that is one (a UDF's), else None."""
  if value != value:  # pylint: disable=comparison-with-itself
    return 'NaN'
  if value in (math.inf, -math.inf):
    return 'Infinity' if value > 0 else '-Infinity'
  return None


def _shown(value):
  """A value as the message showed it, clipped, safe for any sink."""
  if type(value) is Number:  # pylint: disable=unidiomatic-typecheck
    text = str(value)
  elif type(value) is float and _non_finite(value):  # pylint: disable=unidiomatic-typecheck
    text = _non_finite(value)  # JSON text would say null
  elif type(value) is int and value.bit_length() > 256:  # pylint: disable=unidiomatic-typecheck
    text = 'an integer of %d bits' % value.bit_length()
  else:
    try:
      text = exact_json.dumps(value)
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError):
      text = exact_json.printable(repr(value))
  return text if len(text) <= 80 else text[:80] + '...'


def _bad(path, value, what):
  return Refused('bad_value', path, '%s is not %s' % (_shown(value), what))


def _out_of_range(path, value, what):
  return Refused('out_of_range', path, '%s is outside %s' % (_shown(value), what))


def _not_json_number(path, value):
  """A UDF's NaN or infinity where only a JSON number can go."""
  return Refused('bad_value', path, '%s is not a JSON number' % _shown(value))


def _decimal_of(value):
  """A JSON number (int, Number text, or a Python float) -> exact Decimal."""
  if type(value) is float:  # pylint: disable=unidiomatic-typecheck
    return decimal.Decimal(repr(value))
  return decimal.Decimal(value)


def _is_number(value):
  kind = type(value)
  return kind is int or kind is Number or kind is float


def _integer(value, path):
  kind = type(value)
  if kind is int:
    number = value
  elif kind is Number or kind is float:
    if kind is float and not math.isfinite(value):
      raise _bad(path, value, 'an INTEGER')
    exact = _decimal_of(value)
    if exact.is_zero():
      exact = decimal.Decimal(0)  # 0e999 is zero, whatever its exponent
    if exact.adjusted() >= 19:  # 1e19 and above: no INT64, integral or not
      raise _out_of_range(path, value, 'INT64')
    if exact != exact.to_integral_value():
      raise _bad(path, value, 'an INTEGER')
    number = int(exact)
  elif kind is Symbol:
    number = value.number
  elif kind is decimal.Decimal:  # a decoded Avro decimal or Duration
    if not value.is_finite() or value != value.to_integral_value():
      raise _bad(path, value, 'an INTEGER')
    number = int(value)
  elif kind is str and _INTEGER_TEXT.fullmatch(value):
    if len(value.strip().lstrip('+-').lstrip('0')) > 19:
      raise _out_of_range(path, value, 'INT64')
    number = int(value)
  else:
    raise _bad(path, value, 'an INTEGER')
  if not INT64_MIN <= number <= INT64_MAX:
    raise _out_of_range(path, value, 'INT64')
  return number


_FLOAT_WORDS = {'nan': math.nan, 'infinity': math.inf, '+infinity': math.inf,
                '-infinity': -math.inf, 'inf': math.inf, '+inf': math.inf,
                '-inf': -math.inf}


def _float(value, path):
  kind = type(value)
  if kind is float:
    return value
  if kind is int:
    try:
      return float(value)  # correctly rounded
    except OverflowError:
      raise _out_of_range(path, value, 'FLOAT64')
  if kind is Number or (kind is str and _NUMBER_TEXT.fullmatch(value)):
    number = float(value)  # the nearest double to the decimal text
    if math.isinf(number):
      raise _out_of_range(path, value, 'FLOAT64')
    return number
  if kind is str and value.strip().lower() in _FLOAT_WORDS:
    return _FLOAT_WORDS[value.strip().lower()]
  if kind is decimal.Decimal and value.is_finite():  # a decoded Duration
    number = float(value)  # the nearest double
    if math.isinf(number):
      raise _out_of_range(path, value, 'FLOAT64')
    return number
  raise _bad(path, value, 'a FLOAT64')


_QUANTUM = {kind: decimal.Decimal(1).scaleb(-scale)
            for kind, (scale, _, _) in _DECIMAL_TYPES.items()}
# Below 10^this the value, even rounded, is inside the type's range.
_SAFE_DIGITS = {'NUMERIC': 28, 'BIGNUMERIC': 37}


# The common text, stored as written (no rounding, inside the range): at
# most 27 digits before the point (26 after a minus sign), at least one, and
# one to the type's scale after it.
_PLAIN_DECIMAL = {
    kind: re.compile(r'(?:[0-9]{1,27}|-[0-9]{1,26})\.[0-9]{1,%d}' % scale
                     ).fullmatch
    for kind, (scale, _, _) in _DECIMAL_TYPES.items()}


def plain_decimal(kind):
  """The common-text test of a NUMERIC or BIGNUMERIC reader (text it passes
  is stored as ``Decimal(text)``), or None for another type."""
  return _PLAIN_DECIMAL.get(kind)


def _decimal(value, path, kind_name):
  scale, smallest, largest = _DECIMAL_TYPES[kind_name]
  kind = type(value)
  if (kind is str or kind is Number) and _PLAIN_DECIMAL[kind_name](value):
    return decimal.Decimal(value)  # the common text: no rounding, in range
  try:
    if kind is decimal.Decimal:  # a decoded Avro decimal or Duration
      number = value
    elif kind is Number or kind is int:
      number = decimal.Decimal(value)
    elif kind is str and value.isascii() and '_' not in value:
      number = decimal.Decimal(value)  # surrounding blanks allowed, as BigQuery
    elif kind is float and math.isfinite(value):
      number = decimal.Decimal(repr(value))
    else:
      raise _bad(path, value, 'a ' + kind_name)
  except decimal.InvalidOperation:
    raise _bad(path, value, 'a ' + kind_name)
  if not number.is_finite():
    raise _bad(path, value, 'a finite ' + kind_name)
  if number.is_zero():
    number = decimal.Decimal(0)  # 0e999 is zero, whatever its exponent
  magnitude = number.adjusted()
  if magnitude > 40:  # far outside either type: no need to round
    raise _out_of_range(path, value, kind_name)
  rounded = number.quantize(_QUANTUM[kind_name], context=_EXACT)  # half away from zero
  if rounded != number:
    number = rounded
  if magnitude >= _SAFE_DIGITS[kind_name] and not smallest <= number <= largest:
    raise _out_of_range(path, value, kind_name)
  return number


def _boolean(value, path):
  if type(value) is bool:  # pylint: disable=unidiomatic-typecheck
    return value
  if type(value) is str and value.strip().lower() in ('true', 'false'):  # pylint: disable=unidiomatic-typecheck
    return value.strip().lower() == 'true'
  raise _bad(path, value, 'a BOOLEAN')


def _string(value, path):
  kind = type(value)
  if kind is str:
    return value
  if kind is Number or kind is Symbol:
    return str(value)  # the number exactly as the message wrote it; a name
  if kind is bool:
    return 'true' if value else 'false'
  if kind is int:
    return str(value)
  if kind is float:
    if _non_finite(value):
      raise _not_json_number(path, value)
    return repr(value)
  # A decoded Avro or Protocol Buffer value into a STRING column (--schema):
  # the text BigQuery's JSON API gives it, as a JSON payload's would be.
  if kind is decimal.Decimal:
    return str(value)
  if kind is bytes:
    return base64.b64encode(value).decode('ascii')
  if kind is datetime.datetime or kind is datetime.date or (
      kind is datetime.time):
    return value.isoformat()
  raise _bad(path, value, 'a STRING')


def _bytes(value, path):
  if type(value) is bytes:  # pylint: disable=unidiomatic-typecheck
    return value  # decoded Avro or Protocol Buffer bytes
  if type(value) is str:  # pylint: disable=unidiomatic-typecheck
    try:
      return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
      pass
  raise _bad(path, value, 'BYTES in base64')


def _json_number_kept(value):
  """BigQuery's JSON type keeps a number only as INT64, UINT64 or FLOAT64,
  without losing precision: None if kept, else why not."""
  kind = type(value)
  if kind is int:
    if INT64_MIN <= value <= UINT64_MAX:
      return None
    try:
      return None if int(float(value)) == value else 'precision'
    except OverflowError:
      return 'range'
  if kind is Number:
    number = float(value)
    if math.isinf(number):
      return 'range'
    if decimal.Decimal(repr(number)) != decimal.Decimal(value):
      return 'precision'
  return None


# Nothing to check in these. Never float: a parsed message holds none (its
# numbers are int or Number), and a UDF's may be NaN or infinite.
_PLAIN = frozenset((str, bool, type(None)))


def _checked_json(value, path):
  """Refuses what the JSON type cannot keep (``_check_json``), at once for
  a value of plain text, booleans and nulls (a flat object or array too)."""
  kind = type(value)
  if not (kind in _PLAIN
          or (kind is dict and _PLAIN.issuperset(map(type, value.values())))
          or (kind is list and _PLAIN.issuperset(map(type, value)))):
    _check_json(value, path)


def _all_plain(values):
  """Whether every value is plain, or an object or array of plain values
  (what ``_checked_json`` lets pass at once), checked in C for the column:
  a message's flat object of text and booleans, the common JSON value."""
  kinds = set(map(type, values))
  if kinds <= _PLAIN:
    return True
  if kinds == {dict}:
    items = itertools.chain.from_iterable(map(dict.values, values))
  elif kinds == {list}:
    items = itertools.chain.from_iterable(values)
  else:
    return False
  return _PLAIN.issuperset(map(type, items))


def _json(value, path):
  """Any JSON value -> its compact text, if BigQuery's JSON type keeps it."""
  _checked_json(value, path)
  try:
    return exact_json.dumps(value)
  except UnicodeEncodeError:
    raise Refused('bad_value', path, 'holds a lone surrogate escape, which '
                  'is not Unicode text')


def json_texts(values):
  """``_json`` of each of ``values`` (none of them None), the texts encoded
  in one call; raises what ``_json`` raises for the first it refuses."""
  if not _all_plain(values):
    for value in values:
      _checked_json(value, None)
  try:
    return exact_json.dumps_each(values)
  except UnicodeEncodeError:
    for value in values:
      _json(value, None)  # names the first that holds a lone surrogate
    raise


def _check_json(value, path):
  """Refuses numbers a JSON column cannot keep (a UDF's NaN or infinity
  too: JSON has none, and the encoder would write null) and nesting past its
  limit."""
  stack = [(value, 1)]
  while stack:
    item, depth = stack.pop()
    kind = type(item)
    if kind is dict or kind is list:
      if depth > exact_json.MAX_DEPTH:
        raise Refused('bad_value', path, 'nests deeper than %d levels, the '
                      'most a JSON column holds' % exact_json.MAX_DEPTH)
      children = item.values() if kind is dict else item
      stack.extend((child, depth + 1) for child in children
                   if type(child) not in _PLAIN)
    elif kind is float:
      if _non_finite(item):
        raise _not_json_number(path, item)
    elif kind is int or kind is Number:
      lost = _json_number_kept(item)
      if lost == 'range':
        raise _out_of_range(path, item, 'what a JSON column holds (FLOAT64)')
      if lost:
        raise Refused('bad_value', path, '%s has more precision than a JSON '
                      'column keeps (INT64, UINT64 or FLOAT64)' % _shown(item))


def _geography(value, path):
  from transforms import geography
  if type(value) is not str:  # pylint: disable=unidiomatic-typecheck
    raise _bad(path, value, 'a GEOGRAPHY (WKT, WKB in hex or GeoJSON text)')
  try:
    return geography.canonical_wkt(value)
  except ValueError as e:
    raise Refused('bad_value', path, '%s is not a GEOGRAPHY: %s' % (
        _shown(value), e))


def value_reader(kind):
  """A column type (not RECORD) -> read(value, path): its reader, the common
  form of each type first."""
  if kind == 'STRING':
    return lambda v, path: v if type(v) is str else _string(v, path)  # pylint: disable=unidiomatic-typecheck
  if kind == 'INTEGER':
    return lambda v, path: (v if type(v) is int and INT64_MIN <= v <= INT64_MAX  # pylint: disable=unidiomatic-typecheck
                            else _integer(v, path))
  if kind in _DECIMAL_TYPES:
    return lambda v, path: _decimal(v, path, kind)
  if kind == 'BOOLEAN':
    return lambda v, path: v if type(v) is bool else _boolean(v, path)  # pylint: disable=unidiomatic-typecheck
  from transforms import bigquery_times
  readers = {'FLOAT': _float, 'BYTES': _bytes, 'JSON': _json,
             'GEOGRAPHY': _geography, **bigquery_times.READERS}
  if kind in readers:
    return readers[kind]
  raise ValueError('unsupported type %s' % kind)


def not_an_object(path, value):
  return _bad(path, value, 'an object')


def not_an_array(path, value):
  return _bad(path, value, 'an array')
