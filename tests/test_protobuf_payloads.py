"""Protocol Buffer payloads under a topic schema (issue 30), for random
message types built as descriptors (every scalar type, enums, repeated,
maps, oneofs, nested messages to depth 3, and the well-known Timestamp,
Duration, wrappers and Struct) and random values, in BINARY and JSON
encoding: the derived table holds every value, DuckDB gives back the exact
value, and hostile bytes are named dead letters. A .proto file compiles with
the protoc grpcio-tools ships."""

import datetime
import decimal
import json
import struct

from apache_beam.io.gcp.pubsub import PubsubMessage
from google.protobuf import descriptor_pb2
from google.protobuf import duration_pb2
from google.protobuf import json_format
from google.protobuf import struct_pb2
from google.protobuf import timestamp_pb2
from google.protobuf import wrappers_pb2
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.test_avro_payloads import assert_stored_exactly
from tests.test_avro_payloads import parse_all
from tests.test_exact_properties import same
from transforms import json_messages
from transforms import payload_schemas
from transforms import payloads
from transforms import schemas

F = descriptor_pb2.FieldDescriptorProto
UTC = datetime.timezone.utc
D = decimal.Decimal
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
EXACT = decimal.Context(prec=100)
WKT_FILES = (timestamp_pb2, duration_pb2, wrappers_pb2, struct_pb2)
MIN_SECONDS = (datetime.datetime(1, 1, 1, tzinfo=UTC) - EPOCH).days * 86400
MAX_SECONDS = (datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) -
               EPOCH).days * 86400 + 86399


def float32(x):
  return struct.unpack('<f', struct.pack('<f', x))[0]


def same_value(v):
  return v


# Scalar kinds: (field type, values, expected) -- the expected row value.
SCALARS = {
    'double': (F.TYPE_DOUBLE, st.floats(), same_value),
    'float': (F.TYPE_FLOAT, st.floats(width=32), float32),
    'int32': (F.TYPE_INT32, st.integers(-2**31, 2**31 - 1), same_value),
    'int64': (F.TYPE_INT64, st.integers(-2**63, 2**63 - 1), same_value),
    'uint32': (F.TYPE_UINT32, st.integers(0, 2**32 - 1), same_value),
    'uint64': (F.TYPE_UINT64, st.integers(0, 2**64 - 1), D),
    'sint32': (F.TYPE_SINT32, st.integers(-2**31, 2**31 - 1), same_value),
    'sint64': (F.TYPE_SINT64, st.integers(-2**63, 2**63 - 1), same_value),
    'fixed32': (F.TYPE_FIXED32, st.integers(0, 2**32 - 1), same_value),
    'fixed64': (F.TYPE_FIXED64, st.integers(0, 2**64 - 1), D),
    'sfixed32': (F.TYPE_SFIXED32, st.integers(-2**31, 2**31 - 1), same_value),
    'sfixed64': (F.TYPE_SFIXED64, st.integers(-2**63, 2**63 - 1), same_value),
    'bool': (F.TYPE_BOOL, st.booleans(), same_value),
    'string': (F.TYPE_STRING, st.text(max_size=12), same_value),
    'bytes': (F.TYPE_BYTES, st.binary(max_size=12), same_value),
}
WRAPPERS = {'Int64Value': st.integers(-2**63, 2**63 - 1),
            'UInt64Value': st.integers(0, 2**64 - 1),
            'Int32Value': st.integers(-2**31, 2**31 - 1),
            'UInt32Value': st.integers(0, 2**32 - 1),
            'BoolValue': st.booleans(), 'StringValue': st.text(max_size=8),
            'BytesValue': st.binary(max_size=8), 'DoubleValue': st.floats(),
            'FloatValue': st.floats(width=32)}
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.text(max_size=5) |
    st.integers(-2**53, 2**53).map(float),
    lambda inner: st.lists(inner, max_size=3) |
    st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def json_name(name):
  """A field's JSON name as protobuf makes it: each underscore dropped and
  the letter after it upper-cased."""
  out, upper = [], False
  for c in name:
    if c == '_':
      upper = True
    else:
      out.append(c.upper() if upper else c)
      upper = False
  return ''.join(out)


