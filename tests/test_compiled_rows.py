"""The compiled decoder (``transforms.compiled_rows``) is speed only: for
random schemas and messages, hostile ones too, it gives the exact path's
row (type for type: -0.0, Decimal('1E+2') and True are not 0.0, 100 and 1)
or leaves the message to the exact path; through the whole parse step, the
same rows and dead letters with it and without it; and it takes every
canonical message (so the fast path is the path the common message takes).
"""

import datetime
import json

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp
import pytest
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.test_exact_properties import fields
from tests.test_exact_properties import messages
from tests.test_replay_blocks import ORDER_FIELDS
from tests.test_replay_blocks import per_message
from tests.test_replay_blocks import split
from transforms import compiled_rows
from transforms import exact_json
from transforms import json_messages
from transforms import json_rows
from transforms import schemas

# Forms where msgspec's typed reading and BigQuery's may part, by the type
# they try; each is held to the exact path (in its own type's column, and
# in any other).
TIMESTAMP_EDGES = [
    '"2017-10-17t20:57:17z"', '"2017-10-17 20:57:17"', '"2017-10-17T20:57:17"',
    '"2017-10-17T20:57:17+0100"', '"2017-10-17T20:57:17+01"',
    '"2017-10-17T20:57:17.1234567Z"', '"2017-10-17T20:57:17.123456\\u0037Z"',
    '"2017-10-17T20:57:17.12345\\u0036Z"', '"2017-10-17T20:57:17.1+01:00"',
    '"2017-10-17T20:57:17.9999995Z"', '"2017-10-17T20:57:17.999999Z"',
    '"0001-01-01T00:00:00+01:00"', '"9999-12-31T23:59:59-01:00"',
    '"0001-01-01T00:00:00-01:00"', '"2017-10-17T20:57:17-00:00"',
    '"2017-10-17T24:00:00Z"', '"2017-10-17T20:57:60Z"', '"2017-10-17T20:57Z"',
    '"2017-10-17T20:57:17.Z"', '"2017-10-17T20:57:17,5Z"',
    '"2017-10-17T20:57:17.12345678+01:00"', '"2017-10-17T20:57:17+23:59"',
    '"2017-10-17T20:57:17+24:00"', '"2017-10-17T20:57:17Z "',
    '"2017-10-17T20:57:17.000000001Z"', '"1508273837"', '1508273837.5',
]
DATE_EDGES = ['"2026-1-01"', '"0000-01-01"', '"2026-02-29"', '"2024-02-29"',
              '"2026-12-0\\u0031"', '"2026-12-01T00:00:00"', '" 2026-12-01"']
NUMBER_EDGES = [
    '"1_000"', '"NaN"', '"-Infinity"', '"\\u0661"', '1E+2', '" 21.5 "',
    '1e-400', '-1e-400', '-0', '-0.0', '9' * 400, '-' + '9' * 30,
    '1.7976931348623157e308', '1.8e308', '4.9e-324', '9223372036854775807',
    '9223372036854775808', '-9223372036854775808', '-9223372036854775809',
    '1.0', '1e3', '"1"', '0', '1', '123456789012345678', '0.1', '1e22',
    '9007199254740993', '"21.50"', '21.50', '1.0000000001',
]
OTHER_EDGES = [
    'true', '"true"', '[]', '[null]', '[1, null]', '{}', '{"a": 1, "a": 2}',
    '"\\ud800"', '"a\\u0000b"', '"\\u00e9t\\u00e9"', '""', '"  "', 'null',
]
EDGES = {'TIMESTAMP': TIMESTAMP_EDGES, 'DATE': DATE_EDGES,
         'DATETIME': TIMESTAMP_EDGES, 'TIME': TIMESTAMP_EDGES,
         'INTEGER': NUMBER_EDGES, 'FLOAT': NUMBER_EDGES,
         'NUMERIC': NUMBER_EDGES, 'BIGNUMERIC': NUMBER_EDGES}
ANY_EDGE = st.sampled_from(TIMESTAMP_EDGES + DATE_EDGES + NUMBER_EDGES +
                           OTHER_EDGES)


