"""JSON objects against BigQuery schemas: every type and mode, accepted forms
with the exact stored value, refused forms with their reason and field path;
and rows written to DuckDB read back equal."""

import datetime
import decimal
import json
import math

import duckdb
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from transforms import bigquery_times
from transforms import json_rows
from transforms import schemas
from storage.duckdb_files import DuckDBFiles
from transforms import duckdb_sink

UTC = datetime.timezone.utc
D = decimal.Decimal


def field(kind, mode='NULLABLE', fields=None):
  spec = {'name': 'f', 'type': kind, 'mode': mode}
  if fields:
    spec['fields'] = fields
  return schemas.field_from_bigquery(spec)


def convert(kind, value, mode='NULLABLE', fields=None):
  return json_rows.convert_object({'f': value}, [field(kind, mode, fields)])['f']


def refusal(kind, value, mode='NULLABLE', fields=None):
  with pytest.raises(json_rows.Refused) as e:
    convert(kind, value, mode, fields)
  return e.value.reason, e.value.path


@pytest.mark.parametrize('kind, value, expected', [
    ('STRING', 'héllo', 'héllo'),
    ('STRING', 12, '12'),
    ('STRING', 1.5, '1.5'),
    ('STRING', True, 'true'),
    ('BYTES', 'AP8=', b'\x00\xff'),
    ('INTEGER', 42, 42),
    ('INT64', '-42', -42),
    ('INTEGER', 3.0, 3),
    ('INTEGER', (1 << 63) - 1, (1 << 63) - 1),
    ('INTEGER', str(-(1 << 63)), -(1 << 63)),
    ('FLOAT', 1.25, 1.25),
    ('FLOAT64', 7, 7.0),
    ('FLOAT', '2.5e3', 2500.0),
    ('FLOAT', 'Infinity', math.inf),
    ('FLOAT', '-Infinity', -math.inf),
    ('NUMERIC', '123.456', D('123.456000000')),
    ('NUMERIC', 0.1, D('0.100000000')),
    ('NUMERIC', '1.0000000005', D('1.000000001')),  # half away from zero
    ('NUMERIC', '-1.0000000005', D('-1.000000001')),
    ('NUMERIC', '9' * 29 + '.999999999', D('9' * 29 + '.999999999')),
    ('BIGNUMERIC', '1.' + '1' * 38, D('1.' + '1' * 38)),
    ('BIGNUMERIC', 12, D(12)),
    ('BOOLEAN', True, True),
    ('BOOL', 'FALSE', False),
    ('TIMESTAMP', '2017-10-17T20:57:17.338320Z',
     datetime.datetime(2017, 10, 17, 20, 57, 17, 338320, tzinfo=UTC)),
    ('TIMESTAMP', '2017-10-17 22:57:17+02:00',
     datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    ('TIMESTAMP', '2017-10-17 20:57:17 UTC',
     datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    ('TIMESTAMP', '2017-10-17 20:57',
     datetime.datetime(2017, 10, 17, 20, 57, tzinfo=UTC)),
    ('TIMESTAMP', '2017-10-17', datetime.datetime(2017, 10, 17, tzinfo=UTC)),
    ('TIMESTAMP', 1508273837.5,
     datetime.datetime(2017, 10, 17, 20, 57, 17, 500000, tzinfo=UTC)),
    ('DATE', '2017-10-17', datetime.date(2017, 10, 17)),
    ('TIME', '20:57:17.5', datetime.time(20, 57, 17, 500000)),
    ('TIME', '20:57:17.123456', datetime.time(20, 57, 17, 123456)),
    ('DATETIME', '2017-10-17T20:57:17', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('DATETIME', '2017-10-17 20:57:17.25',
     datetime.datetime(2017, 10, 17, 20, 57, 17, 250000)),
    ('JSON', {'b': [1, None], 'a': 'x'}, '{"a":"x","b":[1,null]}'),
    ('JSON', 'text', '"text"'),
])
def test_accepted_forms_and_stored_values(kind, value, expected):
  got = convert(kind, value)
  assert got == expected and type(got) is type(expected)


def test_nan_is_a_float():
  assert math.isnan(convert('FLOAT', 'NaN'))


@pytest.mark.parametrize('kind, value, reason', [
    ('STRING', {'a': 1}, 'bad_value'),
    ('STRING', [1], 'bad_value'),
    ('BYTES', 'not base64!', 'bad_value'),
    ('BYTES', 12, 'bad_value'),
    ('TIME', '20:57:17.1234567', 'bad_value'),  # at most 6 digits
    ('INTEGER', True, 'bad_value'),
    ('INTEGER', 1.5, 'bad_value'),
    ('INTEGER', '1.0', 'bad_value'),
    ('INTEGER', 1 << 63, 'out_of_range'),
    ('INTEGER', str(-(1 << 63) - 1), 'out_of_range'),
    ('FLOAT', 'abc', 'bad_value'),
    ('FLOAT', False, 'bad_value'),
    ('NUMERIC', '1e30', 'out_of_range'),
    ('NUMERIC', 'abc', 'bad_value'),
    ('NUMERIC', 'NaN', 'bad_value'),
    ('BIGNUMERIC', '1e39', 'out_of_range'),
    ('BOOLEAN', 'yes', 'bad_value'),
    ('BOOLEAN', 1, 'bad_value'),
    ('TIMESTAMP', 'yesterday', 'bad_value'),
    ('TIMESTAMP', '2017-13-45', 'bad_value'),
    ('TIMESTAMP', 1e300, 'out_of_range'),
    ('TIMESTAMP', '0001-01-01T00:30:00+01:00', 'out_of_range'),
    ('DATE', '17/10/2017', 'bad_value'),
    ('DATE', '2017-02-30', 'bad_value'),
    ('TIME', '25:00:00', 'bad_value'),
    ('DATETIME', '2017-10-17T20:57:17Z', 'bad_value'),
])
def test_refused_forms_have_a_reason_and_the_field(kind, value, reason):
  assert refusal(kind, value) == (reason, 'f')


def test_modes():
  assert convert('STRING', None) is None
  assert refusal('STRING', None, 'REQUIRED') == ('missing_field', 'f')
  with pytest.raises(json_rows.Refused) as e:
    json_rows.convert_object({}, [field('STRING', 'REQUIRED')])
  assert (e.value.reason, e.value.path) == ('missing_field', 'f')
  assert convert('INTEGER', ['1', 2], 'REPEATED') == [1, 2]
  assert convert('INTEGER', None, 'REPEATED') == []
  assert refusal('INTEGER', 1, 'REPEATED') == ('bad_value', 'f')
  assert refusal('INTEGER', [1, None], 'REPEATED') == ('bad_value', 'f[1]')
  assert refusal('INTEGER', [1, 'x'], 'REPEATED') == ('bad_value', 'f[1]')


ITEMS = [{'name': 'sku', 'type': 'STRING', 'mode': 'REQUIRED'},
         {'name': 'price', 'type': 'NUMERIC'},
         {'name': 'tags', 'type': 'STRING', 'mode': 'REPEATED'},
         {'name': 'dims', 'type': 'STRUCT', 'fields': [
             {'name': 'w', 'type': 'FLOAT64'}]}]


def test_nested_repeated_records_with_paths():
  items = [{'sku': 'a', 'price': '1.5', 'tags': ['x'], 'dims': {'w': 2}},
           {'sku': 'b'}]
  assert convert('RECORD', items, 'REPEATED', ITEMS) == [
      {'sku': 'a', 'price': D('1.500000000'), 'tags': ['x'], 'dims': {'w': 2.0}},
      {'sku': 'b', 'price': None, 'tags': [], 'dims': None}]
  bad = [{'sku': 'a'}, {'sku': 'b'}, {'sku': 'c', 'price': 'x'}]
  assert refusal('RECORD', bad, 'REPEATED', ITEMS) == ('bad_value', 'f[2].price')
  assert refusal('RECORD', [{'price': 1}], 'REPEATED', ITEMS) == (
      'missing_field', 'f[0].sku')
  assert refusal('RECORD', [{'sku': 'a', 'dims': {'w': 'heavy'}}], 'REPEATED',
                 ITEMS) == ('bad_value', 'f[0].dims.w')


def test_unknown_fields_ignored_or_rejected():
  fields = [field('STRING')]
  assert json_rows.convert_object({'f': 'a', 'g': 1}, fields) == {'f': 'a'}
  with pytest.raises(json_rows.Refused) as e:
    json_rows.convert_object({'f': 'a', 'g': 1}, fields, unknown='reject')
  assert (e.value.reason, e.value.path) == ('unknown_field', 'g')


def test_schema_files_are_checked():
  for spec, message in (
      ([{'name': 'a', 'type': 'STRNG'}], "a: unknown type 'STRNG'"),
      ([{'name': 'a', 'type': 'STRING', 'mode': 'OPTIONAL'}], 'unknown mode'),
      ([{'name': 'r', 'type': 'RECORD'}], 'r: a RECORD needs "fields"'),
      ([{'name': 'a', 'type': 'INT64'}, {'name': 'A', 'type': 'STRING'}],
       'field names repeat'),
      ([], 'non-empty JSON list')):
    with pytest.raises(ValueError) as e:
      schemas.table_from_bigquery_schema(spec, 't')
    assert message in str(e.value)


ALL_TYPES = [
    {'name': 's', 'type': 'STRING'}, {'name': 'b', 'type': 'BYTES'},
    {'name': 'i', 'type': 'INT64', 'mode': 'REQUIRED'},
    {'name': 'f', 'type': 'FLOAT64'}, {'name': 'n', 'type': 'NUMERIC'},
    {'name': 'bn', 'type': 'BIGNUMERIC'}, {'name': 'ok', 'type': 'BOOL'},
    {'name': 'ts', 'type': 'TIMESTAMP'}, {'name': 'd', 'type': 'DATE'},
    {'name': 't', 'type': 'TIME'}, {'name': 'dt', 'type': 'DATETIME'},
    {'name': 'j', 'type': 'JSON'},
    {'name': 'items', 'type': 'RECORD', 'mode': 'REPEATED', 'fields': ITEMS},
]


def write_and_read_back(tmp_path, rows):
  from apache_beam.testing.test_pipeline import TestPipeline
  import apache_beam as beam
  schema = schemas.table_from_bigquery_schema(ALL_TYPES, 'everything')
  db = str(tmp_path / 'w.duckdb')
  with TestPipeline(runner='FnApiRunner') as p:
    refused = (p | beam.Create(rows)
               | duckdb_sink.WriteToDuckDB(db, schema))
    from apache_beam.testing.util import assert_that, equal_to
    assert_that(refused, equal_to([]))
  DuckDBFiles.close_all()
  con = duckdb.connect(db, read_only=True)
  try:
    cursor = con.execute('SELECT * FROM everything ORDER BY message_id')
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]
  finally:
    con.close()


def normalised(row):
  """DuckDB reads BIGNUMERIC back as its text (no 76-digit DECIMAL), JSON as
  text, TIMESTAMPTZ in UTC."""
  out = dict(row)
  if out.get('bn') is not None:
    out['bn'] = D(out['bn'])
  return out


def test_every_type_reads_back_equal_from_duckdb(tmp_path):
  message = {
      's': 'héllo', 'b': 'AP8=', 'i': '-42', 'f': 1.25, 'n': '123.456',
      'bn': '1.' + '1' * 38, 'ok': 'true', 'ts': '2017-10-17 22:57:17+02:00',
      'd': '2017-10-17', 't': '20:57:17.5', 'dt': '2017-10-17T20:57:17',
      'j': {'a': [1, 2]},
      'items': [{'sku': 'a', 'price': 1.5, 'tags': ['x', 'y'], 'dims': {'w': 2}}]}
  schema = schemas.table_from_bigquery_schema(ALL_TYPES, 'everything')
  row = dict(json_rows.convert_object(message, schema.fields[:-1]),
             message_id='m1')
  [back] = write_and_read_back(tmp_path, [row])
  back = normalised(back)
  back['j'] = json.loads(back['j'])
  row['j'] = json.loads(row['j'])
  assert back == row


def test_arrow_table_column_by_column_equals_row_by_row():
  """The bulk insert's column-wise Arrow build is the per-row one, missing
  fields and nulls included."""
  import pyarrow as pa
  schema = schemas.table_from_bigquery_schema(ALL_TYPES, 'everything')
  message = {
      's': 'héllo', 'b': 'AP8=', 'i': '-42', 'f': 1.25, 'n': '123.456',
      'bn': '1.' + '1' * 38, 'ok': 'true', 'ts': '2017-10-17 22:57:17+02:00',
      'd': '2017-10-17', 't': '20:57:17.5', 'dt': '2017-10-17T20:57:17',
      'j': {'a': [1, 2]},
      'items': [{'sku': 'a', 'price': 1.5, 'tags': ['x', 'y'], 'dims': {'w': 2}},
                {'sku': 'b'}]}
  rows = [json_rows.convert_object(message, schema.fields),
          {'i': 7}, {'i': 8, 'items': [], 'bn': None}]
  expected = pa.Table.from_pylist([schema.to_arrow_row(r) for r in rows],
                                  schema=schema.arrow_schema())
  assert schema.to_arrow_table(rows).equals(expected)
  stamped = schema.to_arrow_table(rows, constants={'s': 'x'})
  assert stamped.column('s').to_pylist() == ['x'] * 3


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(['s', 'i', 'n', 'ts', 'items', 'x']),
                      children, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from([f['name'] for f in ALL_TYPES] + ['other']), JSON_VALUES,
    max_size=8))