class Builder(object):
  """Random message types (all top-level, so every name is .rnd.NAME), as
  one FileDescriptorProto, with a values strategy for each and the
  expected row of a value."""
  def __init__(self, draw):
    self.draw = draw
    self.file = descriptor_pb2.FileDescriptorProto(
        name='random.proto', package='rnd', syntax='proto3',
        dependency=[m.DESCRIPTOR.name for m in WKT_FILES])
    self.parts = {}  # full name -> [(field, label, values, expected)]
    self.count = 0

  def name(self, prefix):
    self.count += 1
    return '%s%d' % (prefix, self.count)

  def message(self, depth=1):
    """A new message type: its full name (without the leading dot)."""
    proto = self.file.message_type.add(name=self.name('M'))
    full = 'rnd.' + proto.name
    # Unique by their JSON names too, as protoc requires ('a' and 'a_'
    # are both "a" in JSON: the descriptor pool refuses the pair).
    names = self.draw(st.lists(st.from_regex(r'[a-z][a-z0-9_]{0,5}',
                                             fullmatch=True), min_size=1,
                               max_size=5, unique_by=json_name))
    parts = []
    for number, fname in enumerate(names, 1):
      kind = self.draw(st.sampled_from(
          sorted(SCALARS) + ['enum', 'timestamp', 'duration', 'wrapper',
                             'struct'] + (['message'] if depth < 3 else [])))
      label = self.draw(st.sampled_from(['single', 'repeated', 'map',
                                         'oneof']))
      field = proto.field.add(name=fname, number=number,
                              label=F.LABEL_OPTIONAL)
      values, expected, presence, default = self.type_of(field, kind, depth)
      if label == 'repeated':
        field.label = F.LABEL_REPEATED
        parts.append((fname, 'repeated', st.lists(values, max_size=3),
                      lambda v, e=expected: [e(x) for x in v]))
      elif label == 'map':
        entry = proto.nested_type.add(name=fname.capitalize().replace(
            '_', '') + 'X%dEntry' % number)
        entry.options.map_entry = True
        key_type, key_values, _ = SCALARS[self.draw(st.sampled_from(
            ['string', 'int64', 'uint32', 'bool', 'sint32']))]
        entry.field.add(name='key', number=1, type=key_type,
                        label=F.LABEL_OPTIONAL)
        value_field = entry.field.add(name='value', number=2,
                                      label=F.LABEL_OPTIONAL, type=field.type)
        if field.type_name:
          value_field.type_name = field.type_name
        field.type = F.TYPE_MESSAGE
        field.type_name = '.%s.%s' % (full, entry.name)
        field.label = F.LABEL_REPEATED
        key_out = D if key_type == F.TYPE_UINT64 else same_value
        parts.append((fname, 'map', st.dictionaries(key_values, values,
                                                    max_size=3),
                      lambda v, e=expected, k=key_out, d=default: [
                          {'key': k(key), 'value': e(v[key]) if (
                              v[key] is not None) else d}
                          for key in sorted(v)]))
      elif label == 'oneof':
        if not proto.oneof_decl:
          proto.oneof_decl.add(name='choice')
        field.oneof_index = 0
        parts.append((fname, 'oneof', values, expected))
      else:
        parts.append((fname, 'message' if presence else 'single', values,
                      expected))
    self.parts[full] = parts
    return full

  def type_of(self, field, kind, depth):
    """Sets ``field``'s type: (values, expected, has presence, the
    expected value of an empty map entry's value)."""
    if kind in SCALARS:
      field.type, values, expected = SCALARS[kind]
      return values, expected, False, None
    if kind == 'enum':
      enum = self.file.enum_type.add(name=self.name('E'))
      symbols = ['%s_V%d' % (enum.name, i) for i in range(
          self.draw(st.integers(1, 4)))]
      for i, symbol in enumerate(symbols):
        enum.value.add(name=symbol, number=i)
      field.type = F.TYPE_ENUM
      field.type_name = '.rnd.' + enum.name
      return st.integers(0, len(symbols) - 1), lambda v: symbols[v], False, (
          None)
    field.type = F.TYPE_MESSAGE
    if kind == 'timestamp':
      field.type_name = '.google.protobuf.Timestamp'
      return (st.tuples(st.integers(MIN_SECONDS, MAX_SECONDS),
                        st.integers(0, 10**9 - 1)),
              lambda v: EPOCH + datetime.timedelta(seconds=v[0],
                                                   microseconds=v[1] // 1000),
              True, EPOCH)
    if kind == 'duration':
      field.type_name = '.google.protobuf.Duration'
      seconds = st.integers(-315576000000, 315576000000)
      return (seconds.flatmap(lambda s: st.tuples(st.just(s), st.integers(
          0 if s > 0 else -(10**9 - 1), 0 if s < 0 else 10**9 - 1))),
              lambda v: EXACT.add(D(v[0]), D(v[1]).scaleb(-9, EXACT)), True,
              D(0))
    if kind == 'wrapper':
      name = self.draw(st.sampled_from(sorted(WRAPPERS)))
      field.type_name = '.google.protobuf.' + name
      expected = {'UInt64Value': D, 'FloatValue': float32}.get(name,
                                                                same_value)
      return WRAPPERS[name], expected, True, None
    if kind == 'struct':
      field.type_name = '.google.protobuf.Struct'
      return (st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=3),
              json.dumps, True, '{}')
    child = self.message(depth + 1)
    field.type_name = '.' + child
    return (record_values(self.parts[child]),
            record_expected(self.parts[child]), True, None)

  def revision(self):
    files = descriptor_pb2.FileDescriptorSet()
    for module in WKT_FILES:
      module.DESCRIPTOR.CopyToProto(files.file.add())
    files.file.add().CopyFrom(self.file)
    return files.SerializeToString()


