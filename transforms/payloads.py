"""Pub/Sub payloads -> the JSON-like object the row converter takes: JSON
(the exact parse), or Avro and Protocol Buffers under a topic schema, in
Pub/Sub's BINARY or JSON encoding, each message under its own schema
revision (https://cloud.google.com/pubsub/docs/schemas).

A decoded message is a dict of ints, floats, strings, bools, None, lists
and dicts, with every value of a logical type as the text BigQuery's JSON
API takes (decimals as exact number text, timestamps as ISO text, bytes as
base64): the same converter then checks it against the table, so values
refused or kept follow the same rules whatever the payload's format.
Decoding never raises anything but ``dead_letters.Invalid`` (``not_avro``,
``not_protobuf``, ``unknown_schema_revision``) or ``Refused`` (a value its
logical type cannot hold: ``out_of_range``, with its field's path).
"""

import base64
import datetime
import decimal
import io

from transforms import dead_letters
from transforms.bigquery_values import Refused
from transforms.bigquery_values import Symbol
from transforms.exact_json import Number

FORMATS = ('json', 'avro', 'protobuf')
ENCODINGS = ('binary', 'json')
ENCODING_ATTRIBUTE = 'googclient_schemaencoding'
REVISION_ATTRIBUTE = 'googclient_schemarevisionid'
NAME_ATTRIBUTE = 'googclient_schemaname'
REASONS = ('not_avro', 'not_protobuf', 'unknown_schema_revision')
UTC = datetime.timezone.utc
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = datetime.date(1970, 1, 1)
_MIN_TIME = datetime.datetime(1, 1, 1, tzinfo=UTC)
_MAX_TIME = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


class JsonPayloads(object):
  """JSON payloads: the exact parse (``dead_letters.decode_object``)."""
  format = 'json'

  def decode(self, message, max_bytes):
    return dead_letters.decode_object(message, max_bytes)


class SchemaPayloads(object):
  """Avro or Protocol Buffer payloads under one or more schema revisions.

  ``revisions``: {revision id: AvroRevision or ProtobufRevision}; the key
  None is the schema for messages whatever their revision (one schema file
  given). ``encoding``: for messages without Pub/Sub's encoding attribute.
  """
  def __init__(self, format_name, revisions, encoding='binary'):
    self.format = format_name
    self._revisions = dict(revisions)
    self._any = self._revisions.get(None)
    self._encoding = encoding.upper()

  def revision_of(self, message):
    """The revision that decodes ``message``; Invalid when it is not given."""
    if self._any is not None:
      return self._any
    rid = (message.attributes or {}).get(REVISION_ATTRIBUTE)
    revision = self._revisions.get(rid)
    if revision is None:
      raise dead_letters.Invalid(
          'unknown_schema_revision',
          'schema revision %s is not among the %d given (%s)' % (
              dead_letters.clip(repr(rid)) if rid is not None else
              '(no %s attribute)' % REVISION_ATTRIBUTE, len(self._revisions),
              ', '.join(sorted(self._revisions))))
    return revision

  def decode(self, message, max_bytes):
    """PubsubMessage -> (its object, strings_checked); raises Invalid."""
    dead_letters.check_given_up(message)
    data = message.data or b''
    if len(data) > max_bytes:
      raise dead_letters.Invalid(
          'too_large', 'payload is %d bytes, over the limit of %d' % (
              len(data), max_bytes))
    revision = self.revision_of(message)
    encoding = (message.attributes or {}).get(ENCODING_ATTRIBUTE)
    encoding = self._encoding if encoding is None else encoding.upper()
    if encoding not in ('BINARY', 'JSON'):
      raise dead_letters.Invalid(revision.reason, '%s is %s, not BINARY or '
                                 'JSON' % (ENCODING_ATTRIBUTE,
                                           dead_letters.clip(repr(encoding))))
    try:
      return revision.decode(data, encoding)
    except (dead_letters.Invalid, Refused):
      raise  # Refused: a value out of its logical type's range, named
    except Exception as e:  # pylint: disable=broad-except
      raise dead_letters.Invalid(revision.reason, '%s does not decode under '
                                 'the schema (%s encoding): %s' % (
                                     revision.kind, encoding,
                                     dead_letters.clip(str(e) or type(
                                         e).__name__, 200)))


def _b64(value):
  return base64.b64encode(value).decode('ascii')


def _in_range(when, path):
  if not _MIN_TIME <= when <= _MAX_TIME:
    raise Refused('out_of_range', path, '%s is outside TIMESTAMP\'s range'
                  % when)
  return when