def strict(value):
  """A value with every type spelled out, so == tells -0.0 from 0.0,
  Decimal('1E+2') from Decimal('100'), True from 1."""
  kind = type(value)
  if kind is dict:
    return ('dict', tuple(sorted((k, strict(v)) for k, v in value.items())))
  if kind is list:
    return ('list', tuple(strict(v) for v in value))
  return (kind.__name__, repr(value))


def exact_outcome(converter, payload):
  """What the exact path makes of a payload: a row, or why not."""
  try:
    obj, checked = exact_json.loads(payload)
  except (exact_json.NotJson, exact_json.NotUtf8) as e:
    return ('not json', type(e).__name__)
  if type(obj) is not dict:  # pylint: disable=unidiomatic-typecheck
    return ('not an object',)
  try:
    row = converter(obj)
  except json_rows.Refused as e:
    return ('refused', e.reason, e.path)
  if not checked and json_rows.first_unencodable(row) is not None:
    return ('refused', 'bad_value', 'a lone surrogate')
  return ('row', strict(row))


def compiled_outcome(rows, payload):
  try:
    return ('row', strict(rows(payload)))
  except Exception:  # pylint: disable=broad-except
    return None  # left to the exact path


@st.composite
def edged(draw, schema_fields):
  """A message of the schema with one value, at the top or in a record,
  swapped for an edge form of its type (or of any type)."""
  obj = draw(canonical_object(schema_fields))
  edge = swap(draw, obj, schema_fields)
  return json.dumps(obj).replace(json.dumps(PLACEHOLDER), edge).encode(
      'utf-8', 'surrogatepass')


PLACEHOLDER = '\x00edge\x00'  # where the edge's JSON text goes


def swap(draw, obj, schema_fields):
  field = draw(st.sampled_from(schema_fields))
  key = next((k for k in obj if k.lower() == field.name), field.name)
  value = obj.get(key)
  if field.type == 'RECORD' and draw(st.booleans()):
    inner = value if isinstance(value, dict) else (
        value[0] if isinstance(value, list) and value and isinstance(
            value[0], dict) else None)
    if inner is not None:
      return swap(draw, inner, field.fields)
  pick = draw(st.integers(0, 7))
  if pick == 0:
    edge = draw(st.sampled_from(['null', '[null]', '[]']))
  elif pick < 5 and field.type in EDGES:
    edge = draw(st.sampled_from(EDGES[field.type]))
  else:
    edge = draw(ANY_EDGE)
  obj[key] = [PLACEHOLDER] if field.mode == 'REPEATED' and draw(
      st.booleans()) else PLACEHOLDER
  return edge


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_the_compiled_decoder_gives_the_exact_row_or_leaves_it(data):
  schema_fields = data.draw(fields())
  unknown = data.draw(st.sampled_from(['ignore', 'reject']))
  converter = json_rows.RowConverter(schema_fields, unknown)
  rows = compiled_rows.compile_rows(schema_fields)
  assert rows is not None
  for payload in data.draw(st.lists(
      edged(schema_fields) | messages(schema_fields).map(lambda m: m[0]),
      min_size=1, max_size=8)):
    fast = compiled_outcome(rows, payload)
    if fast is not None:
      assert fast == exact_outcome(converter, payload), payload


def canonical(field, value):
  """A stored value back as the JSON a well-behaved sender writes."""
  if field.mode == 'REPEATED':
    return [canonical_scalar(field, v) for v in value]
  return None if value is None else canonical_scalar(field, value)


def canonical_scalar(field, value):
  kind = field.type
  if kind == 'RECORD':
    return {f.name: canonical(f, value[f.name]) for f in field.fields}
  if kind == 'TIMESTAMP':
    return value.isoformat().replace('+00:00', 'Z')
  if kind in ('DATE', 'TIME', 'DATETIME'):
    return value.isoformat()
  if kind in ('NUMERIC', 'BIGNUMERIC'):
    return str(value)
  if kind == 'BYTES':
    import base64
    return base64.b64encode(value).decode()
  if kind == 'JSON':
    return json.loads(value)
  if kind == 'GEOGRAPHY':
    return 'POINT(%r %r)' % value
  return value


