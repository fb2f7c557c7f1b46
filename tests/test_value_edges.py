"""Values at BigQuery's edges (issue #28): a UDF's NaN and infinities, times
of day with more than six fractional digits, leap seconds, and keys that
name a column only under Unicode case rules. Each is a row holding what
BigQuery stores or a dead letter naming the field and the value; through
the parse step, into DuckDB, and (emulator) into the BigQuery emulator."""

import json
import string

import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.conftest import PROJECT
from tests.conftest import duckdb_dicts
from tests.conftest import new_dataset
from tests.conftest import run_main
from tests.test_exact_properties import stored_in_duckdb
from transforms import json_messages
from transforms import json_rows
from transforms import schemas
from transforms import udf

UDF = '''
import decimal
import math

VALUES = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf,
          'Decimal NaN': decimal.Decimal('NaN'),
          'Decimal sNaN': decimal.Decimal('sNaN'),
          'Decimal Infinity': decimal.Decimal('Infinity'),
          'Decimal -Infinity': decimal.Decimal('-Infinity')}


def put(message):
  """Puts the value named by "value" where "where" says."""
  value = VALUES[message.pop('value')]
  where = message.pop('where')
  if where == 'j nested':
    message['j'] = {'a': [1, {'b': value}]}
  elif where == 'r.j':
    message['r'] = {'j': [value]}
  elif where == 'fr':
    message['fr'] = [value, 1.5]
  else:
    message[where] = value
  return message
'''
SCHEMA = [
    {'name': 'id', 'type': 'STRING', 'mode': 'REQUIRED'},
    {'name': 's', 'type': 'STRING'},
    {'name': 'j', 'type': 'JSON'},
    {'name': 'n', 'type': 'NUMERIC'},
    {'name': 'bn', 'type': 'BIGNUMERIC'},
    {'name': 'f', 'type': 'FLOAT64'},
    {'name': 'fr', 'type': 'FLOAT64', 'mode': 'REPEATED'},
    {'name': 'i', 'type': 'INT64'},
    {'name': 'b', 'type': 'BOOL'},
    {'name': 'ts', 'type': 'TIMESTAMP'},
    {'name': 'r', 'type': 'RECORD', 'fields': [{'name': 'j', 'type': 'JSON'}]},
]
# (where the UDF puts it, the value) -> ('row', column, repr of the value
# stored) or ('dead', field, the dead letter's errorMessage ends with).
UDF_CASES = [
    ('j', 'nan', ('dead', 'j', 'NaN is not a JSON number')),
    ('j', 'Decimal NaN', ('dead', 'j', 'NaN is not a JSON number')),
    ('j nested', 'inf', ('dead', 'j', 'Infinity is not a JSON number')),
    ('r.j', '-inf', ('dead', 'r.j', '-Infinity is not a JSON number')),
    ('s', 'nan', ('dead', 's', 'NaN is not a JSON number')),
    ('s', 'Decimal -Infinity', ('dead', 's', '-Infinity is not a JSON number')),
    ('n', 'nan', ('dead', 'n', 'NaN is not a NUMERIC')),
    ('n', 'Decimal Infinity', ('dead', 'n', 'Infinity is not a NUMERIC')),
    ('bn', '-inf', ('dead', 'bn', '-Infinity is not a BIGNUMERIC')),
    ('i', 'nan', ('dead', 'i', 'NaN is not an INTEGER')),
    ('i', 'Decimal Infinity', ('dead', 'i', 'Infinity is not an INTEGER')),
    ('i', 'Decimal sNaN', ('dead', 'i', 'NaN is not an INTEGER')),
    ('b', 'inf', ('dead', 'b', 'Infinity is not a BOOLEAN')),
    ('ts', 'nan', ('dead', 'ts', 'NaN is not a TIMESTAMP')),
    ('f', 'nan', ('row', 'f', 'nan')),  # FLOAT64 has NaN: stored, as "NaN" is
    ('f', 'Decimal -Infinity', ('row', 'f', '-inf')),
    ('f', 'Decimal sNaN', ('row', 'f', 'nan')),
    ('fr', 'inf', ('row', 'fr', '[inf, 1.5]')),
]


def udf_messages(cases):
  return [json.dumps({'id': 'm%d' % n, 'where': where, 'value': value})
          for n, (where, value, _) in enumerate(cases)]