# ------------------------------------------------------------------- Avro

_AVRO_PRIMITIVES = {'null', 'boolean', 'int', 'long', 'float', 'double',
                    'bytes', 'string'}


def _micros_text(micros, path):
  try:
    when = _EPOCH + datetime.timedelta(microseconds=micros)
  except OverflowError:
    raise Refused('out_of_range', path, '%d microseconds since 1970 is '
                  'outside TIMESTAMP\'s range' % micros)
  return _in_range(when, path).isoformat()


def _date_text(days, path):
  try:
    return (_EPOCH_DATE + datetime.timedelta(days=days)).isoformat()
  except OverflowError:
    raise Refused('out_of_range', path, '%d days since 1970 is outside '
                  'DATE\'s range' % days)


def _time_text(micros, path):
  if not 0 <= micros < 86400 * 10**6:
    raise Refused('out_of_range', path, '%d microseconds is not a time of '
                  'day' % micros)
  seconds, us = divmod(micros, 10**6)
  return '%02d:%02d:%02d.%06d' % (seconds // 3600, seconds // 60 % 60,
                                  seconds % 60, us)


# Exact: Decimal's default context rounds to 28 digits, and a decimal(76, 38)
# has 76 (a property test found the rounding).
_EXACT = decimal.Context(prec=200, Emax=decimal.MAX_EMAX,
                         Emin=decimal.MIN_EMIN)


def _decimal_text(unscaled, scale):
  return Number(str(decimal.Decimal(unscaled).scaleb(-scale, _EXACT)))


def _logical(schema):
  """An Avro schema's logical type converter (value, path) -> JSON-like, or
  None for a type without one (read as its underlying type)."""
  logical = schema.get('logicalType')
  base = schema.get('type')
  if logical == 'decimal' and base in ('bytes', 'fixed'):
    scale = int(schema.get('scale', 0))
    return lambda v, path: _decimal_text(
        int.from_bytes(v, 'big', signed=True), scale)
  if base in ('int', 'long'):
    # local-timestamp-*: not in the subscription's table, so read as the
    # long it annotates ("Any logical types not listed only match the
    # equivalent Avro type that they annotate").
    factor = {'timestamp-millis': 1000, 'timestamp-micros': 1}.get(logical)
    if factor:
      return lambda v, path: _micros_text(v * factor, path)
    if logical == 'date':
      return _date_text
    if logical in ('time-millis', 'time-micros'):
      factor = 1000 if logical == 'time-millis' else 1
      return lambda v, path: _time_text(v * factor, path)
  return None


def _path(path, name):
  return '%s.%s' % (path, name) if path else name


class AvroConverters(object):
  """An Avro schema -> a converter of fastavro's decoded value (read with
  logical types stripped, so that every range is checked here and named)
  to the JSON-like object of the row converter."""
  def __init__(self, schema):
    self._named = {}
    self.convert = self._of(schema, '')

  def _of(self, schema, namespace):
    if isinstance(schema, str):
      if schema in _AVRO_PRIMITIVES:
        return _b64_at if schema == 'bytes' else _same
      name = schema if '.' in schema or not namespace else (
          '%s.%s' % (namespace, schema))
      target = self._named.get(name) or self._named.get(schema)
      if target is None:
        raise ValueError('unknown Avro type %r' % schema)
      return lambda v, path: target[0](v, path)  # resolved when called
    if isinstance(schema, list):
      return self._union(schema, namespace)
    kind = schema['type']
    logical = _logical(schema)
    if logical is not None:
      if kind == 'fixed':
        self._name(schema, namespace, [logical])
      return logical
    if kind in _AVRO_PRIMITIVES:
      return self._of(kind, namespace)
    if kind == 'record':
      slot = self._name(schema, namespace, [None])
      inner = schema.get('namespace', namespace)
      fields = [(f['name'], self._of(f['type'], inner))
                for f in schema['fields']]

      def record(v, path):
        return {name: convert(v[name], _path(path, name))
                for name, convert in fields}
      slot[0] = record
      return record
    if kind == 'enum':
      index = {name: i for i, name in enumerate(schema['symbols'])}
      symbol = lambda v, path: Symbol(v, index[v])  # noqa: E731
      self._name(schema, namespace, [symbol])
      return symbol
    if kind == 'fixed':
      self._name(schema, namespace, [_b64_at])
      return _b64_at
    if kind == 'array':
      item = self._of(schema['items'], namespace)
      return lambda v, path: [item(x, '%s[%d]' % (path, i))
                              for i, x in enumerate(v)]
    if kind == 'map':
      value = self._of(schema['values'], namespace)
      return lambda v, path: [
          {'key': k, 'value': value(x, '%s[%r]' % (path, k))}
          for k, x in sorted(v.items())]
    if isinstance(kind, (dict, list)) or kind not in _AVRO_PRIMITIVES:
      return self._of(kind, namespace)
    raise ValueError('unknown Avro type %r' % kind)

  def _name(self, schema, namespace, slot):
    name = schema['name']
    full = name if '.' in name else '.'.join(
        p for p in (schema.get('namespace', namespace), name) if p)
    self._named[full] = self._named[name] = slot
    return slot

  def _union(self, branches, namespace):
    converters = [self._of(b, namespace) for b in branches]
    others = [c for b, c in zip(branches, converters) if b != 'null']
    if len(others) == 1:
      only = others[0]
      return lambda v, path: None if v is None else only(v, path)
    # fastavro gives (branch name, value) with return_record_name: not
    # used; a several-type union's value is converted by its Python type.
    return lambda v, path: _plain(v)