SCALAR = {
    'STRING': st.text(max_size=8).filter(exact_json.is_encodable),
    'INTEGER': st.integers(-(1 << 63), (1 << 63) - 1),
    'FLOAT': st.floats(allow_nan=False, allow_infinity=False),
    'BOOLEAN': st.booleans(),
    'NUMERIC': st.decimals(-10**20, 10**20, places=9),
    'BIGNUMERIC': st.decimals(-10**30, 10**30, places=20),
    'TIMESTAMP': st.datetimes(datetime.datetime(1, 1, 1),
                              datetime.datetime(9999, 12, 31, 23, 59, 59),
                              timezones=st.just(datetime.timezone.utc)),
    'DATE': st.dates(),
    'TIME': st.times(),
    'DATETIME': st.datetimes(),
    'BYTES': st.binary(max_size=6),
    'JSON': st.dictionaries(st.sampled_from('xyz'), st.integers(-5, 5) | st.text(
        'abc', max_size=3), max_size=2).map(json.dumps),
    'GEOGRAPHY': st.tuples(st.integers(-180, 180), st.integers(-90, 90)),
}


@st.composite
def stored(draw, field):
  def one():
    if field.type == 'RECORD':
      return {f.name: draw(stored(f)) for f in field.fields}
    return draw(SCALAR[field.type])
  if field.mode == 'REPEATED':
    return [one() for _ in range(draw(st.integers(0, 2)))]
  if field.mode == 'NULLABLE' and draw(st.integers(0, 4)) == 0:
    return None
  return one()


@st.composite
def canonical_object(draw, schema_fields):
  """A message as a well-behaved sender writes it (a JSON object)."""
  obj = {f.name: canonical(f, draw(stored(f))) for f in schema_fields}
  return {k: v for k, v in obj.items() if v is not None or draw(
      st.booleans())}  # a null or an absent key


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_the_compiled_decoder_takes_every_canonical_message(data):
  schema_fields = data.draw(fields())
  rows = compiled_rows.compile_rows(schema_fields)
  converter = json_rows.RowConverter(schema_fields)
  obj = data.draw(canonical_object(schema_fields))
  payload = json.dumps(obj, ensure_ascii=data.draw(st.booleans())).encode()
  expected = exact_outcome(converter, payload)
  if expected[0] != 'row':
    return  # a value the table refuses (a GEOGRAPHY BigQuery would not take)
  assert compiled_outcome(rows, payload) == expected, payload


ORDERS = schemas.table_from_bigquery_schema(ORDER_FIELDS, 'orders')


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(edged(ORDERS.fields) | messages(ORDERS.fields).map(
    lambda m: m[0]), min_size=1, max_size=10),
       st.sampled_from([None, 'projects/p/subscriptions/s']),
       st.sampled_from(['placed_at', 'customer', None]), st.booleans())
def test_the_parse_step_gives_the_same_rows_and_dead_letters_with_it(
    payloads, metadata, event_time_field, global_window):
  """Rows, dead letters and each row's stamp (its kind, time and windows),
  with the compiled paths and without them, in the global window or not."""
  batch = [PubsubMessage(p, {'k': 'v'}, message_id='m%d' % i,
                         publish_time=Timestamp(1_700_000_000 + i))
           for i, p in enumerate(payloads)]
  with_it = json_messages.ParseJsonMessageFn(
      ORDERS, event_time_field=event_time_field, metadata=metadata)
  without = json_messages.ParseJsonMessageFn(
      ORDERS, event_time_field=event_time_field, metadata=metadata)
  with_it.global_window = without.global_window = global_window
  without.setup()
  without._compiled = None  # pylint: disable=protected-access
  without._message_outputs = None  # pylint: disable=protected-access
  without.setup = lambda: None
  outputs_with, outputs_without = (per_message(with_it, batch),
                                   per_message(without, batch))
  assert list(map(stamp_of, outputs_with)) == list(map(
      stamp_of, outputs_without))
  a, b = split(outputs_with), split(outputs_without)
  assert [strict(r) for r in a[0]] == [strict(r) for r in b[0]]
  assert a[1] == b[1]


