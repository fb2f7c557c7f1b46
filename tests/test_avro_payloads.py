"""Avro payloads under a topic schema (issue 30), for random schemas (every
Avro type and logical type the subscription table maps, unions with null,
arrays, maps, records nested to depth 3) and random values, in both of
Pub/Sub's encodings:

- the table derived from the schema holds every value, and DuckDB gives
  back the exact value (Decimal for decimals, datetimes to the microsecond,
  a float's own double, enum names, maps as sorted key/value records);
- hostile bytes (truncated, extended, random, another schema's, the wrong
  encoding) are a named dead letter, never an exception, one per message.
"""

import datetime
import decimal
import io
import json
import math
import struct

import fastavro
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.test_exact_properties import same
from tests.test_exact_properties import stored_in_duckdb
from transforms import json_messages
from transforms import payload_schemas
from transforms import payloads
from transforms import schemas

UTC = datetime.timezone.utc
D = decimal.Decimal
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
MIN_MICROS = (datetime.datetime(1, 1, 1, tzinfo=UTC) - EPOCH) // datetime.timedelta(microseconds=1)
MAX_MICROS = (datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // datetime.timedelta(microseconds=1)
MIN_DAYS = (datetime.date(1, 1, 1) - datetime.date(1970, 1, 1)).days
MAX_DAYS = (datetime.date(9999, 12, 31) - datetime.date(1970, 1, 1)).days
# (precision, scale): NUMERIC's and BIGNUMERIC's widest, and some between.
DECIMALS = ((10, 2), (29, 0), (38, 9), (9, 9), (40, 10), (76, 38))
_names = iter(range(10**9))


def fresh(prefix):
  return '%s%d' % (prefix, next(_names))


def float32(x):
  return struct.unpack('<f', struct.pack('<f', x))[0]


@st.composite
def avro_types(draw, depth=1):
  """(Avro type, values strategy, expected(value))."""
  choices = ['boolean', 'int', 'long', 'float', 'double', 'string', 'bytes',
             'enum', 'fixed', 'decimal', 'timestamp-micros',
             'timestamp-millis', 'date', 'time-millis', 'time-micros', 'uuid',
             'nullable', 'array', 'map']
  if depth < 3:
    choices.append('record')
  kind = draw(st.sampled_from(choices))
  same_value = lambda v: v  # noqa: E731
  if kind in ('boolean', 'string', 'bytes'):
    values = {'boolean': st.booleans(), 'string': st.text(max_size=20),
              'bytes': st.binary(max_size=20)}[kind]
    return kind, values, same_value
  if kind == 'int':
    return kind, st.integers(-2**31, 2**31 - 1), same_value
  if kind == 'long':
    return kind, st.integers(-2**63, 2**63 - 1), same_value
  if kind == 'float':
    return kind, st.floats(width=32), float32
  if kind == 'double':
    return kind, st.floats(), same_value
  if kind == 'enum':
    symbols = draw(st.lists(st.from_regex(r'[A-Za-z_][A-Za-z0-9_]{0,5}',
                                          fullmatch=True),
                            min_size=1, max_size=4, unique=True))
    return ({'type': 'enum', 'name': fresh('E'), 'symbols': symbols},
            st.sampled_from(symbols), same_value)
  if kind == 'fixed':
    size = draw(st.integers(1, 8))  # size 0 in an array: refused (below)
    return ({'type': 'fixed', 'name': fresh('F'), 'size': size},
            st.binary(min_size=size, max_size=size), same_value)
  if kind == 'decimal':
    precision, scale = draw(st.sampled_from(DECIMALS))
    base = draw(st.sampled_from(['bytes', 'fixed']))
    schema = {'type': base, 'logicalType': 'decimal', 'precision': precision,
              'scale': scale}
    if base == 'fixed':
      schema.update(name=fresh('Dec'), size=32)
    unscaled = st.integers(-(10**precision - 1), 10**precision - 1)
    exact = decimal.Context(prec=200)
    return (schema, unscaled.map(lambda u: D(u).scaleb(-scale, exact)),
            same_value)
  if kind in ('timestamp-micros', 'timestamp-millis'):
    factor = 1 if kind == 'timestamp-micros' else 1000
    return ({'type': 'long', 'logicalType': kind},
            st.integers(MIN_MICROS // factor + 1, MAX_MICROS // factor),
            lambda v: EPOCH + datetime.timedelta(microseconds=v * factor))
  if kind == 'date':
    return ({'type': 'int', 'logicalType': 'date'},
            st.integers(MIN_DAYS, MAX_DAYS),
            lambda v: datetime.date(1970, 1, 1) + datetime.timedelta(days=v))
  if kind in ('time-millis', 'time-micros'):
    factor = 1000 if kind == 'time-millis' else 1
    base = 'int' if kind == 'time-millis' else 'long'
    return ({'type': base, 'logicalType': kind},
            st.integers(0, 86400 * 10**6 // factor - 1),
            lambda v: (datetime.datetime.min + datetime.timedelta(
                microseconds=v * factor)).time())
  if kind == 'uuid':
    return ({'type': 'string', 'logicalType': 'uuid'},
            st.uuids().map(str), same_value)
  if kind == 'nullable':
    inner, values, expected = draw(avro_types(depth))
    if isinstance(inner, list) or (isinstance(inner, dict) and
                                   inner.get('type') == 'array'):
      return inner, values, expected  # an array stays REPEATED
    empty = [] if isinstance(inner, dict) and inner.get('type') == 'map' else (
        None)  # a map is REPEATED: null is no entries
    return (['null', inner], st.none() | values,
            lambda v: empty if v is None else expected(v))
  if kind == 'array':
    inner, values, expected = draw(avro_types(depth))
    if isinstance(inner, list) or (isinstance(inner, dict) and inner.get(
        'type') in ('array', 'map')):  # no BigQuery type: tested below
      inner, values, expected = 'long', st.integers(-5, 5), same_value
    return ({'type': 'array', 'items': inner},
            st.lists(values, max_size=3),
            lambda v: [expected(x) for x in v])
  if kind == 'map':
    inner, values, expected = draw(avro_types(depth))
    return ({'type': 'map', 'values': inner},
            st.dictionaries(st.text(min_size=1, max_size=5), values, max_size=3),
            lambda v: [{'key': k, 'value': expected(v[k])} for k in sorted(v)])
  schema, values, expected = draw(records(depth + 1))
  return schema, values, expected


@st.composite
def records(draw, depth=1):
  names = draw(st.lists(st.from_regex(r'[a-z][a-z0-9_]{0,6}', fullmatch=True),
                        min_size=1, max_size=5, unique=True))
  parts = [(n, draw(avro_types(depth))) for n in names]
  schema = {'type': 'record', 'name': fresh('R'),
            'fields': [{'name': n, 'type': t} for n, (t, _, _) in parts]}
  values = st.fixed_dictionaries({n: v for n, (_, v, _) in parts})
  expected = lambda v: {n: e(v[n]) for n, (_, _, e) in parts}  # noqa: E731
  return schema, values, expected


def encode(schema, value, encoding):
  parsed = fastavro.parse_schema(schema)
  if encoding == 'BINARY':
    out = io.BytesIO()
    fastavro.schemaless_writer(out, parsed, value)
    return out.getvalue()
  out = io.StringIO()
  fastavro.json_writer(out, parsed, [value])
  return out.getvalue().strip().encode('utf-8')


def parse_all(fn, messages):
  """Each message through the parse step: (rows, dead letters); exactly one
  output a message, never an exception."""
  fn.start_bundle()
  rows, dead = [], []
  for message in messages:
    out = list(fn.process(message, timestamp=Timestamp(0)))
    assert len(out) == 1, out
    if hasattr(out[0], 'tag'):
      dead.append(out[0].value)
      assert out[0].value['reason'] != 'internal_error', out[0].value
    else:
      rows.append(out[0].value)
  return rows, dead


def assert_stored_exactly(fn, schema, messages, expected, same_value):
  """``messages`` through the parse step ``fn`` are all rows, and DuckDB
  gives back each ``expected`` {message id: {column: value}} exactly
  (``same_value(field, stored, expected)``)."""
  rows, dead = parse_all(fn, messages)
  assert dead == [], dead
  found, = stored_in_duckdb(schema, rows, dead, 'SELECT * FROM t')
  stored = {r['message_id']: r for r in found}
  assert sorted(stored) == sorted(expected)
  by_name = {f.name: f for f in schema.fields}
  for i, want in expected.items():
    for name, value in want.items():
      assert same_value(by_name[name], stored[i][name], value), (
          name, stored[i][name], value)


def parse_fn(revisions, fields=None, name='t'):
  schema = schemas.table_from_bigquery_schema(
      fields or payload_schemas.merged_fields(revisions), name)
  fn = json_messages.ParseJsonMessageFn(
      schema, payloads=payloads.SchemaPayloads('avro', revisions))
  fn.setup()
  return schema, fn


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_avro_schemas_and_values_are_stored_exactly(data):
  avro, values, expected_of = data.draw(records())
  revision = payload_schemas.read_avro(json.dumps(avro), 'random.avsc')
  schema, fn = parse_fn({None: revision})
  batch = data.draw(st.lists(values, min_size=1, max_size=4))
  messages, expected = [], {}
  for i, value in enumerate(batch):
    encoding = data.draw(st.sampled_from(['BINARY', 'JSON']))
    messages.append(PubsubMessage(encode(avro, value, encoding), {
        payloads.ENCODING_ATTRIBUTE: encoding}, message_id=str(i)))
    expected[str(i)] = expected_of(value)
  assert_stored_exactly(fn, schema, messages, expected, same)


def hostile(data, good):
  """Bytes that are not one record of the schema, or might be."""
  return data.draw(st.one_of(
      st.binary(max_size=64),
      st.just(good[:-1]), st.just(good + b'\x00'),
      st.just(good[:len(good) // 2]),
      st.binary(min_size=1, max_size=8).map(lambda b: good + b)))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_hostile_bytes_are_named_dead_letters_never_exceptions(data):
  avro, values, _ = data.draw(records())
  revision = payload_schemas.read_avro(json.dumps(avro), 'random.avsc')
  other = {'type': 'record', 'name': 'Other', 'fields': [
      {'name': 'x', 'type': 'string'}]}
  _, fn = parse_fn({'rev1': revision, 'rev2': payload_schemas.read_avro(
      json.dumps(other), 'other.avsc')}, fields=[
          {'name': 'x', 'type': 'STRING'}])
  good = encode(avro, data.draw(values), 'BINARY')
  messages = []
  for i in range(6):
    attributes = data.draw(st.fixed_dictionaries({}, optional={
        payloads.REVISION_ATTRIBUTE: st.sampled_from(['rev1', 'rev2', 'nope',
                                                      '']),
        payloads.ENCODING_ATTRIBUTE: st.sampled_from(['BINARY', 'JSON',
                                                      'json', 'XML'])}))
    messages.append(PubsubMessage(hostile(data, good), attributes,
                                  message_id=str(i)))
  rows, dead = parse_all(fn, messages)
  assert len(rows) + len(dead) == len(messages)
  for letter in dead:
    assert letter['reason'] in json_messages.REASONS, letter


def test_each_message_is_decoded_with_its_own_revision(tmp_path):
  """Two revisions (a field added): each message read with the one its
  attribute names, the table holding both; an unknown revision is a dead
  letter naming it, and the same message becomes a row once it is given."""
  v1 = {'type': 'record', 'name': 'SignIn', 'fields': [
      {'name': 'userid', 'type': 'string'},
      {'name': 'date', 'type': {'type': 'long',
                                'logicalType': 'timestamp-micros'}}]}
  v2 = dict(v1, fields=v1['fields'] + [
      {'name': 'device', 'type': ['null', 'string'], 'default': None}])
  folder = tmp_path / 'revisions'
  folder.mkdir()
  (folder / 'aaaa1111.avsc').write_text(json.dumps(v1))
  (folder / 'bbbb2222.avsc').write_text(json.dumps(v2))
  revisions = payload_schemas.load(str(folder), 'avro', lambda p: open(
      p, 'rb').read())
  fields = payload_schemas.merged_fields(revisions)
  assert [(f['name'], f['type'], f['mode']) for f in fields] == [
      ('userid', 'STRING', 'REQUIRED'), ('date', 'TIMESTAMP', 'REQUIRED'),
      ('device', 'STRING', 'NULLABLE')]
  _, fn = parse_fn(revisions)
  rid = payloads.REVISION_ATTRIBUTE
  messages = [
      PubsubMessage(encode(v1, {'userid': 'a', 'date': 0}, 'BINARY'),
                    {rid: 'aaaa1111'}, message_id='1'),
      PubsubMessage(encode(v2, {'userid': 'b', 'date': 1, 'device': 'ios'},
                           'BINARY'), {rid: 'bbbb2222'}, message_id='2'),
      PubsubMessage(encode(v2, {'userid': 'c', 'date': 2, 'device': 'x'},
                           'BINARY'), {rid: 'cccc3333'}, message_id='3'),
  ]
  rows, dead = parse_all(fn, messages)
  assert [(r['userid'], r['device']) for r in rows] == [('a', None),
                                                        ('b', 'ios')]
  assert [(d['message_id'], d['reason']) for d in dead] == [
      ('3', 'unknown_schema_revision')]
  assert "'cccc3333'" in dead[0]['errorMessage']
  (folder / 'cccc3333.avsc').write_text(json.dumps(v2))
  revisions = payload_schemas.load(str(folder), 'avro', lambda p: open(
      p, 'rb').read())
  _, fn = parse_fn(revisions)
  rows, dead = parse_all(fn, messages[2:])
  assert [r['userid'] for r in rows] == ['c'] and dead == []


def test_values_a_table_cannot_hold_name_their_field():
  avro = {'type': 'record', 'name': 'R', 'fields': [
      {'name': 'when', 'type': {'type': 'long',
                                'logicalType': 'timestamp-micros'}},
      {'name': 'inner', 'type': {'type': 'record', 'name': 'I', 'fields': [
          {'name': 'day', 'type': {'type': 'int', 'logicalType': 'date'}}]}},
      {'name': 'n', 'type': 'long'}]}
  revision = payload_schemas.read_avro(json.dumps(avro), 'r.avsc')
  _, fn = parse_fn({None: revision})
  _, narrow = parse_fn({None: revision}, fields=[
      {'name': 'when', 'type': 'TIMESTAMP'},
      {'name': 'inner', 'type': 'RECORD', 'fields': [
          {'name': 'day', 'type': 'DATE'}]},
      {'name': 'n', 'type': 'BOOLEAN'}])
  ok = {'when': 0, 'inner': {'day': 0}, 'n': 1}
  cases = [
      (fn, dict(ok, when=MAX_MICROS + 1), 'out_of_range', 'when'),
      (fn, dict(ok, when=-2**63), 'out_of_range', 'when'),
      (fn, dict(ok, inner={'day': MAX_DAYS + 1}), 'out_of_range', 'inner.day'),
      (narrow, ok, 'bad_value', 'n'),
  ]
  for parse, value, reason, field in cases:
    _, dead = parse_all(parse, [PubsubMessage(encode(avro, value, 'BINARY'),
                                              {}, message_id='m')])
    assert [(d['reason'], d['field']) for d in dead] == [(reason, field)], dead


def test_enums_are_names_in_string_columns_and_numbers_in_integer_ones():
  """A derived table stores an enum's name (it says what the value means);
  a table made for a BigQuery subscription has INTEGER for enums (its
  mapping), and gets the symbol's number there."""
  avro = {'type': 'record', 'name': 'R', 'fields': [
      {'name': 'kind', 'type': {'type': 'enum', 'name': 'K',
                                'symbols': ['WEB', 'APP']}}]}
  revision = payload_schemas.read_avro(json.dumps(avro), 'r.avsc')
  _, by_name = parse_fn({None: revision})
  _, by_number = parse_fn({None: revision}, fields=[
      {'name': 'kind', 'type': 'INTEGER'}])
  message = PubsubMessage(encode(avro, {'kind': 'APP'}, 'BINARY'), {},
                          message_id='m')
  assert parse_all(by_name, [message])[0][0]['kind'] == 'APP'
  assert parse_all(by_number, [message])[0][0]['kind'] == 1


def test_schemas_no_table_holds_are_one_line_errors():
  for avro, words in [
      ({'type': 'record', 'name': 'R', 'fields': [
          {'name': 'u', 'type': ['int', 'string']}]}, 'u: a union'),
      ({'type': 'record', 'name': 'R', 'fields': [
          {'name': 'a', 'type': {'type': 'array', 'items': {
              'type': 'array', 'items': 'int'}}}]}, 'array of arrays'),
      ({'type': 'record', 'name': 'Node', 'fields': [
          {'name': 'next', 'type': ['null', 'Node']}]}, 'recursive'),
      ({'type': 'string'}, 'one record'),
      ({'type': 'record', 'name': 'R', 'fields': [
          {'name': 'd', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                                 'precision': 60, 'scale': 0}}]}, 'decimal(60, 0)'),
  ]:
    try:
      payload_schemas.read_avro(json.dumps(avro), 'x.avsc')
    except payload_schemas.SchemaError as e:
      assert words in str(e), (str(e), words)
    else:
      raise AssertionError('accepted %s' % avro)
  assert math.isnan(float32(float('nan')))


def test_a_udf_gets_the_decoded_message_as_json():
  """With a UDF, a decoded Avro message reaches it as the JSON object
  BigQuery's JSON API would take (times as ISO text, decimals as exact
  text, bytes as base64, enums as names, NaN spelled out), and its output
  is checked against the table as usual."""
  from transforms import udf
  avro = {'type': 'record', 'name': 'R', 'fields': [
      {'name': 'when', 'type': {'type': 'long',
                                'logicalType': 'timestamp-micros'}},
      {'name': 'price', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                                 'precision': 30, 'scale': 9}},
      {'name': 'raw', 'type': 'bytes'},
      {'name': 'kind', 'type': {'type': 'enum', 'name': 'K',
                                'symbols': ['A', 'B']}},
      {'name': 'x', 'type': 'double'},
      {'name': 'seen', 'type': ['null', 'string'], 'default': None}]}
  revision = payload_schemas.read_avro(json.dumps(avro), 'r.avsc')
  schema = schemas.table_from_bigquery_schema(
      payload_schemas.merged_fields({None: revision}), 't')
  source = ('import json\n'
            'def mark(o):\n'
            '  o["seen"] = json.dumps(o, sort_keys=True)\n'
            '  return o\n')
  fn = json_messages.ParseJsonMessageFn(
      schema, payloads=payloads.SchemaPayloads('avro', {None: revision}),
      udf=udf.Udf('mark.py:mark', source))
  fn.setup()
  value = {'when': 1, 'price': D('123456789012345678901.123456789'),
           'raw': b'\x00\xff', 'kind': 'B', 'x': float('nan'), 'seen': None}
  try:
    rows, dead = parse_all(fn, [PubsubMessage(
        encode(avro, value, 'BINARY'), {}, message_id='1')])
  finally:
    fn.teardown()
  assert dead == [], dead
  row = rows[0]
  assert json.loads(row['seen']) == {
      'when': '1970-01-01T00:00:00.000001+00:00',
      'price': '123456789012345678901.123456789', 'raw': 'AP8=', 'kind': 'B',
      'x': 'NaN', 'seen': None}
  assert row['price'] == value['price'] and math.isnan(row['x'])
  assert row['raw'] == b'\x00\xff' and row['kind'] == 'B'


def test_an_array_of_items_that_take_no_bytes_is_refused_at_launch():
  """Ten bytes could declare a billion empty records: fastavro would build
  them all (a stream stuck on one message). No table needs such an array."""
  for items in ({'type': 'fixed', 'name': 'F0', 'size': 0},
                {'type': 'record', 'name': 'E', 'fields': []},
                {'type': 'record', 'name': 'E2', 'fields': [
                    {'name': 'z', 'type': {'type': 'fixed', 'name': 'Z',
                                           'size': 0}}]}):
    avro = {'type': 'record', 'name': 'R', 'fields': [
        {'name': 'a', 'type': {'type': 'array', 'items': items}}]}
    try:
      payload_schemas.read_avro(json.dumps(avro), 'bomb.avsc')
    except payload_schemas.SchemaError as e:
      assert 'take no bytes' in str(e), e
    else:
      raise AssertionError('accepted %s' % items)


def test_what_an_attacker_review_found_is_named_or_refused():
  """Issue 30's review: a huge decimal is out_of_range at once (it took 98
  s of CPU), an enum index fastavro would take from the end is not_avro,
  a pretty-printed JSON record is a row, an Avro float is the same float32
  from either encoding, and a short name resolves in its namespace."""
  import time
  avro = {'type': 'record', 'name': 'R', 'fields': [
      {'name': 'd', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                             'precision': 10, 'scale': 2}},
      {'name': 'e', 'type': {'type': 'enum', 'name': 'E',
                             'symbols': ['LOW', 'HIGH']}},
      {'name': 'f', 'type': 'float'}]}
  revision = payload_schemas.read_avro(json.dumps(avro), 'r.avsc')
  _, fn = parse_fn({None: revision})

  def zigzag(n):
    n, out = (n << 1) ^ (n >> 63), b''
    while n > 0x7f:
      out, n = out + bytes([n & 0x7f | 0x80]), n >> 7
    return out + bytes([n])
  huge = zigzag(500000) + b'\x7f' * 500000 + zigzag(0) + b'\x00' * 4
  started = time.process_time()
  _, dead = parse_all(fn, [PubsubMessage(huge, {}, message_id='huge')])
  assert time.process_time() - started < 1
  assert [(d['reason'], d['field']) for d in dead] == [('out_of_range', 'd')]
  negative = zigzag(2) + b'\x01\x02' + zigzag(-1) + b'\x00' * 4
  _, dead = parse_all(fn, [PubsubMessage(negative, {}, message_id='neg')])
  assert [d['reason'] for d in dead] == ['not_avro'], dead
  pretty = json.dumps({'d': '\u0001\u0002', 'e': 'HIGH', 'f': 0.1},
                      indent=2).encode()
  binary = encode(avro, {'d': D('2.58'), 'e': 'HIGH', 'f': 0.1}, 'BINARY')
  rows, dead = parse_all(fn, [
      PubsubMessage(pretty, {payloads.ENCODING_ATTRIBUTE: 'JSON'},
                    message_id='j'),
      PubsubMessage(binary, {}, message_id='b')])
  assert dead == [] and rows[0]['f'] == rows[1]['f'] == float32(0.1)
  assert rows[0]['d'] == rows[1]['d'] == D('2.58')
  clash = {'type': 'record', 'name': 'R', 'namespace': 'a', 'fields': [
      {'name': 'f1', 'type': {'type': 'record', 'name': 'X', 'fields': [
          {'name': 's', 'type': ['null', 'string']}]}},
      {'name': 'f2', 'type': {'type': 'record', 'name': 'b.X', 'fields': [
          {'name': 'n', 'type': ['null', 'long']}]}},
      {'name': 'f3', 'type': 'X'}]}
  revision = payload_schemas.read_avro(json.dumps(clash), 'c.avsc')
  fields = payload_schemas.merged_fields({None: revision})
  assert [c['name'] for c in fields[2]['fields']] == ['s']
  _, fn = parse_fn({None: revision})
  rows, _ = parse_all(fn, [PubsubMessage(encode(clash, {
      'f1': {'s': 'one'}, 'f2': {'n': 2}, 'f3': {'s': 'three'}}, 'BINARY'),
      {}, message_id='c')])
  assert rows[0]['f3'] == {'s': 'three'}
  for bad, words in [
      ({'type': 'record', 'name': 'R', 'fields': [
          {'name': 'd', 'type': {'type': 'bytes', 'logicalType': 'decimal'}}]},
       'needs an integer precision'),
      ({'type': 'record', 'name': 'R', 'fields': [{'name': '_PARTITIONTIME',
                                                   'type': 'long'}]},
       'reserves')]:
    try:
      payload_schemas.merged_fields({None: payload_schemas.read_avro(
          json.dumps(bad), 'x.avsc')})
      schemas.table_from_bigquery_schema(payload_schemas.merged_fields(
          {None: payload_schemas.read_avro(json.dumps(bad), 'x.avsc')}), 't')
    except (payload_schemas.SchemaError, ValueError) as e:
      assert words in str(e), e
    else:
      raise AssertionError('accepted %s' % bad)


def test_logical_values_into_string_float_and_integer_columns():
  """With --schema, a decoded timestamp, decimal or bytes into a STRING
  column is its JSON API text (as a JSON payload's text would be stored);
  a decimal into FLOAT is the nearest double, an integral one into
  INTEGER its integer."""
  avro = {'type': 'record', 'name': 'R', 'fields': [
      {'name': 't', 'type': {'type': 'long', 'logicalType': 'timestamp-micros'}},
      {'name': 'd', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                             'precision': 10, 'scale': 2}},
      {'name': 'b', 'type': 'bytes'},
      {'name': 'x', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                             'precision': 10, 'scale': 2}},
      {'name': 'i', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                             'precision': 10, 'scale': 2}}]}
  revision = payload_schemas.read_avro(json.dumps(avro), 'r.avsc')
  _, fn = parse_fn({None: revision}, fields=[
      {'name': 't', 'type': 'STRING'}, {'name': 'd', 'type': 'STRING'},
      {'name': 'b', 'type': 'STRING'}, {'name': 'x', 'type': 'FLOAT'},
      {'name': 'i', 'type': 'INTEGER'}])
  rows, dead = parse_all(fn, [PubsubMessage(encode(avro, {
      't': 1, 'd': D('1.50'), 'b': b'\x00\xff', 'x': D('0.10'),
      'i': D('7.00')}, 'BINARY'), {}, message_id='m')])
  assert dead == [], dead
  assert rows[0]['t'] == '1970-01-01T00:00:00.000001+00:00'
  assert (rows[0]['d'], rows[0]['b'], rows[0]['x'], rows[0]['i']) == (
      '1.50', 'AP8=', 0.1, 7)
