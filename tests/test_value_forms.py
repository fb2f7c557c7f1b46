"""Every line of the table of value forms (docs/values.md): the
accepted ones store exactly the value it says (also read back from DuckDB
through the sink), the refused ones are refused with its reason."""

import decimal
import os
import re

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from tests.conftest import duckdb_dicts
from transforms import exact_json
from transforms import json_rows
from transforms import schemas
from storage.duckdb_files import DuckDBFiles
from transforms import duckdb_sink

README = os.path.join(os.path.dirname(__file__), '..', 'docs', 'values.md')


def readme():
  with open(README, encoding='utf-8') as f:
    return f.read()


def value_forms():
  text = readme()
  table = text.split('<!-- value-forms -->')[1].split('<!-- /value-forms -->')[0]
  rows = []
  for line in table.strip().splitlines()[2:]:
    kind, given, expected = [c.strip() for c in line.strip().strip('|').split(' | ')]
    mode, _, kind = kind.rpartition(' ')
    rows.append((mode or 'NULLABLE', kind, given.strip('`'), expected.strip('`')))
  return rows


FORMS = value_forms()


def convert(mode, kind, given):
  """The parse step's own path: exact_json, then the row converter, then the
  surrogate check where the parser could not make it."""
  field = schemas.field_from_bigquery({'name': 'f', 'type': kind, 'mode': mode})
  payload, checked = exact_json.loads(('{"f": %s}' % given).encode('utf-8'))
  row = json_rows.convert_object(payload, [field])
  if not checked and json_rows.first_unencodable(row) is not None:
    raise json_rows.surrogate_refusal(json_rows.first_unencodable(row))
  return field, row['f']


def stored_text(field, value):
  if field.type == 'JSON':
    return value
  return exact_json.dumps(field.to_bigquery_json(value))


def test_the_table_covers_every_type_and_reason():
  kinds = {json_rows.ALIASES.get(k, k) for _, k, _, _ in FORMS}
  assert kinds == set(json_rows.TYPES) - {'RECORD'}
  reasons = {e for _, _, _, e in FORMS if e in json_rows.REASONS}
  assert reasons == {'bad_value', 'out_of_range', 'missing_field'}


def test_the_table_cites_bigquerys_documentation_of_each_type():
  """Under the table, each of its types (and REPEATED) links to its section
  of BigQuery's documentation."""
  text = readme().split('<!-- /value-forms -->')[1].split('\n### ')[0]
  cited = dict(re.findall(r'\[([A-Z0-9]+)\]\[(bq-[a-z0-9-]+)\]', text))
  links = dict(re.findall(r'^\[(bq-[a-z0-9-]+)\]: (\S+)$', text, re.MULTILINE))
  for kind in {k for _, k, _, _ in FORMS} | {'REPEATED'}:
    assert kind in cited, kind
    assert links[cited[kind]].startswith(
        'https://cloud.google.com/bigquery/docs/'), kind


@pytest.mark.parametrize('mode, kind, given, expected', FORMS)
def test_each_line_of_the_readme_table(mode, kind, given, expected):
  if expected in json_rows.REASONS:
    with pytest.raises(json_rows.Refused) as e:
      convert(mode, kind, given)
    assert e.value.reason == expected
    assert re.fullmatch(r'f(\[[0-9]+\])?', e.value.path)
    exact_json.dumps(str(e.value))  # the message itself is storable
  else:
    field, value = convert(mode, kind, given)
    assert stored_text(field, value) == expected


def _read_back(value, field):
  """DuckDB's Python values -> ours: BIGNUMERIC is kept as its text."""
  if value is not None and field.type == 'BIGNUMERIC':
    return decimal.Decimal(value)
  return value