def record_values(parts):
  required = {n: v for n, label, v, _ in parts if label == 'single'}
  optional = {n: v for n, label, v, _ in parts if label != 'single'}
  return st.fixed_dictionaries(required, optional=optional)


def record_expected(parts):
  def expected(value):
    chosen = [n for n, label, _, _ in parts if label == 'oneof' and
              n in value][-1:]
    out = {}
    for name, label, _, want in parts:
      if name in value and (label != 'oneof' or [name] == chosen):
        out[name] = want(value[name])
      else:
        out[name] = [] if label in ('repeated', 'map') else None
    return out
  return expected


def fill(message, parts, value):
  """Sets ``value`` (a dict by field name) on ``message``, in the order of
  ``parts`` (so the last oneof member given is the one set)."""
  for name, label, _, _ in parts:
    if name not in value:
      continue
    v = value[name]
    field = message.DESCRIPTOR.fields_by_name[name]
    target = getattr(message, name)
    if label == 'map':
      value_type = field.message_type.fields_by_name['value'].message_type
      for k, x in v.items():
        if value_type is not None:
          set_message(target[k], x)
        else:
          target[k] = x
    elif label == 'repeated':
      for x in v:
        if field.message_type is not None:
          set_message(target.add(), x)
        else:
          target.append(x)
    elif field.message_type is not None:
      set_message(target, v)
    else:
      setattr(message, name, v)


def set_message(message, v, parts_of=None):
  full = message.DESCRIPTOR.full_name
  message.SetInParent()
  if full in ('google.protobuf.Timestamp', 'google.protobuf.Duration'):
    message.seconds, message.nanos = v
  elif full == 'google.protobuf.Struct':
    message.update(v)
  elif full.startswith('google.protobuf.'):
    message.value = v
  else:
    fill(message, PARTS[full], v)


PARTS = {}  # the current example's parts by full name (set_message's)


def revision_and_values(draw):
  builder = Builder(draw)
  top = builder.message()
  PARTS.clear()
  PARTS.update(builder.parts)
  revision = payloads.ProtobufRevision(builder.revision(), top)
  return revision, builder.parts[top]


def parse_fn(revisions, fields=None, name='t'):
  schema = schemas.table_from_bigquery_schema(
      fields or payload_schemas.merged_fields(revisions), name)
  fn = json_messages.ParseJsonMessageFn(
      schema, payloads=payloads.SchemaPayloads('protobuf', revisions))
  fn.setup()
  return schema, fn


def encode(revision, parts, value, encoding):
  message = revision._class()  # pylint: disable=protected-access
  fill(message, parts, value)
  if encoding == 'BINARY':
    return message.SerializeToString()
  return json_format.MessageToJson(message).encode('utf-8')


