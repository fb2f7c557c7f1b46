"""Sign-in messages -> validated rows, or dead letters with a stable reason.

``ParseSignins`` is the seed's ``MessageExtractingFn`` grown up: every input
message yields exactly one output, a row on the main output or a dead letter
on ``dead_letters``, and never raises. Bad input is data, not an exception.

Accepted ``date`` forms:
- a string in ISO 8601 / RFC 3339 (python-dateutil's ``isoparse``): with an
  offset or ``Z``; naive means ``default_timezone`` (UTC unless told); a date
  alone means its midnight; any single separator between date and time;
- a string in RFC 2822 / HTTP form with an explicit zone (``Tue, 17 Oct
  2017 20:57:17 GMT``, as JavaScript's ``Date.toUTCString()``, e-mail and HTTP
  headers write it), parsed by the standard library; a weekday that does not
  match the date, or the zone ``-0000`` ("unknown"), is refused;
- a JSON number of seconds since the Unix epoch, or of milliseconds when its
  absolute value is 1e11 or more (1e11 s is the year 5138; 1e11 ms is 1973).
The result is UTC and must fit BigQuery's TIMESTAMP (years 0001-9999).
"""

import datetime
import decimal
import email.utils
import re
import traceback
from typing import Iterable
from typing import Union

import msgspec

from apache_beam.io.gcp.pubsub import PubsubMessage
from dateutil import parser as date_parser
from dateutil import tz

from transforms import dead_letters
from transforms import event_time
from transforms import exact_json

EPOCH_MILLIS_FROM = 1e11
UTC = datetime.timezone.utc
DEAD_LETTERS = dead_letters.DEAD_LETTERS
MAX_MESSAGE_BYTES = dead_letters.MAX_MESSAGE_BYTES
REASONS = dead_letters.reasons(
    'missing_userid', 'bad_userid', 'missing_date', 'bad_date',
    'date_out_of_range', 'duplicate_field')
Invalid = dead_letters.Invalid
_clip = dead_letters.clip
_json_kind = dead_letters.json_kind

_INTEGER_TEXT = re.compile(r'-?[0-9]+')


def parse_userid(value):
  """JSON value -> non-empty trimmed string; integers become their decimal string."""
  if value is None:
    raise Invalid('missing_userid', 'userid is missing')
  kind = type(value)
  if kind is int or (kind is exact_json.Number and _INTEGER_TEXT.fullmatch(value)):
    return str(value)
  if kind is not str:
    raise Invalid('bad_userid', 'userid must be a string or an integer, not %s'
                  % _json_kind(value))
  userid = value.strip()
  if not userid:
    raise Invalid('bad_userid', 'userid is empty')
  return userid


def parse_date(value, default_tz=UTC):
  """JSON value -> aware UTC datetime (see the module docstring for the rules)."""
  if value is None:
    raise Invalid('missing_date', 'date is missing')
  kind = type(value)
  if kind is int or kind is exact_json.Number or kind is float:
    return _from_epoch(value)
  if kind is not str:
    raise Invalid('bad_date', 'date must be a string or a number, not %s'
                  % _json_kind(value))
  parsed = _common_iso(value)  # the common case, no strip needed
  if parsed is not None:
    return parsed if parsed.tzinfo is UTC else _to_utc(parsed, default_tz, value)
  text = value.strip()
  try:
    if _RFC2822.fullmatch(text):
      parsed = parse_rfc2822(text)
    else:
      parsed = parse_iso8601(text)
  except (ValueError, OverflowError) as e:
    raise Invalid('bad_date', 'date %r is neither ISO 8601 nor RFC 2822 with '
                  'a zone: %s' % (_clip(value), e))
  return _to_utc(parsed, default_tz, value)


def _to_utc(parsed, default_tz, value):
  if parsed.tzinfo is None:
    parsed = parsed.replace(tzinfo=default_tz)
  try:
    return parsed.astimezone(UTC)
  except (OverflowError, ValueError):
    raise Invalid('date_out_of_range',
                  'date %r is outside years 0001-9999 in UTC' % _clip(value))