def test_accepted_forms_read_back_exactly_from_duckdb(tmp_path):
  """One column per accepted line, one row, through WriteToDuckDB."""
  fields, row = [], {}
  for i, (mode, kind, given, expected) in enumerate(FORMS):
    if expected in json_rows.REASONS:
      continue
    field, value = convert(mode, kind, given)
    name = 'c%d' % i
    fields.append(schemas.Field(name, field.type, field.mode))
    row[name] = value
  schema = schemas.TableSchema('forms', tuple(fields))
  db = str(tmp_path / 'forms.duckdb')
  with TestPipeline(runner='FnApiRunner') as p:
    refused = p | beam.Create([row]) | duckdb_sink.WriteToDuckDB(db, schema)
    assert_that(refused, equal_to([]))
  DuckDBFiles.close_all()
  [back] = duckdb_dicts(db, 'SELECT * FROM forms')
  by_name = {f.name: f for f in fields}
  for name, value in back.items():
    got = _read_back(value, by_name[name])
    if by_name[name].type == 'FLOAT':
      assert repr(got) == repr(row[name])  # NaN equal, -0.0 and 0.0 apart
    else:
      assert got == row[name], (name, got, row[name])


def test_keys_match_columns_in_any_case_at_every_depth():
  fields = [schemas.field_from_bigquery(f) for f in (
      {'name': 'id', 'type': 'STRING'}, {'name': 'i', 'type': 'INT64'},
      {'name': 'Customer', 'type': 'RECORD', 'fields': [
          {'name': 'eMail', 'type': 'STRING', 'mode': 'REQUIRED'}]})]
  assert json_rows.convert_object(
      {'id': 'x', 'I': 5, 'CUSTOMER': {'email': 'a@b'}}, fields) == {
          'id': 'x', 'i': 5, 'Customer': {'eMail': 'a@b'}}
  for payload, path in (({'id': 'x', 'ID': 'y'}, 'id'),
                        ({'customer': {'email': 'a', 'EMAIL': 'b'}},
                         'Customer.eMail')):
    with pytest.raises(json_rows.Refused) as e:
      json_rows.convert_object(payload, fields)
    assert (e.value.reason, e.value.path) == ('duplicate_field', path)
  with pytest.raises(json_rows.Refused) as e:
    json_rows.convert_object({'Id': 'x', 'other': 1}, fields, unknown='reject')
  assert (e.value.reason, e.value.path) == ('unknown_field', 'other')
  assert json_rows.convert_object({'ID': 'x', 'other': 1}, fields)['id'] == 'x'


KELVIN = '\u212a'  # KELVIN SIGN: str.lower() makes it 'k', BigQuery does not


@pytest.mark.parametrize('unknown', ['ignore', 'reject'])
def test_keys_fold_only_ascii_case_at_every_depth(unknown):
  """A key naming a column only under Unicode case rules is not that
  column: not a duplicate of it, not its value; an unknown key instead."""
  fields = [schemas.field_from_bigquery(f) for f in (
      {'name': 'k', 'type': 'INT64'}, {'name': '\u00e9', 'type': 'INT64'},
      {'name': 'r', 'type': 'RECORD', 'fields': [
          {'name': 'Kind', 'type': 'STRING'}]})]

  def convert_(payload):
    return json_rows.convert_object(payload, fields, unknown=unknown)
  assert convert_({'K': 1, 'R': {'KIND': 'x'}}) == {
      'k': 1, '\u00e9': None, 'r': {'Kind': 'x'}}  # ASCII case folds
  for payload, path in (({'k': 1, KELVIN: 2}, KELVIN),
                        ({KELVIN: 2}, KELVIN),
                        ({'\u00c9': 3}, '\u00c9'),  # a column \u00e9
                        ({'r': {'kind': 'x', KELVIN + 'ind': 'y'}},
                         'r.' + KELVIN + 'ind')):
    if unknown == 'reject':
      with pytest.raises(json_rows.Refused) as e:
        convert_(payload)
      assert (e.value.reason, e.value.path) == ('unknown_field', path)
    else:
      row = convert_(payload)
      assert row['k'] == payload.get('k') and row['\u00e9'] is None
      assert row['r'] == ({'Kind': 'x'} if 'r' in payload else None)


