"""A JSON object -> a row for a BigQuery table schema, read the way
BigQuery's JSON ingestion reads it, or a refusal naming the field and why.

Per type (BigQuery's documented JSON forms; where BigQuery accepts a form,
so do we):
- STRING: a JSON string; numbers and booleans become their JSON text.
- BYTES: a base64 string.
- INTEGER / INT64: a JSON integer, an integral float, or a string of an
  integer; within -2^63 .. 2^63-1 (else out_of_range).
- FLOAT / FLOAT64: a number, a numeric string, or "NaN", "Infinity",
  "-Infinity".
- NUMERIC: a number or numeric string, rounded half away from zero to 9
  decimal places; at most 29 integer digits (else out_of_range).
- BIGNUMERIC: the same to 38 decimal places and 38 integer digits
  (BigQuery's exact bound, 5.789...e38, is checked too).
- BOOLEAN / BOOL: true/false, or the strings "true"/"false" (any case).
- TIMESTAMP: an RFC 3339 / ISO 8601 or "YYYY-MM-DD HH:MM:SS[.ffffff] [zone]"
  string (naive means UTC), or a number of seconds since the epoch; years
  0001-9999 in UTC.
- DATE "YYYY-MM-DD", TIME "HH:MM:SS[.ffffff]", DATETIME "YYYY-MM-DD[T ]
  HH:MM:SS[.ffffff]" (no zone).
- JSON: any JSON value, kept as its JSON text.
- RECORD / STRUCT: an object, checked field by field, to any depth.
Modes: REQUIRED (absent or null: missing_field), NULLABLE, REPEATED (a JSON
array; null or absent is an empty array; a null element is bad_value).
Fields the schema does not know are ignored, or with ``unknown='reject'``
refused as unknown_field.
"""

import base64
import binascii
import datetime
import decimal
import json
import math
import re

UTC = datetime.timezone.utc
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
_NUMERIC = (9, 29)  # (scale, integer digits)
_BIGNUMERIC = (38, 38)
_BIGNUMERIC_MAX = decimal.Decimal(
    '578960446186580977117854925043439539266.34992332820282019728792003956'
    '564819967')
_QUANTUM = {'NUMERIC': decimal.Decimal(1).scaleb(-_NUMERIC[0]),
            'BIGNUMERIC': decimal.Decimal(1).scaleb(-_BIGNUMERIC[0])}
_LIMIT = {'NUMERIC': decimal.Decimal(10) ** _NUMERIC[1] - _QUANTUM['NUMERIC'],
          'BIGNUMERIC': _BIGNUMERIC_MAX}
_DECIMAL = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)
_TIMESTAMP_TEXT = re.compile(
    r'(\d{4}-\d{1,2}-\d{1,2})[T ](\d{1,2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)'
    r'\s*(Z|UTC|[+-]\d{2}(?::?\d{2})?)?', re.IGNORECASE)
_DATE_TEXT = re.compile(r'\d{4}-\d{1,2}-\d{1,2}')
_TIME_TEXT = re.compile(r'\d{1,2}:\d{2}:\d{2}(?:\.\d{1,9})?')
_DATETIME_TEXT = re.compile(
    r'(\d{4}-\d{1,2}-\d{1,2})[T ](\d{1,2}:\d{2}:\d{2}(?:\.\d{1,9})?)')

# JSON values kept as compact text with sorted keys (one encoder, built once).
_JSON_TEXT = json.JSONEncoder(sort_keys=True, separators=(',', ':')).encode

ALIASES = {'INT64': 'INTEGER', 'FLOAT64': 'FLOAT', 'BOOL': 'BOOLEAN',
           'STRUCT': 'RECORD'}
TYPES = ('STRING', 'BYTES', 'INTEGER', 'FLOAT', 'NUMERIC', 'BIGNUMERIC',
         'BOOLEAN', 'TIMESTAMP', 'DATE', 'TIME', 'DATETIME', 'JSON', 'RECORD')


class Refused(Exception):
  """A value that cannot be stored: ``reason`` is a stable code, ``path`` the
  field (``items[2].price``)."""
  def __init__(self, reason, path, message):
    super().__init__('%s: %s' % (path, message) if path else message)
    self.reason = reason
    self.path = path


def _bad(path, value, what):
  text = json.dumps(value)
  if len(text) > 80:
    text = text[:80] + '...'
  return Refused('bad_value', path, '%s is not %s' % (text, what))


def _is_number(value):
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value, path):
  if isinstance(value, bool):
    raise _bad(path, value, 'an INTEGER')
  if isinstance(value, int):
    number = value
  elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
    number = int(value)
  elif isinstance(value, str) and re.fullmatch(r'\s*[+-]?\d+\s*', value):
    number = int(value)
  else:
    raise _bad(path, value, 'an INTEGER')
  if not INT64_MIN <= number <= INT64_MAX:
    raise Refused('out_of_range', path, '%d is outside INT64' % number)
  return number