# The common shapes, which the standard library parses to the same value as
# dateutil ~4x faster (a property test holds the two to each other); any
# other string, or one the fast path refuses, goes to dateutil.
# Hours and minutes in range: fromisoformat reads an offset of +00:60 as
# +01:00, which dateutil refuses (a property test holds the two equal).
_HH_MM = r'(?:[01][0-9]|2[0-3]):[0-5][0-9]'
_COMMON_ISO = re.compile(
    r'[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ]%s(?::[0-5][0-9](?:\.[0-9]{1,6})?)?)?'
    r'(?:Z|[+-]%s)?' % (_HH_MM, _HH_MM))


def _common_iso(text):
  """The common ISO 8601 shapes through the standard library, or None."""
  if _COMMON_ISO.fullmatch(text):
    try:
      return datetime.datetime.fromisoformat(text)
    except ValueError:
      pass
  return None


def parse_iso8601(text):
  """ISO 8601 text -> datetime, exactly as dateutil's ``isoparse`` reads it."""
  return _common_iso(text) or date_parser.isoparse(text)


_RFC2822 = re.compile(
    r'(?:(Mon|Tue|Wed|Thu|Fri|Sat|Sun),\s*)?\d{1,2}\s+'
    r'(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{4}\s+'
    r'\d{2}:\d{2}(?::\d{2})?\s+(?:[+-]\d{4}|GMT|UTC?|[ECMP][SD]T)',
    re.IGNORECASE)
_WEEKDAYS = ('mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun')


def parse_rfc2822(text):
  """RFC 2822 / HTTP date text with an explicit zone -> aware datetime."""
  parsed = email.utils.parsedate_to_datetime(text)
  if parsed.tzinfo is None:
    raise ValueError('zone -0000 means unknown')
  weekday = _RFC2822.fullmatch(text).group(1)
  if weekday and _WEEKDAYS.index(weekday.lower()) != parsed.weekday():
    raise ValueError('%s is not a %s' % (parsed.date(), weekday))
  return parsed


def _from_epoch(number):
  """Seconds (or milliseconds from 1e11) since the epoch, read exactly from
  the number's text."""
  try:
    seconds = decimal.Decimal(repr(number) if type(number) is float else number)  # pylint: disable=unidiomatic-typecheck
  except decimal.InvalidOperation:
    raise Invalid('bad_date', 'date %s is not a number' % _clip(str(number)))
  if not seconds.is_finite():
    raise Invalid('bad_date', 'date %s is not a finite number' % number)
  if abs(seconds) >= EPOCH_MILLIS_FROM:
    seconds = seconds.scaleb(-3)
  try:
    return event_time.datetime_from_epoch(seconds)
  except OverflowError:
    raise Invalid('date_out_of_range',
                  'epoch %s is outside years 0001-9999' % _clip(str(number)))


_SIGNIN_KEYS = ('userid', 'date')


def signin_fields(payload):
  """(userid, date) values, keys matched as BigQuery matches column names
  (case-insensitively); two keys naming one field are duplicate_field."""
  get = payload.get
  userid, date = get('userid'), get('date')
  if len(payload) == 2 and userid is not None and date is not None:
    return userid, date
  found = {}
  for key, value in payload.items():
    name = key if key in _SIGNIN_KEYS else key.lower()
    if name in _SIGNIN_KEYS:
      if name in found:
        raise Invalid('duplicate_field', 'two keys name the field %s (field '
                      'names ignore case)' % name)
      found[name] = value
  return found.get('userid'), found.get('date')


def parse_signin(message, default_tz=UTC, max_bytes=MAX_MESSAGE_BYTES):
  """PubsubMessage -> row dict; raises Invalid for a bad message."""
  payload, checked = dead_letters.decode_object(message, max_bytes)
  userid, date = signin_fields(payload)
  row = {
      'userid': parse_userid(userid),
      'date': parse_date(date, default_tz),
      'message_id': dead_letters.stored_id(message.message_id),
      'publish_time': dead_letters.publish_time(message),
  }
  if not checked and not exact_json.is_encodable(row['userid']):
    raise Invalid('bad_userid', 'userid holds a lone surrogate escape, which '
                  'is not Unicode text')
  return row


class _Signin(msgspec.Struct, forbid_unknown_fields=True, gc=False):
  """The common sign-in, as msgspec reads it in C: exactly the two keys, a
  string or integer userid, a string date."""
  userid: Union[str, int]
  date: str


_decode_signin = msgspec.json.Decoder(_Signin).decode
_read_rfc3339 = msgspec.convert  # (text, datetime): RFC 3339, in C


