"""Pub/Sub payloads -> the JSON-like object the row converter takes: JSON
(the exact parse), or Avro and Protocol Buffers under a topic schema, in
Pub/Sub's BINARY or JSON encoding, each message under its own schema
revision (https://cloud.google.com/pubsub/docs/schemas).

A decoded message is a dict of what the decoder gives (ints, floats,
strings, bools, bytes, None, lists, dicts), with logical types as the
column's Python value (aware datetimes, dates, times, exact Decimals) and
enums as ``Symbol`` (name and number): the same row converter then checks
it against the table, so values refused or kept follow the same rules
whatever the payload's format.
Decoding never raises anything but ``dead_letters.Invalid`` (``not_avro``,
``not_protobuf``, ``unknown_schema_revision``) or ``Refused`` (a value its
logical type cannot hold: ``out_of_range``, with its field's path).
"""

import base64
import datetime
import decimal
import io
import json
import struct

from transforms import dead_letters
from transforms.bigquery_values import Refused
from transforms.bigquery_values import Symbol
from transforms.exact_json import Number

FORMATS = ('json', 'avro', 'protobuf')
ENCODINGS = ('binary', 'json')
ENCODING_ATTRIBUTE = 'googclient_schemaencoding'
REVISION_ATTRIBUTE = 'googclient_schemarevisionid'
REASONS = ('not_avro', 'not_protobuf', 'unknown_schema_revision')
UTC = datetime.timezone.utc
_INF = float('inf')
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = datetime.date(1970, 1, 1)


def json_object(value):
  """A decoded message -> the JSON object a UDF gets: each value in the
  form BigQuery's JSON API takes (ISO text for times, exact number text for
  decimals, base64 for bytes, names for enums)."""
  kind = type(value)
  if kind is dict:
    return {k: json_object(v) for k, v in value.items()}
  if kind is list:
    return [json_object(v) for v in value]
  if kind is bytes:
    return base64.b64encode(value).decode('ascii')
  if kind is float and (value != value or value in (_INF, -_INF)):
    # JSON has no NaN: BigQuery's JSON API spells them so (FLOAT64 reads it).
    return 'NaN' if value != value else (
        'Infinity' if value > 0 else '-Infinity')
  if kind is decimal.Decimal:
    return Number(str(value))
  if kind is Symbol:
    return str(value)
  if kind in (datetime.datetime, datetime.date, datetime.time):
    return value.isoformat()
  return value


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
  def __init__(self, format_name, revisions, encoding='binary', service=None):
    self.format = format_name
    self._revisions = dict(revisions)
    self._any = self._revisions.get(None)
    self._encoding = encoding.upper()
    # Pub/Sub's schema service, for a revision committed after the launch.
    self._service = service

  def revision_of(self, message):
    """The revision that decodes ``message``; Invalid when it is not given."""
    if self._any is not None:
      return self._any
    rid = (message.attributes or {}).get(REVISION_ATTRIBUTE)
    revision = self._revisions.get(rid)
    if revision is None and self._service is not None and rid:
      revision = self._service.revision(rid)
      if revision is not None:
        self._revisions[rid] = revision
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


def _where(at):
  """A lazy path -> its text: ``at`` is None (the top), or (parent, step)
  where a step is a field's name, an item's index, or ``(key,)`` for a map
  entry; built on every call, rendered only for a refusal."""
  steps = []
  while at is not None:
    at, step = at
    steps.append(step)
  out = ''
  for step in reversed(steps):
    if isinstance(step, int):
      out += '[%d]' % step
    elif isinstance(step, tuple):
      out += '[%r]' % (step[0],)
    else:
      out += '.' + step if out else step
  return out


def _timestamp_of(micros, at):
  """Microseconds since 1970 -> an aware datetime (what TIMESTAMP stores:
  Python's datetime range is BigQuery's, years 1 to 9999)."""
  try:
    return _EPOCH + datetime.timedelta(microseconds=micros)
  except OverflowError:
    raise Refused('out_of_range', _where(at), '%d microseconds since 1970 '
                  'is outside TIMESTAMP\'s range' % micros)


def _date_of(days, at):
  try:
    return _EPOCH_DATE + datetime.timedelta(days=days)
  except OverflowError:
    raise Refused('out_of_range', _where(at), '%d days since 1970 is outside '
                  'DATE\'s range' % days)