def check_stored(rows, dead, cases):
  """rows and dead letters keyed by the message's position."""
  assert len(rows) + len(dead) == len(cases)
  for n, (where, value, expected) in enumerate(cases):
    if expected[0] == 'dead':
      assert n in dead, (where, value, rows.get(n))
      reason, field, message = dead[n]
      assert (reason, field) == ('bad_value', expected[1]), (where, value)
      assert message.endswith(expected[2]), (where, value, message)
    else:
      assert n in rows, (where, value, dead.get(n))
      assert repr(rows[n][expected[1]]) == expected[2], (where, value)


def test_a_udfs_nan_and_infinities_are_stored_or_named_dead_letters():
  """Through the parse step (never an internal_error), then the DuckDB
  sink: FLOAT64 keeps NaN and infinities, every other column names them."""
  schema = schemas.table_from_bigquery_schema(SCHEMA, 't')
  fn = json_messages.ParseJsonMessageFn(schema, udf=udf.Udf('put.py:put', UDF))
  fn.setup()
  fn.start_bundle()
  rows, dead = [], []
  try:
    for n, payload in enumerate(udf_messages(UDF_CASES)):
      [out] = fn.process(PubsubMessage(payload.encode(), {}, message_id=str(n)),
                         timestamp=Timestamp(0))
      (dead if hasattr(out, 'tag') else rows).append(out.value)
  finally:
    fn.teardown()
  assert [d['reason'] for d in dead if d['reason'] != 'bad_value'] == []
  stored, letters = stored_in_duckdb(
      schema, rows, dead, 'SELECT * FROM t', 'SELECT message_id, reason, '
      'field, errorMessage FROM t_error_records')
  check_stored({int(r['message_id']): r for r in stored},
               {int(d['message_id']): (d['reason'], d['field'],
                                       d['errorMessage']) for d in letters},
               UDF_CASES)