def _float(value, path):
  if _is_number(value):
    return float(value)
  if isinstance(value, str):
    special = {'nan': math.nan, 'infinity': math.inf, '-infinity': -math.inf,
               '+infinity': math.inf}
    if value.strip().lower() in special:
      return special[value.strip().lower()]
    try:
      if re.fullmatch(r'\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*', value):
        return float(value)
    except OverflowError:
      pass
  raise _bad(path, value, 'a FLOAT')


def _decimal(value, path, kind, limits):
  scale, digits = limits
  if _is_number(value) and not (isinstance(value, float)
                                 and not math.isfinite(value)):
    number = decimal.Decimal(repr(value) if isinstance(value, float)
                             else value)
  elif isinstance(value, str):
    try:
      number = decimal.Decimal(value.strip())
    except decimal.InvalidOperation:
      raise _bad(path, value, 'a ' + kind)
    if not number.is_finite():
      raise _bad(path, value, 'a finite ' + kind)
  else:
    raise _bad(path, value, 'a ' + kind)
  if number.as_tuple().exponent >= -scale and number.adjusted() < digits:
    return number  # no rounding needed, and fewer integer digits than the limit
  rounded = number.quantize(_QUANTUM[kind], context=_DECIMAL)
  if abs(rounded) > _LIMIT[kind]:
    raise Refused('out_of_range', path, '%s is outside %s' % (value, kind))
  return rounded


def _boolean(value, path):
  if isinstance(value, bool):
    return value
  if isinstance(value, str) and value.strip().lower() in ('true', 'false'):
    return value.strip().lower() == 'true'
  raise _bad(path, value, 'a BOOLEAN')


def _fraction_micros(text):
  """'12:34:56.1234567' -> (12:34:56, micros): BigQuery keeps microseconds."""
  main, _, frac = text.partition('.')
  return main, int((frac + '000000')[:6]) if frac else 0


def _date(text, path, value):
  try:
    year, month, day = (int(p) for p in text.split('-'))
    return datetime.date(year, month, day)
  except ValueError as e:
    raise Refused('out_of_range' if 'year' in str(e) else 'bad_value', path,
                  '%s is not a DATE: %s' % (json.dumps(value), e))


def _time(text, path, value):
  main, micros = _fraction_micros(text)
  try:
    hour, minute, second = (int(p) for p in main.split(':'))
    return datetime.time(hour, minute, second, micros)
  except ValueError as e:
    raise Refused('bad_value', path, '%s is not a TIME: %s' % (
        json.dumps(value), e))


def _timestamp(value, path):
  if _is_number(value):
    if not math.isfinite(value):
      raise _bad(path, value, 'a TIMESTAMP')
    try:
      return datetime.datetime(1970, 1, 1, tzinfo=UTC) + datetime.timedelta(
          seconds=value)
    except OverflowError:
      raise Refused('out_of_range', path, '%s is outside TIMESTAMP' % value)
  if not isinstance(value, str):
    raise _bad(path, value, 'a TIMESTAMP')
  text = value.strip()
  if _DATE_TEXT.fullmatch(text):
    date_part, time_part, zone = text, '00:00:00', None
  else:
    match = _TIMESTAMP_TEXT.fullmatch(text)
    if not match:
      raise _bad(path, value, 'a TIMESTAMP')
    date_part, time_part, zone = match.groups()
  day = _date(date_part, path, value)
  if time_part.count(':') == 1:
    time_part += ':00'
  clock = _time(time_part, path, value)
  if zone is None or zone.upper() in ('Z', 'UTC'):
    offset = datetime.timedelta(0)
  else:
    sign = -1 if zone[0] == '-' else 1
    digits = zone[1:].replace(':', '')
    offset = sign * datetime.timedelta(hours=int(digits[:2]),
                                       minutes=int(digits[2:] or 0))
  try:
    local = datetime.datetime.combine(day, clock, tzinfo=UTC)
    return local - offset
  except OverflowError:
    raise Refused('out_of_range', path, '%s is outside TIMESTAMP' % value)


def _datetime(value, path):
  match = isinstance(value, str) and _DATETIME_TEXT.fullmatch(value.strip())
  if not match:
    raise _bad(path, value, 'a DATETIME')
  return datetime.datetime.combine(_date(match.group(1), path, value),
                                   _time(match.group(2), path, value))


def _join(prefix, name):
  return '%s.%s' % (prefix, name) if prefix else name


_COMMON_TIMESTAMP = re.compile(
    r'\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?'
    r'(?:Z|[+-]\d{2}:\d{2})?')
_COMMON_DATE = re.compile(r'\d{4}-\d{2}-\d{2}')


def _fast_timestamp(value, path):
  """The common RFC 3339 shapes through the standard library, else the
  general reader (the same value either way; a test holds them equal)."""
  if type(value) is str and _COMMON_TIMESTAMP.fullmatch(value):  # pylint: disable=unidiomatic-typecheck
    try:
      parsed = datetime.datetime.fromisoformat(value)
      if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
      return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
      pass
  return _timestamp(value, path)