def test_any_object_is_one_row_or_one_refusal(payload):
  """Random JSON: a row of the schema's columns, or Refused with a reason
  and a path that starts with a schema field; never another exception."""
  schema = schemas.table_from_bigquery_schema(ALL_TYPES, 'everything')
  fields = schema.fields[:-1]
  try:
    row = json_rows.convert_object(payload, fields)
  except json_rows.Refused as e:
    assert e.reason in ('missing_field', 'bad_value', 'out_of_range')
    assert e.path.split('[')[0].split('.')[0] in {f.name for f in fields}
    return
  assert set(row) == {f.name for f in fields}
  json.dumps(schema.to_bigquery_json(dict(row, message_id='m')))  # serialisable


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime.datetime(1, 1, 2),
                    max_value=datetime.datetime(9999, 12, 30)),
       st.sampled_from(['T', ' ']), st.sampled_from(['', 'Z', '+02:00', '-11:30']),
       st.booleans())
def test_fast_timestamp_path_equals_the_general_reader(when, sep, zone, micros):
  text = when.strftime('%Y-%m-%d' + sep + '%H:%M:%S') + (
      '.%06d' % when.microsecond if micros else '') + zone
  try:
    general = bigquery_times._timestamp(text, 'f')  # pylint: disable=protected-access
  except json_rows.Refused as e:
    with pytest.raises(json_rows.Refused) as fast:
      bigquery_times._fast_timestamp(text, 'f')  # pylint: disable=protected-access
    assert fast.value.reason == e.reason
    return
  assert bigquery_times._fast_timestamp(text, 'f') == general  # pylint: disable=protected-access


@pytest.mark.parametrize('text, stored', [
    # GEOS's default WKT stops at 16 significant digits: found by the
    # property test of exact values.
    ('POINT(0.0 0.001227796386726803)', 'POINT (0 0.001227796386726803)'),
    ('LINESTRING(0.1 0.2, 0.30000000000000004 1e-20)',
     'LINESTRING (0.1 0.2, 0.30000000000000004 1e-20)'),
])
def test_geography_keeps_every_coordinate_exactly(text, stored):
  fields = schemas.table_from_bigquery_schema(
      [{'name': 'g', 'type': 'GEOGRAPHY'}], 't', message_id_column=False).fields
  assert json_rows.convert_object({'g': text}, fields) == {'g': stored}


def test_geography_with_a_lone_surrogate_is_a_bad_value_not_an_internal_error():
  fields = schemas.table_from_bigquery_schema(
      [{'name': 'g', 'type': 'GEOGRAPHY'}], 't', message_id_column=False).fields
  with pytest.raises(json_rows.Refused) as refused:
    json_rows.convert_object({'g': 'a\ud800b'}, fields)
  assert refused.value.reason == 'bad_value' and refused.value.path == 'g'
