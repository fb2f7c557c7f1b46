"""Properties of the schema-driven parse step and the DuckDB sink, for random
schemas (every type and mode, records nested to depth 4) against random
messages, some hostile (lone surrogates, wide and tiny numbers, deep
nesting, odd key case, wrong types, duplicate keys):

- the parse step never raises and gives exactly one output per message;
- rows + dead letters == messages, and the sink refuses none of either;
- every message built from valid values is a row, and what DuckDB gives back
  is the exact value (Decimal for NUMERIC/BIGNUMERIC, int for INT64, the
  exact text for STRING, the nearest double for FLOAT64).
"""

import base64
import datetime
import decimal
import json
import os
import tempfile

import shapely
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.conftest import duckdb_dicts
from pipelines import launcher
from storage.duckdb_files import DuckDBFiles
from transforms import duckdb_sink
from transforms import json_messages
from transforms import schemas

UTC = datetime.timezone.utc
D = decimal.Decimal
SCALARS = ('STRING', 'BYTES', 'INTEGER', 'FLOAT', 'NUMERIC', 'BIGNUMERIC',
           'BOOLEAN', 'TIMESTAMP', 'DATE', 'TIME', 'DATETIME', 'JSON',
           'GEOGRAPHY')
NAMES = ('a', 'b', 'c', 'd', 'e')
NUMERIC_MAX = D('9' * 29 + '.' + '9' * 9)
BIGNUMERIC_MAX = D('%de-38' % ((1 << 255) - 1))


@st.composite
def fields(draw, depth=1):
  names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4,
                        unique=True))
  out = []
  for name in names:
    kind = draw(st.sampled_from(SCALARS + (('RECORD',) if depth < 4 else ())))
    mode = draw(st.sampled_from(schemas.MODES))
    children = tuple(draw(fields(depth + 1))) if kind == 'RECORD' else ()
    out.append(schemas.Field(name, kind, mode, fields=children))
  return out


def number_texts():
  """JSON number texts, as a sender might write them."""
  return st.one_of(
      st.integers().map(str),
      st.decimals(allow_nan=False, allow_infinity=False).map(lambda d: format(d, 'f')),
      st.decimals(allow_nan=False, allow_infinity=False).map(
          lambda d: str(d).replace('+', '')).filter(lambda t: 'E' in t or '.' in t),
      st.floats(allow_nan=False, allow_infinity=False).map(repr))


def json_text(value):
  return json.dumps(value, ensure_ascii=False)


@st.composite
def valid(draw, field):
  """(JSON text or None for absent, expected stored value) for a field."""
  if field.mode == 'REPEATED':
    items = draw(st.lists(valid_scalar(field), max_size=3))
    if not items and draw(st.booleans()):
      return draw(st.sampled_from([None, 'null', '[]'])), []
    return '[%s]' % ', '.join(t for t, _ in items), [e for _, e in items]
  if field.mode == 'NULLABLE' and draw(st.integers(0, 5)) == 0:
    return draw(st.sampled_from([None, 'null'])), None
  return draw(valid_scalar(field))