def same_row_value(field, stored, expected):
  if field.type == 'JSON' and expected is not None:
    if field.mode == 'REPEATED':
      return [json.loads(s) for s in stored] == [json.loads(e) for e in expected]
    return json.loads(stored) == json.loads(expected)
  if field.type == 'RECORD' and field.mode != 'REPEATED' and expected is not None:
    return all(same_row_value(c, stored[c.name], expected[c.name])
               for c in field.fields)
  if field.type == 'RECORD' and field.mode == 'REPEATED':
    return len(stored) == len(expected) and all(
        all(same_row_value(c, s[c.name], e[c.name]) for c in field.fields)
        for s, e in zip(stored, expected))
  return same(field, stored, expected)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_protobuf_types_and_values_are_stored_exactly(data):
  revision, parts = revision_and_values(data.draw)
  schema, fn = parse_fn({None: revision})
  batch = data.draw(st.lists(record_values(parts), min_size=1, max_size=4))
  expected_of = record_expected(parts)
  messages, expected = [], {}
  for i, value in enumerate(batch):
    encoding = data.draw(st.sampled_from(['BINARY', 'JSON']))
    messages.append(PubsubMessage(encode(revision, parts, value, encoding), {
        payloads.ENCODING_ATTRIBUTE: encoding}, message_id=str(i)))
    expected[str(i)] = expected_of(value)
  assert_stored_exactly(fn, schema, messages, expected, same_row_value)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_hostile_protobuf_bytes_are_named_dead_letters(data):
  revision, parts = revision_and_values(data.draw)
  _, fn = parse_fn({'r1': revision})
  good = encode(revision, parts, data.draw(record_values(parts)), 'BINARY')
  messages = []
  for i in range(6):
    attributes = data.draw(st.fixed_dictionaries({}, optional={
        payloads.REVISION_ATTRIBUTE: st.sampled_from(['r1', 'r2']),
        payloads.ENCODING_ATTRIBUTE: st.sampled_from(['BINARY', 'JSON',
                                                      'proto'])}))
    payload = data.draw(st.one_of(
        st.binary(max_size=64), st.just(good[:-1]), st.just(good + b'\xff'),
        st.just(b'{"nope": 1}'), st.just(good)))
    messages.append(PubsubMessage(payload, attributes, message_id=str(i)))
  rows, dead = parse_all(fn, messages)
  assert len(rows) + len(dead) == len(messages)
  for letter in dead:
    assert letter['reason'] in json_messages.REASONS, letter


PROTO = """syntax = "proto3";
package shop;
import "google/protobuf/timestamp.proto";
message Order {
  enum State { NEW = 0; PAID = 1; }
  string order_id = 1;
  google.protobuf.Timestamp placed_at = 2;
  uint64 units = 3;
  State state = 4;
  map<string, int64> counts = 5;
}
"""