def _same(v, _):
  return v


def _b64_at(v, _):
  return _b64(v)


def _plain(value):
  """A decoded value of a several-type union -> JSON-like, by its type."""
  if isinstance(value, bytes):
    return _b64(value)
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


def _strip_logical(schema):
  """The schema fastavro reads with: no logicalType (this module converts
  them, with ranges checked and named)."""
  if isinstance(schema, list):
    return [_strip_logical(s) for s in schema]
  if not isinstance(schema, dict):
    return schema
  out = {k: _strip_logical(v) for k, v in schema.items()
         if k != 'logicalType'}
  if 'fields' in schema:
    out['fields'] = [dict(f, type=_strip_logical(f['type']))
                     for f in schema['fields']]
  return out


class AvroRevision(object):
  """One Avro schema revision: decodes a message in either encoding."""
  kind = 'Avro'
  reason = 'not_avro'

  def __init__(self, schema):
    import fastavro
    self.schema = schema
    self._parsed = fastavro.parse_schema(_strip_logical(schema))
    self._convert = AvroConverters(schema).convert

  def __getstate__(self):
    return {'schema': self.schema}

  def __setstate__(self, state):
    self.__init__(state['schema'])

  def decode(self, data, encoding):
    import fastavro
    if encoding == 'BINARY':
      stream = io.BytesIO(data)
      value = fastavro.schemaless_reader(stream, self._parsed, None)
      if stream.tell() != len(data):
        raise dead_letters.Invalid('not_avro', '%d bytes after the record' % (
            len(data) - stream.tell()))
      checked = True
    else:
      from fastavro import json_read
      text = data.decode('utf-8')
      if '\n' in text.strip():
        raise ValueError('more than one JSON record')
      value, = list(json_read.json_reader(io.StringIO(text), self._parsed))
      checked = False  # JSON escapes may spell lone surrogates
    if not isinstance(value, dict):
      raise ValueError('not a record')
    return self._convert(value, ''), checked


# -------------------------------------------------------- Protocol Buffers

_WRAPPERS = {'google.protobuf.%s' % n for n in (
    'DoubleValue', 'FloatValue', 'Int64Value', 'UInt64Value', 'Int32Value',
    'UInt32Value', 'BoolValue', 'StringValue', 'BytesValue')}
_JSON_TYPES = {'google.protobuf.Struct', 'google.protobuf.Value',
               'google.protobuf.ListValue'}


def _duration_text(message, path):
  """A Duration -> its seconds as exact number text (FLOAT or NUMERIC)."""
  del path
  return Number(str(_EXACT.add(decimal.Decimal(message.seconds),
                              decimal.Decimal(message.nanos).scaleb(-9,
                                                                    _EXACT))))