@st.composite
def valid_scalar(draw, field):
  kind = field.type
  if kind == 'STRING':
    if draw(st.booleans()):
      text = draw(number_texts())
      return text, text
    s = draw(st.text(max_size=12))
    return json_text(s), s
  if kind == 'BYTES':
    b = draw(st.binary(max_size=12))
    return json_text(base64.b64encode(b).decode()), b
  if kind == 'INTEGER':
    n = draw(st.integers(-(1 << 63), (1 << 63) - 1))
    form = draw(st.sampled_from(['%d', '%d.0', '"%d"', '%de0']))
    return form % n, n
  if kind == 'FLOAT':
    text = draw(number_texts().filter(lambda t: abs(float(t)) < 1e308))
    return text, float(text)
  if kind in ('NUMERIC', 'BIGNUMERIC'):
    limit, places = ((NUMERIC_MAX, 9) if kind == 'NUMERIC'
                     else (BIGNUMERIC_MAX, 38))
    d = draw(st.decimals(min_value=-limit, max_value=limit, places=places + 3,
                         allow_nan=False, allow_infinity=False))
    exact = d.quantize(D(1).scaleb(-places), rounding=decimal.ROUND_HALF_UP,
                       context=decimal.Context(prec=200))
    if abs(exact) > limit:
      exact = d = D(0)
    text = format(d, 'f')
    return (json_text(text) if draw(st.booleans()) else text), exact
  if kind == 'BOOLEAN':
    b = draw(st.booleans())
    return json_text(b), b
  if kind == 'TIMESTAMP':
    when = draw(st.datetimes(min_value=datetime.datetime(1, 1, 2),
                             max_value=datetime.datetime(9999, 12, 30)))
    return json_text(when.isoformat() + 'Z'), when.replace(tzinfo=UTC)
  if kind == 'DATE':
    day = draw(st.dates())
    return json_text(day.strftime('%04Y-%m-%d') if False else '%04d-%02d-%02d' % (
        day.year, day.month, day.day)), day
  if kind == 'TIME':
    clock = draw(st.times())
    return json_text(clock.isoformat()), clock
  if kind == 'DATETIME':
    when = draw(st.datetimes(min_value=datetime.datetime(1, 1, 1)))
    return json_text('%04d-%s' % (when.year, when.isoformat()[when.isoformat().index('-') + 1:])), when
  if kind == 'JSON':
    value = draw(st.recursive(
        st.none() | st.booleans() | st.integers(-(1 << 63), (1 << 64) - 1)
        | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(
            st.text(max_size=3), c, max_size=3), max_leaves=8).filter(
                lambda v: v is not None))  # a top-level null is SQL NULL
    text = json_text(value)
    return text, text
  if kind == 'GEOGRAPHY':
    lon = draw(st.floats(-180, 180))
    lat = draw(st.floats(-90, 90))
    return json_text('POINT(%r %r)' % (lon, lat)), (lon, lat)
  assert kind == 'RECORD'
  parts, expected = [], {}
  for child in field.fields:
    text, value = draw(valid(child))
    expected[child.name] = value
    if text is not None:
      parts.append((draw(odd_case(child.name)), text))
  return '{%s}' % ', '.join('"%s": %s' % kv for kv in parts), expected


def odd_case(name):
  return st.sampled_from([name, name.upper()])


HOSTILE = st.sampled_from([
    '"a\\ud800b"', '"\\udfff"', '1e400', '-1e400', '1e-400', '9' * 80,
    '-' + '9' * 80, '0.' + '1' * 60, '123456789012345678901234567890.12345',
    '[' * 600 + ']' * 600, '{"x": ' * 20 + '1' + '}' * 20, '-0', '-0.0',
    'true', 'false', 'null', '""', '"١٢٣"', '"9999-12-31T23:59:60Z"',
    '"10000-01-01"', '{}', '[]', '[null]', '"POINT(181 0)"', '"AA=="',
    '18446744073709551616', '"NaN"', '" 1 "', '1E+5',
    '"2016-12-31T23:59:60Z"', '"23:59:60"', '"2017-10-17T20:57:17.1234567"',
    '"20:57:17.123456789"',
])


@st.composite
def messages(draw, schema_fields):
  """(payload bytes, expected row or None when it may be refused)."""
  parts, expected, hostile = [], {}, draw(st.integers(0, 3)) == 0
  for field in schema_fields:
    text, value = draw(valid(field))
    expected[field.name] = value
    if hostile and draw(st.booleans()):
      text = draw(HOSTILE | st.text(max_size=8).map(json_text))
    if text is not None:
      parts.append((draw(odd_case(field.name)), text))
  if hostile and parts and draw(st.booleans()):  # a second key for a column
    key, text = draw(st.sampled_from(parts))
    parts.append((key.swapcase() if draw(st.booleans()) else key, text))
  payload = '{%s}' % ', '.join('"%s": %s' % kv for kv in parts)
  return payload.encode('utf-8'), None if hostile else expected


def same(field, stored, expected):
  if field.mode == 'REPEATED':
    return len(stored) == len(expected) and all(
        same_scalar(field, s, e) for s, e in zip(stored, expected))
  if expected is None:
    return stored is None
  return same_scalar(field, stored, expected)


def same_scalar(field, stored, expected):
  kind = field.type
  if kind == 'RECORD':
    return all(same(c, stored[c.name], expected[c.name]) for c in field.fields)
  if kind == 'BIGNUMERIC':
    return D(stored) == expected
  if kind == 'FLOAT':
    return repr(stored) == repr(expected)
  if kind == 'JSON':
    exact = lambda t: json.loads(t, parse_float=D)  # noqa: E731
    return exact(stored) == exact(expected)
  if kind == 'GEOGRAPHY':
    return tuple(shapely.get_coordinates(shapely.from_wkt(stored))[0]) == expected
  return stored == expected and type(stored) is type(expected)