def _string(value, path):
  if _is_number(value) or isinstance(value, bool):
    return json.dumps(value)
  raise _bad(path, value, 'a STRING')


def _bytes(value, path):
  if isinstance(value, str):
    try:
      return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
      pass
  raise _bad(path, value, 'BYTES in base64')


def _date_value(value, path):
  if isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()):
    return _date(value.strip(), path, value)
  raise _bad(path, value, 'a DATE')


def _time_value(value, path):
  if isinstance(value, str) and _TIME_TEXT.fullmatch(value.strip()):
    return _time(value.strip(), path, value)
  raise _bad(path, value, 'a TIME')


def _scalar_converter(field, unknown):
  """field -> convert(value, path): the type's reader, common forms first."""
  kind = field.type
  if kind == 'STRING':
    return lambda v, path: v if type(v) is str else _string(v, path)  # pylint: disable=unidiomatic-typecheck
  if kind == 'BYTES':
    return _bytes
  if kind == 'INTEGER':
    return lambda v, path: (v if type(v) is int and INT64_MIN <= v <= INT64_MAX  # pylint: disable=unidiomatic-typecheck
                            else _integer(v, path))
  if kind == 'FLOAT':
    return lambda v, path: (float(v) if type(v) in (int, float)  # pylint: disable=unidiomatic-typecheck
                            else _float(v, path))
  if kind in ('NUMERIC', 'BIGNUMERIC'):
    limits = _NUMERIC if kind == 'NUMERIC' else _BIGNUMERIC
    return lambda v, path: _decimal(v, path, kind, limits)
  if kind == 'BOOLEAN':
    return lambda v, path: v if type(v) is bool else _boolean(v, path)  # pylint: disable=unidiomatic-typecheck
  if kind == 'TIMESTAMP':
    return _fast_timestamp
  if kind == 'DATE':
    def date_value(v, path):
      if type(v) is str and _COMMON_DATE.fullmatch(v):  # pylint: disable=unidiomatic-typecheck
        try:
          return datetime.date.fromisoformat(v)
        except ValueError:
          pass
      return _date_value(v, path)
    return date_value
  if kind == 'TIME':
    return _time_value
  if kind == 'DATETIME':
    return _datetime
  if kind == 'JSON':
    return lambda v, path: _JSON_TEXT(v)
  if kind == 'RECORD':
    convert = RowConverter(field.fields, unknown)

    def record(v, path):
      if type(v) is not dict:  # pylint: disable=unidiomatic-typecheck
        raise _bad(path, v, 'an object')
      return convert(v, path)
    return record
  raise ValueError('unsupported type %s' % kind)


def _field_converter(field, unknown):
  """field -> convert(value, prefix): mode handling around the type's reader."""
  scalar = _scalar_converter(field, unknown)
  name = field.name
  if field.mode == 'REPEATED':
    def repeated(value, prefix):
      if value is None:
        return []
      path = _join(prefix, name)
      if type(value) is not list:  # pylint: disable=unidiomatic-typecheck
        raise _bad(path, value, 'an array')
      out = []
      for i, item in enumerate(value):
        item_path = '%s[%d]' % (path, i)
        if item is None:
          raise Refused('bad_value', item_path, 'null in an array')
        out.append(scalar(item, item_path))
      return out
    return repeated
  required = field.mode == 'REQUIRED'
  nested = field.type == 'RECORD'  # its fields' paths need this one's

  def single(value, prefix):
    if value is None:
      if required:
        raise Refused('missing_field', _join(prefix, name),
                      'required, absent or null')
      return None
    try:
      return scalar(value, _join(prefix, name) if nested else None)
    except Refused as e:
      if e.path is None:  # raised at this level: name the field now
        raise Refused(e.reason, _join(prefix, name), str(e))
      raise
  return single


class RowConverter(object):
  """Fields -> a callable converting one JSON object, built once per schema
  (each field's reader chosen up front, not per value)."""
  def __init__(self, fields, unknown='ignore'):
    self._convs = [(f.name, _field_converter(f, unknown)) for f in fields]
    self._known = frozenset(f.name for f in fields)
    self._reject = unknown == 'reject'

  def __call__(self, payload, prefix=''):
    row = {}
    get = payload.get
    for name, convert in self._convs:
      row[name] = convert(get(name), prefix)
    if self._reject and not self._known.issuperset(payload):
      unknown = next(n for n in payload if n not in self._known)
      raise Refused('unknown_field', _join(prefix, unknown), 'not in the schema')
    return row


def convert_object(payload, fields, unknown='ignore', prefix=''):
  """A JSON object -> {column: Python value} for ``fields``; raises Refused."""
  return RowConverter(fields, unknown)(payload, prefix)
