"""TIMESTAMP, DATE, TIME and DATETIME values as BigQuery reads them from
JSON: text in its canonical and common forms, or (TIMESTAMP) a number of
seconds since the epoch read exactly from its text; a ``Refused`` naming the
field otherwise. Part of ``bigquery_values``.

As BigQuery documents them (GoogleSQL data types,
https://cloud.google.com/bigquery/docs/reference/standard-sql/data-types):
a time of day has at most six fractional digits (microseconds), so seven or
more are refused rather than cut; a TIMESTAMP's ``:60`` (a leap second) is
read as ``:00`` of the next minute, which is documented for TIMESTAMP only:
DATETIME and TIME take seconds 00-59.
"""

import datetime
import math
import re

from transforms.bigquery_values import Refused
from transforms.bigquery_values import UTC
from transforms.bigquery_values import _bad
from transforms.bigquery_values import _decimal_of
from transforms.bigquery_values import _is_number
from transforms.bigquery_values import _out_of_range
from transforms.bigquery_values import _shown
from transforms.event_time import datetime_from_epoch

# Any number of fractional digits is matched, so that more than six is
# refused as such (not as an unreadable text).
_DATE = r'([0-9]{4,})-([0-9]{1,2})-([0-9]{1,2})'
_CLOCK = r'([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?'
_ZONE = r'(Z|UTC|[+-][0-9]{2}(?::?[0-9]{2})?)'
_DATE_TEXT = re.compile(_DATE)
_TIME_TEXT = re.compile(r'([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?')
_TIMESTAMP_TEXT = re.compile(
    _DATE + r'(?:[T ]' + _CLOCK + r'\s*' + _ZONE + r'?)?', re.IGNORECASE)
_DATETIME_TEXT = re.compile(
    _DATE + r'[T ]([0-9]{1,2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?')
_COMMON_TIMESTAMP = re.compile(
    r'[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}'
    r'(?::[0-9]{2}(?:\.[0-9]{1,6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?')
_COMMON_DATE = re.compile(r'[0-9]{4}-[0-9]{2}-[0-9]{2}')
_MAX_FRACTION = 6  # BigQuery keeps microseconds
_LEAP = datetime.timedelta(seconds=1)


def _micros(fraction):
  """'1234' (digits after the point, at most six) -> microseconds."""
  return int((fraction + '000000')[:6]) if fraction else 0


def _date_parts(year, month, day, path, value, what):
  try:
    return datetime.date(int(year), int(month), int(day))
  except ValueError as e:
    if len(year) > 4 or int(year) == 0:
      raise _out_of_range(path, value, what + ' (years 0001-9999)')
    raise Refused('bad_value', path, '%s is not a %s: %s' % (
        _shown(value), what, e))


def _clock(hour, minute, second, fraction, path, value, what):
  if fraction and len(fraction) > _MAX_FRACTION:
    raise Refused('bad_value', path, '%s is not a %s: at most %d fractional '
                  'digits (BigQuery keeps microseconds)' % (
                      _shown(value), what, _MAX_FRACTION))
  if second == '60':  # a TIMESTAMP's leap second is read before this
    raise Refused('bad_value', path, '%s is not a %s: second 60 (a leap '
                  'second) is read only in a TIMESTAMP' % (_shown(value), what))
  try:
    return datetime.time(int(hour), int(minute), int(second or 0),
                         _micros(fraction))
  except ValueError as e:
    raise Refused('bad_value', path, '%s is not a %s: %s' % (
        _shown(value), what, e))


def _epoch_timestamp(value, path):
  """Seconds since the epoch (exact decimal arithmetic) -> aware datetime."""
  if type(value) is float and not math.isfinite(value):  # pylint: disable=unidiomatic-typecheck
    raise _bad(path, value, 'a TIMESTAMP')
  try:
    return datetime_from_epoch(_decimal_of(value))
  except OverflowError:
    raise _out_of_range(path, value, 'TIMESTAMP (years 0001-9999)')


def _timestamp(value, path):
  if _is_number(value):
    return _epoch_timestamp(value, path)
  match = type(value) is str and _TIMESTAMP_TEXT.fullmatch(value.strip())  # pylint: disable=unidiomatic-typecheck
  if not match:
    raise _bad(path, value, 'a TIMESTAMP')
  year, month, day, hour, minute, second, fraction, zone = match.groups()
  day_ = _date_parts(year, month, day, path, value, 'TIMESTAMP')
  # A leap second: ':60' is ':00' of the next minute, as BigQuery reads it.
  leap = second == '60'
  clock = _clock(hour or 0, minute or 0, '59' if leap else second, fraction,
                 path, value, 'TIMESTAMP')
  offset = datetime.timedelta(0)
  if zone and zone.upper() not in ('Z', 'UTC'):
    digits = zone[1:].replace(':', '')
    offset = datetime.timedelta(hours=int(digits[:2]),
                                minutes=int(digits[2:] or 0))
    if zone[0] == '-':
      offset = -offset
  if leap:
    offset -= _LEAP
  try:
    return datetime.datetime.combine(day_, clock, tzinfo=UTC) - offset
  except OverflowError:
    raise _out_of_range(path, value, 'TIMESTAMP (years 0001-9999)')


def _fast_timestamp(value, path):
  """The common RFC 3339 shapes through the standard library, else the
  general reader (the same value either way; a test holds them equal). An
  aware UTC datetime (an Avro or Protocol Buffer timestamp, decoded) is
  the value already."""
  if type(value) is datetime.datetime and value.tzinfo is UTC:  # pylint: disable=unidiomatic-typecheck
    return value
  if type(value) is str and _COMMON_TIMESTAMP.fullmatch(value):  # pylint: disable=unidiomatic-typecheck
    try:
      parsed = datetime.datetime.fromisoformat(value)
      zone = parsed.tzinfo
      if zone is UTC:
        return parsed
      if zone is None:
        return parsed.replace(tzinfo=UTC)
      return parsed.astimezone(UTC)
    except (ValueError, OverflowError):
      pass
  return _timestamp(value, path)


def _datetime(value, path):
  match = type(value) is str and _DATETIME_TEXT.fullmatch(value.strip())  # pylint: disable=unidiomatic-typecheck
  if not match:
    raise _bad(path, value, 'a DATETIME')
  year, month, day, hour, minute, second, fraction = match.groups()
  return datetime.datetime.combine(
      _date_parts(year, month, day, path, value, 'DATETIME'),
      _clock(hour, minute, second, fraction, path, value, 'DATETIME'))


def _date_value(value, path):
  if type(value) is datetime.date:  # pylint: disable=unidiomatic-typecheck
    return value  # a decoded Avro date
  if type(value) is str:  # pylint: disable=unidiomatic-typecheck
    if _COMMON_DATE.fullmatch(value):
      try:
        return datetime.date.fromisoformat(value)
      except ValueError:
        pass
    match = _DATE_TEXT.fullmatch(value.strip())
    if match:
      return _date_parts(*match.groups(), path, value, 'DATE')
  raise _bad(path, value, 'a DATE')


def _time_value(value, path):
  if type(value) is datetime.time and value.tzinfo is None:  # pylint: disable=unidiomatic-typecheck
    return value  # a decoded Avro time
  match = type(value) is str and _TIME_TEXT.fullmatch(value.strip())  # pylint: disable=unidiomatic-typecheck
  if not match:
    raise _bad(path, value, 'a TIME')
  return _clock(*match.groups(), path, value, 'TIME')


READERS = {'TIMESTAMP': _fast_timestamp, 'DATE': _date_value,
           'TIME': _time_value, 'DATETIME': _datetime}