@pytest.mark.emulator
def test_a_udfs_nan_and_infinities_in_the_bigquery_emulator_and_duckdb(
    bigquery_emulator, tmp_path):
  """main.py --udf, as a user runs it, into the BigQuery emulator (Beam's
  streaming inserts) and into DuckDB: the same rows and dead letters."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  # bqemulator cannot make a BIGNUMERIC column: checked in DuckDB above.
  cases = [c for c in UDF_CASES if c[0] != 'bn']
  schema = tmp_path / 'edges.json'
  schema.write_text(json.dumps([f for f in SCHEMA if f['name'] != 'bn']))
  replay = tmp_path / 'edges.jsonl'
  replay.write_text('\n'.join(udf_messages(cases)) + '\n')
  (tmp_path / 'put.py').write_text(UDF)
  db = tmp_path / 'w.duckdb'
  for where in (['--output_table', '%s:%s.edges' % (PROJECT, dataset),
                 '--bigquery_method', 'streaming_inserts'],
                ['--warehouse', db]):
    result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                      replay, '--udf', '%s:put' % (tmp_path / 'put.py'), *where)
    assert result.returncode == 0, result.stderr

  def line(message_id):
    return int(message_id.rsplit(':', 1)[1]) - 1
  rows_sql = 'SELECT message_id, f, fr FROM %s'
  dead_sql = 'SELECT message_id, reason, field, errorMessage FROM %s'
  local = ({line(r['message_id']): r
            for r in duckdb_dicts(db, rows_sql % 'edges')},
           {line(d['message_id']): (d['reason'], d['field'], d['errorMessage'])
            for d in duckdb_dicts(db, dead_sql % 'edges_error_records')})
  remote = ({line(r['message_id']): dict(r.items()) for r in client.query(
      rows_sql % ('%s.edges' % dataset)).result()},
            {line(d['message_id']): (d['reason'], d['field'], d['errorMessage'])
             for d in client.query(dead_sql % (
                 '%s.edges_error_records' % dataset)).result()})
  for rows, dead in (local, remote):
    check_stored(rows, dead, cases)
  assert local[1] == remote[1]
  assert {n: repr(r) for n, r in local[0].items()} == {
      n: repr(r) for n, r in remote[0].items()}


SIX = 'at most 6 fractional digits'


@pytest.mark.parametrize('kind, text, says', [
    ('TIMESTAMP', '2017-10-17T20:57:17.1234567Z', SIX),
    ('TIMESTAMP', '2017-10-17 20:57:17.123456789', SIX),
    ('DATETIME', '2017-10-17T20:57:17.1234567', SIX),
    ('TIME', '20:57:17.123456789', SIX),
    ('DATETIME', '2016-12-31 23:59:60', 'second 60 (a leap second) is read '
     'only in a TIMESTAMP'),
    ('TIME', '23:59:60.5', 'second 60 (a leap second) is read only in a '
     'TIMESTAMP'),
    ('TIMESTAMP', '9999-12-31T23:59:60.5Z', 'is outside TIMESTAMP'),
])
def test_times_of_day_refused_say_why(kind, text, says):
  field = schemas.Field('f', json_rows.ALIASES.get(kind, kind))
  with pytest.raises(json_rows.Refused) as e:
    json_rows.convert_object({'f': text}, [field])
  assert e.value.path == 'f' and says in str(e.value), str(e.value)


@pytest.mark.parametrize('text, stored', [
    ('2016-12-31T23:59:60Z', '2017-01-01 00:00:00.000000 UTC'),
    ('2016-12-31T23:59:60.999999Z', '2017-01-01 00:00:00.999999 UTC'),
    ('2016-12-31T18:59:60-05:00', '2017-01-01 00:00:00.000000 UTC'),
    ('2015-06-30 23:59:60 UTC', '2015-07-01 00:00:00.000000 UTC'),
    ('9999-12-31T23:59:60+00:01', '9999-12-31 23:59:00.000000 UTC'),
    ('0001-01-01T00:00:60Z', '0001-01-01 00:01:00.000000 UTC'),
])
def test_a_leap_second_is_the_next_minutes_first(text, stored):
  field = schemas.Field('ts', 'TIMESTAMP')
  row = json_rows.convert_object({'ts': text}, [field])
  assert field.to_bigquery_json(row['ts']) == stored


KELVIN = '\u212a'
FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
KEY_FIELDS = [schemas.field_from_bigquery(f) for f in (
    {'name': 'k', 'type': 'INT64'}, {'name': 'Id', 'type': 'INT64'},
    {'name': '\u00e9', 'type': 'INT64'},
    {'name': 'sK', 'type': 'RECORD', 'fields': [
        {'name': 'k', 'type': 'INT64'}, {'name': 'Id', 'type': 'INT64'}]})]
# Letters whose Unicode case rules reach the column names' letters (the
# Kelvin sign lowers to k, dotted and dotless i, long s, sharp s, E acute).
KEYS = st.one_of(
    st.sampled_from(['k', 'K', KELVIN, 'Id', 'ID', 'id', '\u0130d', '\u0131d',
                     '\u00e9', '\u00c9', 'sK', 'SK', 'sk', '\u017fk',
                     's' + KELVIN]),
    st.text(alphabet='kK%siI\u0130\u0131dDsS\u017f\u00df\u00e9\u00c9' % KELVIN,
            min_size=1, max_size=3))


def ascii_fold(name):
  return name.translate(FOLD)


@st.composite
def objects(draw, fields):
  """An object of KEYS: an object under a key that ASCII-folds to the
  record's name, else a digit."""
  records = {ascii_fold(f.name): f.fields for f in fields if f.type == 'RECORD'}
  keys = draw(st.lists(KEYS, max_size=5, unique=True))
  return {key: draw(objects(records[ascii_fold(key)]))
          if ascii_fold(key) in records else draw(st.integers(0, 9))
          for key in keys}


def expected(payload, fields, unknown, prefix=''):
  """What BigQuery's rule gives: keys match columns ignoring ASCII case
  only, in the order the keys come; then the records' own keys."""
  columns = {ascii_fold(f.name): f for f in fields}
  by_column = {}
  for key, value in payload.items():
    field = columns.get(ascii_fold(key))
    if field is None:
      if unknown == 'reject':
        return ('unknown_field', prefix + key)
      continue
    if field.name in by_column:
      return ('duplicate_field', prefix + field.name)
    by_column[field.name] = value
  row = {}
  for field in fields:
    value = by_column.get(field.name)
    if field.type == 'RECORD' and value is not None:
      value = expected(value, field.fields, unknown, prefix + field.name + '.')
      if type(value) is tuple:  # pylint: disable=unidiomatic-typecheck
        return value
    row[field.name] = value
  return row


@settings(max_examples=400, deadline=None)
@given(objects(KEY_FIELDS), st.sampled_from(['ignore', 'reject']))
def test_keys_match_columns_by_ascii_case_alone(payload, unknown):
  """Random keys, ASCII and not: the row or the refusal (duplicate_field,
  unknown_field) is what ASCII-only case folding gives, never another
  exception, at every depth."""
  try:
    got = json_rows.convert_object(payload, KEY_FIELDS, unknown=unknown)
  except json_rows.Refused as e:
    got = (e.reason, e.path)
  assert got == expected(payload, KEY_FIELDS, unknown)
