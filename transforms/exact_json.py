"""JSON payloads read and written without changing a number or a string.

``loads`` parses with msgspec (a kept C library, ~10x the standard
library's speed here) and keeps every JSON number that is not a plain
integer as its exact text (``Number``), so that NUMERIC, BIGNUMERIC, STRING
and JSON columns get what the message said, never a binary float's
rounding. Python ints are exact already. msgspec refuses lone surrogate
escapes (``"\\ud800"``), which are valid JSON but not Unicode; for those,
and for integers too long for Python's int parser, the standard library
reads the text with the same number rule and ``loads`` says the strings are
not known to be encodable, so the caller checks the ones it keeps.

``dumps`` writes a parsed value back as compact JSON with sorted keys and
each ``Number`` as its own text.
"""

import json

import msgspec

MAX_DEPTH = 500  # BigQuery's JSON type nests at most 500 levels


class Number(str):
  """The exact text of a JSON number that is not a plain integer
  (``1.10``, ``1e400``, ``-0.0``), or an integer too long to parse."""
  __slots__ = ()


class NotJson(ValueError):
  """The payload is not one JSON text (the message says why)."""


class NotUtf8(ValueError):
  """The payload's bytes are not UTF-8."""


def _refuse_constant(name):
  raise ValueError('%s is not JSON' % name)


def _int_or_text(text):
  # Python refuses int() of over 4,300 digits; such a number is kept as text.
  return int(text) if len(text) < 4000 else Number(text)


_FAST = msgspec.json.Decoder(float_hook=Number)
# What ``loads`` tries first: a payload it decodes holds no lone surrogate.
msgspec_decode = _FAST.decode
_STANDARD = json.JSONDecoder(parse_float=Number, parse_int=_int_or_text,
                             parse_constant=_refuse_constant)


def loads(data):
  """bytes -> (value, strings_checked). ``strings_checked`` is False when a
  string may hold a lone surrogate (the caller must check what it keeps).
  Raises NotUtf8 or NotJson."""
  try:
    return _FAST.decode(data), True
  except (msgspec.DecodeError, RecursionError) as fast_error:
    first_error = fast_error
  try:
    text = bytes(data).decode('utf-8')
  except UnicodeDecodeError as e:
    raise NotUtf8('payload is not UTF-8: %s' % e)
  if isinstance(first_error, RecursionError):
    raise NotJson('payload nests deeper than the parser allows')
  try:
    return _STANDARD.decode(text), False
  except (ValueError, RecursionError) as e:
    raise NotJson('payload is not JSON: %s' % (str(e) or first_error))


def _raw_number(value):
  if type(value) is Number:  # pylint: disable=unidiomatic-typecheck
    return msgspec.Raw(value.encode('ascii'))
  raise TypeError('%s is not a JSON value' % type(value).__name__)


_ENCODER = msgspec.json.Encoder(enc_hook=_raw_number, order='sorted')


def dumps(value):
  """A parsed JSON value -> compact JSON text, sorted keys, numbers as
  written. Raises UnicodeEncodeError for a lone surrogate."""
  return _ENCODER.encode(value).decode('utf-8')


def dumps_each(values):
  """``dumps`` of each value, encoded in one call (compact JSON has no raw
  newline: the lines are the texts). Raises UnicodeEncodeError for a lone
  surrogate."""
  return _ENCODER.encode_lines(values).decode('utf-8').split('\n')[:-1]


def is_encodable(text):
  """False for a str holding a lone surrogate (it cannot be UTF-8)."""
  if text.isascii():
    return True
  try:
    text.encode('utf-8')
    return True
  except UnicodeEncodeError:
    return False


def printable(text):
  """text with lone surrogates escaped (\\ud800), safe for any UTF-8 sink."""
  if is_encodable(text):
    return text
  return text.encode('utf-8', 'backslashreplace').decode('utf-8')


def first_unencodable(value, path=''):
  """The path of the first string (or key) in a parsed value that holds a
  lone surrogate, or None."""
  stack = [(value, path)]
  while stack:
    item, where = stack.pop()
    kind = type(item)
    if kind is str:
      if not is_encodable(item):
        return where
    elif kind is dict:
      for key, child in item.items():
        child_path = '%s.%s' % (where, key) if where else key
        if not is_encodable(key):
          return printable(child_path)
        stack.append((child, child_path))
    elif kind is list:
      stack.extend((child, '%s[%d]' % (where, i)) for i, child in enumerate(item))
  return None