def compiled_signin_outputs(default_tz, max_bytes, stamp_rows,
                            stamped=event_time.stamped):
  """-> outputs(message): the one-output sequence of a common sign-in (the
  row, stamped with its date unless ``stamp_rows`` is False), in one C call
  and msgspec's RFC 3339 reader, or None (or any exception) when the exact
  path must decide: a key of another case or another key, a date in
  another form, a seventh fractional digit (which msgspec would round), an
  empty userid. Speed only, held to ``parse_signin`` by a property test.
  One function for the decode, the checks and the row: each call saved is
  ~0.05 us of a ~2 us message."""
  decode, read, datetime_type = (_decode_signin, _read_rfc3339,
                                 datetime.datetime)
  stored_id, publish_time = dead_letters.stored_id, dead_letters.publish_time

  def outputs(message):
    data = message.data
    if (type(data) is not bytes or len(data) > max_bytes  # pylint: disable=unidiomatic-typecheck
        or getattr(message, 'given_up', None) is not None):
      return None
    signin = decode(data)
    userid = signin.userid
    userid = userid.strip() if type(userid) is str else str(userid)  # pylint: disable=unidiomatic-typecheck
    date = signin.date
    if not userid or date[26:27].isdigit():  # a seventh fractional digit
      return None
    date = read(date, datetime_type)
    if date.tzinfo is not UTC:
      date = (date.replace(tzinfo=default_tz) if date.tzinfo is None
              else date).astimezone(UTC)
    message_id = message.message_id
    row = {'userid': userid, 'date': date,
           'message_id': message_id if type(message_id) is str and (  # pylint: disable=unidiomatic-typecheck
               message_id.isascii()) else stored_id(message_id),
           'publish_time': None if message.publish_time is None else (
               publish_time(message))}
    return (stamped(row, date),) if stamp_rows else (row,)
  return outputs


class ParseSigninFn(dead_letters.ParseMessageFn):
  """One message in, one row (main output, event-time stamped) or one dead
  letter out."""
  def __init__(self, default_timezone='UTC', max_message_bytes=MAX_MESSAGE_BYTES):
    super().__init__('user_signin', REASONS)
    self._tz_name = default_timezone
    self._max_bytes = max_message_bytes

  def setup(self):
    super().setup()
    self._tz = resolve_timezone(self._tz_name)
    self._stamp = event_time.stamper(self.global_window)
    self._compiled = compiled_signin_outputs(self._tz, self._max_bytes,
                                             self.stamp_rows, self._stamp)
    self._dead = 0

  def process(self, message: PubsubMessage) -> Iterable[dead_letters.Row]:
    """A one-output sequence (not a generator: ~0.3 us less a message)."""
    self._seen += 1  # rows are counted as the messages not dead letters
    try:  # the common sign-in in one C call
      outputs = self._compiled(message)
    except Exception:  # pylint: disable=broad-except
      outputs = None  # the exact path decides, and names the reason
    if outputs is not None:
      return outputs
    try:
      row = parse_signin(message, self._tz, self._max_bytes)
    except Invalid as e:
      self._dead += 1
      return (self.dead(message, e.reason, e),)
    except Exception as e:  # pylint: disable=broad-except
      self._dead += 1
      return (self.dead(message, 'internal_error', e,
                        traceback.format_exc()),)
    return (self._stamp(row, row['date']) if self.stamp_rows
            else row,)

  def start_bundle(self):
    super().start_bundle()
    self._dead = 0

  def finish_bundle(self):
    self._rows = self._seen - self._dead
    super().finish_bundle()

  def outputs(self, message, timestamp):
    return self.process(message)  # a sign-in's time is its own


def resolve_timezone(name):
  """'UTC', 'Europe/Paris', '+02:00' -> tzinfo; ValueError when unknown."""
  zone = tz.UTC if name.upper() in ('UTC', 'Z') else tz.gettz(name)
  if zone is None:
    raise ValueError('unknown time zone %r' % name)
  return zone


class ParseSignins(dead_letters.ParseMessages):
  """PubsubMessages -> rows (main) and dead letters (``dead_letters``)."""
  def __init__(self, default_timezone='UTC', max_message_bytes=MAX_MESSAGE_BYTES):
    resolve_timezone(default_timezone)  # fail at construction, not per element
    super().__init__(ParseSigninFn(default_timezone, max_message_bytes))