def test_a_proto_file_compiles_and_a_uint64_past_int64_names_its_field(
    tmp_path):
  """The .proto compiles with grpcio-tools' protoc (its well-known imports
  too); the derived table maps uint64 to NUMERIC, as the subscription's
  table does, and a table with INTEGER there gets a dead letter naming the
  field for a value past INT64, never a wrapped number."""
  path = tmp_path / 'order.proto'
  path.write_text(PROTO)
  revisions = payload_schemas.load(str(path), 'protobuf', None)
  fields = payload_schemas.merged_fields(revisions)
  assert [(f['name'], f['type'], f['mode']) for f in fields] == [
      ('order_id', 'STRING', 'NULLABLE'), ('placed_at', 'TIMESTAMP', 'NULLABLE'),
      ('units', 'NUMERIC', 'NULLABLE'), ('state', 'STRING', 'NULLABLE'),
      ('counts', 'RECORD', 'REPEATED')]
  revision = revisions[None]
  message = revision._class(order_id='A-1', units=2**64 - 1, state=1)  # pylint: disable=protected-access
  message.placed_at.FromJsonString('2026-11-28T09:15:00.123456789Z')
  message.counts['tea'] = 2
  _, fn = parse_fn(revisions)
  rows, _ = parse_all(fn, [PubsubMessage(message.SerializeToString(), {},
                                         message_id='1')])
  assert rows[0]['units'] == D(2**64 - 1) and rows[0]['state'] == 'PAID'
  assert rows[0]['placed_at'] == datetime.datetime(
      2026, 11, 28, 9, 15, 0, 123456, tzinfo=UTC)
  assert rows[0]['counts'] == [{'key': 'tea', 'value': 2}]
  for seconds, nanos in [(MIN_SECONDS, 999), (MAX_SECONDS, 999999999)]:
    message.placed_at.seconds, message.placed_at.nanos = seconds, nanos
    rows, _ = parse_all(fn, [PubsubMessage(message.SerializeToString(), {},
                                           message_id='t')])
    assert rows[0]['placed_at'] == EPOCH + datetime.timedelta(
        seconds=seconds, microseconds=nanos // 1000)
  message.placed_at.seconds = MAX_SECONDS + 1
  _, dead = parse_all(fn, [PubsubMessage(message.SerializeToString(), {},
                                         message_id='t')])
  assert [(d['reason'], d['field']) for d in dead] == [
      ('out_of_range', 'placed_at')]
  message.placed_at.seconds = 0
  _, narrow = parse_fn(revisions, fields=[
      {'name': 'units', 'type': 'INTEGER'}, {'name': 'state', 'type': 'INTEGER'}])
  _, dead = parse_all(narrow, [PubsubMessage(message.SerializeToString(), {},
                                             message_id='1')])
  assert [(d['reason'], d['field']) for d in dead] == [('out_of_range', 'units')]
  message.units = 7
  rows, _ = parse_all(narrow, [PubsubMessage(message.SerializeToString(), {},
                                             message_id='2')])
  assert (rows[0]['units'], rows[0]['state']) == (7, 1)  # an enum's number
  bad = tmp_path / 'two.proto'
  bad.write_text('syntax = "proto3"; message A {} message B {}')
  try:
    payload_schemas.load(str(bad), 'protobuf', None)
  except payload_schemas.SchemaError as e:
    assert 'exactly one top-level message' in str(e)
  else:
    raise AssertionError('two top-level messages accepted')
  broken = tmp_path / 'broken.proto'
  broken.write_text('syntax = "proto3"; message A { strin x = 1; }')
  try:
    payload_schemas.load(str(broken), 'protobuf', None)
  except payload_schemas.SchemaError as e:
    assert 'does not compile' in str(e) and '\n' not in str(e)
    assert '"strin" is not defined' in str(e), e  # protoc's own reason
  else:
    raise AssertionError('a broken .proto accepted')


def test_a_folder_of_proto_revisions_and_invalid_durations(tmp_path):
  """In a folder of .proto revisions, a file another imports is not a
  revision (its message adds no column); a Duration the type refuses
  (nanos of the other sign) is a bad_value naming the field."""
  folder = tmp_path / 'revisions'
  folder.mkdir()
  (folder / 'common.proto').write_text(
      'syntax = "proto3"; package shop; message Common { int64 n = 1; }')
  (folder / '1a2b3c4d.proto').write_text(
      'syntax = "proto3"; package shop; import "common.proto";\n'
      'import "google/protobuf/duration.proto";\n'
      'message Order { string id = 1; shop.Common c = 2; '
      'google.protobuf.Duration took = 3; }')
  revisions = payload_schemas.load(str(folder), 'protobuf', None)
  assert sorted(revisions) == ['1a2b3c4d']
  assert [f['name'] for f in payload_schemas.merged_fields(revisions)] == [
      'id', 'c', 'took']
  revision = revisions['1a2b3c4d']
  _, fn = parse_fn(revisions)
  message = revision._class(id='a')  # pylint: disable=protected-access
  message.took.seconds, message.took.nanos = 1, -5
  _, dead = parse_all(fn, [PubsubMessage(message.SerializeToString(), {
      payloads.REVISION_ATTRIBUTE: '1a2b3c4d'}, message_id='1')])
  assert [(d['reason'], d['field']) for d in dead] == [('bad_value', 'took')]
  message.took.nanos = 5
  rows, _ = parse_all(fn, [PubsubMessage(message.SerializeToString(), {
      payloads.REVISION_ATTRIBUTE: '1a2b3c4d'}, message_id='2')])
  assert rows[0]['took'] == D('1.000000005') and rows[0]['c'] is None