def test_a_surrogate_in_a_key_is_escaped_in_the_dead_letter():
  fields = [schemas.Field('f', 'STRING')]
  payload, checked = exact_json.loads(b'{"f": "x", "k\\ud800": 1}')
  assert not checked
  with pytest.raises(json_rows.Refused) as e:
    json_rows.convert_object(payload, fields, unknown='reject')
  assert e.value.path == 'k\\ud800'
  exact_json.dumps([e.value.path, str(e.value)])


@pytest.mark.parametrize('data, error', [
    (b'{"a": NaN}', exact_json.NotJson),
    (b'{"a": Infinity}', exact_json.NotJson),
    (b'{"a": 1} x', exact_json.NotJson),
    (b'[' * 100000 + b']' * 100000, exact_json.NotJson),
    (b'{"a": "\xff"}', exact_json.NotUtf8),
])
def test_what_is_not_json(data, error):
  with pytest.raises(error):
    exact_json.loads(data)


def test_numbers_keep_their_text_whatever_their_size():
  value, checked = exact_json.loads(
      b'{"a": 1.10, "b": 1e400, "c": -0.0, "d": %s, "e": %s}' % (
          b'9' * 80, b'7' * 5000))
  assert checked is False  # the 5,000-digit integer needed the standard reader
  assert value['a'] == '1.10' and type(value['a']) is exact_json.Number
  assert value['b'] == '1e400' and value['c'] == '-0.0'
  assert value['d'] == int('9' * 80)
  assert value['e'] == '7' * 5000 and type(value['e']) is exact_json.Number
  assert exact_json.dumps(value) == (
      '{"a":1.10,"b":1e400,"c":-0.0,"d":%s,"e":%s}' % ('9' * 80, '7' * 5000))
  assert re.fullmatch(r'[0-9]+', value['e'])


# What bqemulator cannot store as BigQuery does (docs/local-stack.md):
# BIGNUMERIC columns cannot be made; GEOGRAPHY reads back as WKB (compared
# through ST_ASTEXT).
NOT_IN_THE_EMULATOR = ('BIGNUMERIC',)


@pytest.mark.emulator
def test_accepted_forms_through_the_bigquery_emulator_equal_duckdb(
    bigquery_emulator, tmp_path):
  """Every accepted line of the table in one message, replayed through
  Beam's WriteToBigQuery (streaming inserts) and into DuckDB: the same
  values come back, for every type the emulator stores faithfully."""
  import json

  from tests.conftest import new_dataset
  from tests.conftest import replay_into_bigquery_and_duckdb
  fields, values = [], []
  for i, (mode, kind, given, expected) in enumerate(FORMS):
    if expected in json_rows.REASONS or json_rows.ALIASES.get(
        kind, kind) in NOT_IN_THE_EMULATOR:
      continue
    fields.append({'name': 'c%d' % i, 'type': kind, 'mode': mode})
    values.append('"c%d": %s' % (i, given))
  schema = tmp_path / 'forms.json'
  schema.write_text(json.dumps(fields))
  replay = tmp_path / 'forms.jsonl'
  replay.write_text('{%s}\n' % ', '.join(values), encoding='utf-8')
  client = bigquery_emulator
  dataset = new_dataset(client)
  db = tmp_path / 'w.duckdb'
  replay_into_bigquery_and_duckdb(schema, replay, dataset, 'forms', db)
  [local] = duckdb_dicts(db, 'SELECT * FROM forms')
  select = ', '.join('ST_ASTEXT(%s) AS %s' % (f['name'], f['name'])
                     if f['type'] == 'GEOGRAPHY' else f['name'] for f in fields)
  [remote] = [dict(r.items()) for r in client.query(
      'SELECT %s FROM %s.forms' % (select, dataset)).result()]
  differ = {}
  for f in fields:
    mine, theirs = local[f['name']], remote[f['name']]
    if f['type'] == 'JSON':  # the client hands JSON columns back parsed
      mine, theirs = (json.loads(v) if isinstance(v, str) else v
                      for v in (mine, theirs))
    if repr(mine) != repr(theirs) and mine != theirs:
      differ[f['name']] = (f['type'], mine, theirs)
  assert differ == {}