def stamp_of(output):
  """An output's kind, time and windows (none for a dead letter)."""
  if isinstance(output, beam.pvalue.TaggedOutput):
    return ('dead letter',)
  return (type(output).__name__, output.timestamp.micros,
          tuple(getattr(output, 'windows', ())))


def test_a_message_too_large_or_given_up_is_a_dead_letter_even_when_it_parses():
  schema = schemas.table_from_bigquery_schema(
      [{'name': 'a', 'type': 'STRING'}], 't')
  fn = json_messages.ParseJsonMessageFn(schema, max_message_bytes=20)
  big = PubsubMessage(b'{"a": "%s"}' % (b'x' * 30), {}, message_id='1')
  given_up = PubsubMessage(b'{"a": "x"}', {}, message_id='2')
  given_up.given_up = ('too_many_attempts', 'delivered 6 times')
  rows, dead = split(per_message(fn, [big, given_up]))
  assert rows == []
  assert [d['reason'] for d in dead] == ['too_large', 'too_many_attempts']


def test_the_orders_the_readme_shows_take_the_compiled_path():
  rows = compiled_rows.compile_rows(ORDERS.fields)
  with open('data/orders_sample.jsonl', 'rb') as f:
    first = f.readline()
  assert compiled_outcome(rows, first) is not None
  converter = json_rows.RowConverter(ORDERS.fields)
  assert compiled_outcome(rows, first) == exact_outcome(converter, first)


@pytest.mark.parametrize('global_window', [False, True])
def test_the_orders_the_readme_shows_take_the_one_call_message_path(
    global_window):
  """A stream's common order is decoded, checked, made a row and stamped
  in one generated call (``message_outputs``), which must not fall back
  to the slower paths on the README's orders: the same output as they."""
  fn = json_messages.ParseJsonMessageFn(ORDERS, event_time_field='placed_at')
  fn.global_window = global_window
  fn.setup()
  with open('data/orders_sample.jsonl', 'rb') as f:
    first = f.readline().rstrip(b'\n')  # the canonical one
  times = [b'2026-11-28T09:15:00Z', b'1970-01-01T00:00:00Z',
           b'0001-01-01T00:00:00Z', b'9999-12-31T23:59:59.999999Z',
           b'1969-12-31T23:59:59.999999Z', b'2026-11-28T10:15:00.500+01:00']
  messages_ = [PubsubMessage(first.replace(times[0], t), {}, message_id=i)
               for i, t in enumerate(times)]  # a number id too
  fast = fn._message_outputs  # pylint: disable=protected-access
  got = [fast(m, Timestamp(0)) for m in messages_]  # none falls back
  kind = 'WindowedValue' if global_window else 'TimestampedValue'
  assert {type(g).__name__ for g in got} == {kind}
  fn._message_outputs = None  # pylint: disable=protected-access
  slow = [out for m in messages_ for out in fn.process(m, Timestamp(0))]
  assert [strict(g.value) for g in got] == [strict(s.value) for s in slow]
  assert list(map(stamp_of, got)) == list(map(stamp_of, slow))


def test_a_seventh_fractional_digit_is_refused_not_rounded():
  schema = [schemas.Field('t', 'TIMESTAMP', 'NULLABLE')]
  rows = compiled_rows.compile_rows(schema)
  for text in (b'{"t": "2017-10-17T20:57:17.9999995Z"}',
               b'{"t": "2017-10-17T20:57:17.999999\\u0035Z"}'):
    assert compiled_outcome(rows, text) is None
  assert rows(b'{"t": "2017-10-17T20:57:17.999999+01:00"}') == {
      't': datetime.datetime(2017, 10, 17, 19, 57, 17, 999999,
                             tzinfo=datetime.timezone.utc)}