def _time_of(micros, at):
  if not 0 <= micros < 86400 * 10**6:
    raise Refused('out_of_range', _where(at), '%d microseconds is not a time '
                  'of day' % micros)
  seconds, us = divmod(micros, 10**6)
  return datetime.time(seconds // 3600, seconds // 60 % 60, seconds % 60, us)


# Exact: Decimal's default context rounds to 28 digits, and a decimal(76, 38)
# has 76 (a property test found the rounding).
_EXACT = decimal.Context(prec=200, Emax=decimal.MAX_EMAX,
                         Emin=decimal.MIN_EMIN)


def _decimal_of(unscaled, scale):
  return decimal.Decimal(unscaled).scaleb(-scale, _EXACT)


# ------------------------------------------------------------------- Avro

_AVRO_PRIMITIVES = {'null', 'boolean', 'int', 'long', 'float', 'double',
                    'bytes', 'string'}
# A converter that leaves fastavro's value as it is: skipped (bytes stay
# bytes, which BYTES columns take; ints, floats, strings, bools as read).
SAME = None


def _logical(schema):
  """An Avro schema's logical type converter (value, at) -> the column's
  Python value, or SAME for a type without one (its underlying type)."""
  logical = schema.get('logicalType')
  base = schema.get('type')
  if logical == 'decimal' and base in ('bytes', 'fixed'):
    scale = int(schema.get('scale', 0))
    # |unscaled| < 10^precision: at most this many bytes once the sign's
    # repeated leading bytes are set aside. Longer is out of range, and is
    # said before converting it (Decimal of a huge int is quadratic: a 1 MB
    # decimal took 98 s of CPU).
    most = int(schema.get('precision', 76)) * 0.4153 + 2

    def decimal_value(v, at):
      if len(v) > most and len(v.lstrip(
          b'\xff' if v[:1] >= b'\x80' else b'\x00')) > most:
        raise Refused('out_of_range', _where(at), 'a decimal of %d bytes has '
                      'more digits than its precision' % len(v))
      return _decimal_of(int.from_bytes(v, 'big', signed=True), scale)
    return decimal_value
  if base in ('int', 'long'):
    # local-timestamp-*: not in the subscription's table, so read as the
    # long it annotates ("Any logical types not listed only match the
    # equivalent Avro type that they annotate").
    if logical == 'timestamp-micros':
      return _timestamp_of
    if logical == 'timestamp-millis':
      return lambda v, at: _timestamp_of(v * 1000, at)
    if logical == 'date':
      return _date_of
    if logical == 'time-micros':
      return _time_of
    if logical == 'time-millis':
      return lambda v, at: _time_of(v * 1000, at)
  return SAME


def full_name(name, namespace):
  """An Avro name as the spec resolves it: a dotted name is full; another
  is in the enclosing namespace."""
  return name if '.' in name or not namespace else '%s.%s' % (namespace, name)


def namespace_of(schema, namespace):
  """The namespace a named type's fields resolve names in."""
  name = schema.get('name', '')
  if '.' in name:
    return name.rsplit('.', 1)[0]
  return schema.get('namespace', namespace)


class AvroConverters(object):
  """An Avro schema -> a converter of fastavro's decoded value (read with
  logical types stripped, so that every range is checked here and named)
  to the row converter's input: logical types as the column's Python value
  (datetime, date, time, Decimal), enums as Symbols, maps as key/value
  records; every other value as fastavro gives it, untouched. A record is
  converted in place (fastavro makes a new dict each time), only in the
  fields that need it."""
  def __init__(self, schema):
    self._named = {}
    convert = self._of(schema, '')
    self.convert = convert if convert is not SAME else (lambda v, at: v)

  def _of(self, schema, namespace):
    if isinstance(schema, str):
      if schema == 'float':
        return _float32
      if schema in _AVRO_PRIMITIVES:
        return SAME
      target = self._named.get(full_name(schema, namespace)) or (
          self._named.get(schema))
      if target is None:
        raise ValueError('unknown Avro type %r' % schema)
      return target[0]
    if isinstance(schema, list):
      return self._union(schema, namespace)
    kind = schema['type']
    logical = _logical(schema)
    if logical is not SAME:
      if kind == 'fixed':
        self._name(schema, namespace, [logical])
      return logical
    if kind in _AVRO_PRIMITIVES:
      return self._of(kind, namespace)
    if kind == 'record':
      slot = self._name(schema, namespace, [SAME])
      inner = namespace_of(schema, namespace)
      fields = [(f['name'], self._of(f['type'], inner))
                for f in schema['fields']]
      fields = [(n, c) for n, c in fields if c is not SAME]
      if not fields:
        return SAME

      def record(v, at):
        for name, convert in fields:
          v[name] = convert(v[name], (at, name))
        return v
      slot[0] = record
      return record
    if kind == 'enum':
      names = list(schema['symbols'])
      symbols = {name: Symbol(name, i) for i, name in enumerate(names)}
      by_index = [symbols[name] for name in names]

      def symbol(v, at):
        if type(v) is int:  # binary: the index (fastavro would take -1 as  # pylint: disable=unidiomatic-typecheck
          if 0 <= v < len(by_index):  # the last symbol)
            return by_index[v]
          raise dead_letters.Invalid('not_avro', '%s: enum index %d is not '
                                     'one of its %d symbols' % (
                                         _where(at), v, len(by_index)))
        return symbols[v]
      self._name(schema, namespace, [symbol])
      return symbol
    if kind == 'fixed':
      self._name(schema, namespace, [SAME])
      return SAME
    if kind == 'array':
      item = self._of(schema['items'], namespace)
      if item is SAME:
        return SAME
      return lambda v, at: [item(x, (at, i)) for i, x in enumerate(v)]
    if kind == 'map':
      value = self._of(schema['values'], namespace)
      if value is SAME:
        return lambda v, at: [{'key': k, 'value': v[k]} for k in sorted(v)]
      return lambda v, at: [{'key': k, 'value': value(v[k], (at, (k,)))}
                            for k in sorted(v)]
    if isinstance(kind, (dict, list)) or kind not in _AVRO_PRIMITIVES:
      return self._of(kind, namespace)
    raise ValueError('unknown Avro type %r' % kind)

  def _name(self, schema, namespace, slot):
    self._named[full_name(schema['name'], schema.get('namespace',
                                                     namespace))] = slot
    return slot

  def _union(self, branches, namespace):
    converters = [self._of(b, namespace) for b in branches]
    others = [c for b, c in zip(branches, converters) if b != 'null']
    if len(others) == 1:
      only = others[0]
      if only is SAME:
        return SAME
      return lambda v, at: None if v is None else only(v, at)
    # A several-type union (only with --schema: no derived table has one):
    # its value as fastavro gives it.
    return SAME


_FLOAT32 = struct.Struct('<f')


def _float32(v, at):
  """An Avro float as a float32 holds it: the same value from either
  encoding (JSON's 0.1 is the float32 nearest 0.1, as binary's is)."""
  try:
    return _FLOAT32.unpack(_FLOAT32.pack(v))[0]
  except (OverflowError, struct.error):
    raise Refused('out_of_range', _where(at), '%r is beyond an Avro float' % (
        v,))


def _strip_logical(schema, enums=None, namespace=''):
  """The schema fastavro reads with: no logicalType (this module converts
  them, with ranges checked and named); with ``enums`` (a set, for binary),
  every enum read as the long its index is, so that this module checks it
  (fastavro takes index -1 as the last symbol)."""
  if isinstance(schema, list):
    return [_strip_logical(s, enums, namespace) for s in schema]
  if isinstance(schema, str):
    if enums is not None and full_name(schema, namespace) in enums:
      return 'long'
    return schema
  if not isinstance(schema, dict):
    return schema
  if enums is not None and schema.get('type') == 'enum':
    enums.add(full_name(schema['name'], schema.get('namespace', namespace)))
    return 'long'
  inner = namespace_of(schema, namespace) if schema.get('type') in (
      'record', 'error') else namespace
  out = {k: _strip_logical(v, enums, inner) for k, v in schema.items()
         if k not in ('logicalType', 'fields')}
  if 'fields' in schema:
    out['fields'] = [dict(f, type=_strip_logical(f['type'], enums, inner))
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
    self._binary = fastavro.parse_schema(_strip_logical(schema, set()))
    self._convert = AvroConverters(schema).convert

  def __getstate__(self):
    return {'schema': self.schema}

  def __setstate__(self, state):
    self.__init__(state['schema'])

  def decode(self, data, encoding):
    import fastavro
    if encoding == 'BINARY':
      stream = io.BytesIO(data)
      value = fastavro.schemaless_reader(stream, self._binary, None)
      if stream.tell() != len(data):
        raise dead_letters.Invalid('not_avro', '%d bytes after the record' % (
            len(data) - stream.tell()))
      checked = True
    else:
      from fastavro import json_read
      # One JSON value, on any number of lines (fastavro's reader takes a
      # record a line): read whole, handed over on one line. NaN and
      # Infinity are taken as Avro's JSON writers write them, bare.
      line = json.dumps(json.loads(data.decode('utf-8')))
      value, = list(json_read.json_reader(io.StringIO(line), self._parsed))
      checked = False  # JSON escapes may spell lone surrogates
    if not isinstance(value, dict):
      raise ValueError('not a record')
    return self._convert(value, None), checked


# -------------------------------------------------------- Protocol Buffers

_WRAPPERS = {'google.protobuf.%s' % n for n in (
    'DoubleValue', 'FloatValue', 'Int64Value', 'UInt64Value', 'Int32Value',
    'UInt32Value', 'BoolValue', 'StringValue', 'BytesValue')}
_JSON_TYPES = {'google.protobuf.Struct', 'google.protobuf.Value',
               'google.protobuf.ListValue'}


def _duration_of(message, at):
  """A Duration -> its seconds, exact to the nanosecond (a Decimal); one
  the Duration type refuses (nanos of another sign than seconds, or a
  second or more of them) is a bad_value."""
  seconds, nanos = message.seconds, message.nanos
  if abs(nanos) >= 10**9 or (seconds and nanos and (seconds < 0) != (
      nanos < 0)):
    raise Refused('bad_value', _where(at), 'Duration of %d s and %d ns is not '
                  'a valid Duration' % (seconds, nanos))
  return _EXACT.add(decimal.Decimal(message.seconds),
                    decimal.Decimal(message.nanos).scaleb(-9, _EXACT))


def _timestamp_message(message, at):
  """A Timestamp -> an aware datetime. TIMESTAMP keeps microseconds: the
  nanoseconds below them are dropped (floored: the instant they name has
  begun), where a JSON message's text with more than six digits is
  refused; a Timestamp set from a clock (GetCurrentTime) has them on nearly
  every message."""
  seconds, nanos = message.seconds, message.nanos
  if not 0 <= nanos < 10**9:
    raise Refused('bad_value', _where(at), 'Timestamp nanos %d is not in '
                  '[0, 999999999]' % nanos)
  try:
    return _EPOCH + datetime.timedelta(seconds=seconds,
                                       microseconds=nanos // 1000)
  except OverflowError:
    raise Refused('out_of_range', _where(at), 'Timestamp of %d seconds is '
                  'outside TIMESTAMP\'s range' % seconds)


class ProtobufConverters(object):
  """A message descriptor -> a converter of a parsed message to the row
  converter's input: a dict of every field (unset ones with presence None,
  the others their default), ints as Python ints (a uint64 past INT64 is
  then out_of_range in an INTEGER column, named), bytes as bytes, enums as
  Symbols, maps as key/value records, Timestamps as datetimes. Only the
  fields set are visited (``ListFields``, in C)."""
  def __init__(self, descriptor):
    self._cache = {}
    self.convert = self._message(descriptor)

  def _message(self, descriptor):
    full = descriptor.full_name
    if full in self._cache:
      return self._cache[full]
    slot = []
    self._cache[full] = lambda m, at: slot[0](m, at)
    if full == 'google.protobuf.Timestamp':
      convert = _timestamp_message
    elif full == 'google.protobuf.Duration':
      convert = _duration_of
    elif full in _WRAPPERS:
      inner = self._scalar(descriptor.fields_by_name['value'])
      if inner is SAME:
        convert = lambda m, at: m.value  # noqa: E731
      else:
        convert = lambda m, at: inner(m.value, at)  # noqa: E731
    elif full in _JSON_TYPES:
      from google.protobuf import json_format
      convert = lambda m, at: json_format.MessageToDict(m)  # noqa: E731
    else:
      defaults, by_field = {}, {}
      for f in descriptor.fields:
        read = self._field(f)
        by_field[f] = (f.name, read)
        if _is_repeated(f):
          defaults[f.name] = []
        elif f.has_presence:
          defaults[f.name] = None
        else:
          default = f.default_value
          defaults[f.name] = default if read is SAME else read(default, None)

      def convert(m, at):
        out = dict(defaults)
        for field, value in m.ListFields():
          name, read = by_field[field]
          out[name] = value if read is SAME else read(value, (at, name))
        return out
    slot.append(convert)
    self._cache[full] = convert
    return convert

  def _field(self, field):
    if _is_map(field):
      entry = field.message_type
      value = self._scalar(entry.fields_by_name['value'])
      if value is SAME:
        return lambda v, at: [{'key': k, 'value': v[k]} for k in sorted(v)]
      return lambda v, at: [{'key': k, 'value': value(v[k], (at, (k,)))}
                            for k in sorted(v)]
    scalar = self._scalar(field)
    if _is_repeated(field):
      if scalar is SAME:
        return lambda v, at: list(v)
      return lambda v, at: [scalar(x, (at, i)) for i, x in enumerate(v)]
    return scalar

  def _scalar(self, field):
    from google.protobuf.descriptor import FieldDescriptor as F
    if field.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
      return self._message(field.message_type)
    if field.type == F.TYPE_ENUM:
      symbols = {n: Symbol(v.name, n)
                 for n, v in field.enum_type.values_by_number.items()}
      # An open (proto3) enum's unknown number has no name: its number.
      return lambda v, at: symbols.get(v) or Symbol(str(v), v)
    return SAME


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
    return self._convert(message, None), True