def stored_in_duckdb(schema, rows, dead, *queries):
  """``rows`` and dead letters ``dead`` stored in a fresh warehouse as a run
  stores them (its tables made first, then the DuckDB sink); the result of
  each of ``queries`` on it."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'w.duckdb')
    errors = schemas.error_records(schema.name + '_error_records')
    launcher.prepare_local_tables('--warehouse', path, (schema, errors))
    assert insert(path, schema, rows) == []
    assert insert(path, errors, dead) == []
    DuckDBFiles.close_all()
    return [duckdb_dicts(path, q) for q in queries]


def insert(path, schema, rows):
  """Rows through the DuckDB sink's DoFn; returns what it refused."""
  sink = duckdb_sink._InsertIntoDuckDB(path, schema, None, False, False)  # pylint: disable=protected-access
  sink.start_bundle()
  refused = []
  for row in rows:
    refused.extend(sink.process(row, WindowedValue(row, 0, [GlobalWindow()])))
  refused.extend(sink.finish_bundle())
  return refused


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_random_schemas_and_messages(data):
  schema_fields = data.draw(fields())
  schema = schemas.table_from_bigquery_schema(
      [f.bigquery() for f in schema_fields], 't')
  batch = data.draw(st.lists(messages(schema_fields), min_size=1, max_size=6))
  fn = json_messages.ParseJsonMessageFn(schema)
  fn.setup()
  fn.start_bundle()
  rows, dead = [], []
  for i, (payload, _) in enumerate(batch):
    out = list(fn.process(PubsubMessage(payload, {}, message_id=str(i)),
                          timestamp=Timestamp(0)))
    assert len(out) == 1
    if hasattr(out[0], 'tag'):
      dead.append(out[0].value)
      assert out[0].value['reason'] != 'internal_error', out[0].value
    else:
      rows.append(out[0].value)
  assert len(rows) + len(dead) == len(batch)
  found, counted = stored_in_duckdb(
      schema, rows, dead, 'SELECT * FROM t',
      'SELECT count(*) AS n FROM t_error_records')
  stored = {r['message_id']: r for r in found}
  assert counted == [{'n': len(dead)}]
  assert len(stored) == len(rows)
  for i, (_, expected) in enumerate(batch):
    if expected is None:
      continue
    assert str(i) in stored, [d for d in dead if d['message_id'] == str(i)]
    for field in schema_fields:
      assert same(field, stored[str(i)][field.name], expected[field.name]), (
          field, stored[str(i)][field.name], expected[field.name])


def test_negative_zero_inside_records_and_arrays_is_stored_as_it_is(tmp_path):
  """DuckDB's ON CONFLICT path turns -0.0 inside a STRUCT or a list into
  0.0; the sink's insert must not (the case the property test found)."""
  import math
  schema = schemas.table_from_bigquery_schema([
      {'name': 'd', 'type': 'FLOAT', 'mode': 'REPEATED'},
      {'name': 'r', 'type': 'RECORD', 'fields': [
          {'name': 'x', 'type': 'FLOAT'},
          {'name': 'l', 'type': 'FLOAT', 'mode': 'REPEATED'}]},
      {'name': 'f', 'type': 'FLOAT'}], 't')
  path = str(tmp_path / 'w.duckdb')
  launcher.prepare_local_tables('--warehouse', path, (schema,))
  rows = [{'d': [-0.0, 0.0], 'r': {'x': -0.0, 'l': [-0.0]}, 'f': -0.0,
           'message_id': 'a'},
          {'d': [0.0], 'r': {'x': 0.0, 'l': [0.0]}, 'f': 0.0, 'message_id': 'b'}]
  assert insert(path, schema, rows) == []
  assert insert(path, schema, rows) == []  # again: nothing added
  DuckDBFiles.close_all()
  stored = {r['message_id']: r for r in duckdb_dicts(path, 'SELECT * FROM t')}
  assert len(stored) == 2
  sign = lambda v: math.copysign(1, v)  # noqa: E731
  a, b = stored['a'], stored['b']
  assert [sign(v) for v in a['d'] + [a['r']['x']] + a['r']['l'] + [a['f']]] == [
      -1, 1, -1, -1, -1]
  assert [sign(v) for v in b['d'] + [b['r']['x']] + b['r']['l'] + [b['f']]] == [
      1, 1, 1, 1]