def _timestamp_text(message, path):
  seconds, nanos = message.seconds, message.nanos
  if not 0 <= nanos < 10**9:
    raise Refused('bad_value', path, 'Timestamp nanos %d is not in '
                  '[0, 999999999]' % nanos)
  try:
    when = _EPOCH + datetime.timedelta(seconds=seconds)
  except OverflowError:
    raise Refused('out_of_range', path, 'Timestamp of %d seconds is outside '
                  'TIMESTAMP\'s range' % seconds)
  # TIMESTAMP keeps microseconds: the nanoseconds below them are dropped
  # (floored, as the instant they name has begun), where a JSON message's
  # text with more than six digits is refused. A Timestamp set from a clock
  # (Timestamp.GetCurrentTime) has them on nearly every message.
  when = _in_range(when, path)
  return '%s.%06dZ' % (when.replace(tzinfo=None).isoformat(
      timespec='seconds'), nanos // 1000)


class ProtobufConverters(object):
  """A message descriptor -> a converter of a parsed message to the
  JSON-like object of the row converter: every field, unset fields with
  presence as None; int64s as Python ints (a uint64 past INT64 is then
  out_of_range, named), enums by name, maps as key/value records."""
  def __init__(self, descriptor):
    self._cache = {}
    self.convert = self._message(descriptor)

  def _message(self, descriptor):
    full = descriptor.full_name
    if full in self._cache:
      return self._cache[full]
    slot = []
    self._cache[full] = lambda m, path: slot[0](m, path)
    if full == 'google.protobuf.Timestamp':
      convert = _timestamp_text
    elif full == 'google.protobuf.Duration':
      convert = _duration_text
    elif full in _WRAPPERS:
      inner = self._scalar(descriptor.fields_by_name['value'])
      convert = lambda m, path: inner(m.value, path)  # noqa: E731
    elif full in _JSON_TYPES:
      from google.protobuf import json_format
      convert = lambda m, path: json_format.MessageToDict(m)  # noqa: E731
    else:
      fields = [(f.name, self._field(f), _has_presence(f))
                for f in descriptor.fields]

      def convert(m, path):
        out = {}
        for name, read, presence in fields:
          if presence and not m.HasField(name):
            out[name] = None
          else:
            out[name] = read(getattr(m, name), _path(path, name))
        return out
    slot.append(convert)
    self._cache[full] = convert
    return convert

  def _field(self, field):
    if _is_map(field):
      entry = field.message_type
      key = self._scalar(entry.fields_by_name['key'])
      value = self._scalar(entry.fields_by_name['value'])
      return lambda v, path: [
          {'key': key(k, path), 'value': value(v[k], '%s[%r]' % (path, k))}
          for k in sorted(v)]
    scalar = self._scalar(field)
    if _is_repeated(field):
      return lambda v, path: [scalar(x, '%s[%d]' % (path, i))
                              for i, x in enumerate(v)]
    return scalar

  def _scalar(self, field):
    from google.protobuf.descriptor import FieldDescriptor as F
    if field.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
      return self._message(field.message_type)
    if field.type == F.TYPE_BYTES:
      return _b64_at
    if field.type == F.TYPE_ENUM:
      enum = field.enum_type
      names = {n: v.name for n, v in enum.values_by_number.items()}
      # An open (proto3) enum's unknown number has no name: its number.
      return lambda v, path: Symbol(names.get(v, str(v)), v)
    return _same


def _is_repeated(field):
  return field.is_repeated


def _is_map(field):
  return (_is_repeated(field) and field.message_type is not None and
          field.message_type.GetOptions().map_entry)


def _has_presence(field):
  return not _is_repeated(field) and field.has_presence


class ProtobufRevision(object):
  """One Protocol Buffer schema revision: a FileDescriptorSet (compiled
  with its imports) and the name of its one top-level message."""
  kind = 'Protocol Buffer'
  reason = 'not_protobuf'

  def __init__(self, descriptor_set, message_name):
    from google.protobuf import descriptor_pb2
    from google.protobuf import descriptor_pool
    from google.protobuf import message_factory
    self.descriptor_set = bytes(descriptor_set)
    self.message_name = message_name
    pool = descriptor_pool.DescriptorPool()
    files = descriptor_pb2.FileDescriptorSet.FromString(self.descriptor_set)
    for f in files.file:
      pool.Add(f)
    self.descriptor = pool.FindMessageTypeByName(message_name)
    self._class = message_factory.GetMessageClass(self.descriptor)
    self._convert = ProtobufConverters(self.descriptor).convert

  def __getstate__(self):
    return {'set': self.descriptor_set, 'name': self.message_name}

  def __setstate__(self, state):
    self.__init__(state['set'], state['name'])

  def decode(self, data, encoding):
    message = self._class()
    if encoding == 'BINARY':
      message.ParseFromString(data)
    else:
      from google.protobuf import json_format
      json_format.Parse(data.decode('utf-8'), message)
    return self._convert(message, ''), True
