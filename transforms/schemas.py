"""One definition per table, from which the BigQuery schema, the DuckDB DDL and
the Arrow schema used for local bulk inserts are all derived."""

import base64
import dataclasses
import datetime
import json
import math
import operator
from typing import Optional, Tuple

# BigQuery type -> DuckDB type: the closest exact one. BIGNUMERIC (76 digits)
# has no DuckDB type (DECIMAL stops at 38): its exact decimal text is kept.
_DUCKDB_TYPES = {
    'STRING': 'VARCHAR',
    'INTEGER': 'BIGINT',
    'TIMESTAMP': 'TIMESTAMPTZ',
    'BYTES': 'BLOB',
    'FLOAT': 'DOUBLE',
    'NUMERIC': 'DECIMAL(38, 9)',
    'BIGNUMERIC': 'VARCHAR',
    'BOOLEAN': 'BOOLEAN',
    'DATE': 'DATE',
    'TIME': 'TIME',
    'DATETIME': 'TIMESTAMP',
    'JSON': 'JSON',
    'GEOGRAPHY': 'VARCHAR',  # canonical WKT: ST_GeomFromText reads it
}


@dataclasses.dataclass(frozen=True)
class Field:
  """A column: BigQuery type names and modes (REQUIRED, NULLABLE, REPEATED)."""
  name: str
  type: str
  mode: str = 'NULLABLE'
  description: str = ''
  fields: Tuple['Field', ...] = ()  # for type RECORD

  def bigquery(self):
    field = {'name': self.name, 'type': self.type, 'mode': self.mode}
    if self.description:
      field['description'] = self.description
    if self.fields:
      field['fields'] = [f.bigquery() for f in self.fields]
    return field

  def duckdb_type(self):
    if self.type == 'RECORD':
      inner = ', '.join(
          '"%s" %s' % (f.name, f.duckdb_type()) for f in self.fields)
      base = 'STRUCT(%s)' % inner
    else:
      base = _DUCKDB_TYPES[self.type]
    return base + '[]' if self.mode == 'REPEATED' else base

  def arrow_type(self):
    import pyarrow as pa
    if self.type == 'RECORD':
      base = pa.struct([(f.name, f.arrow_type()) for f in self.fields])
    else:
      base = {
          'STRING': pa.string(),
          'INTEGER': pa.int64(),
          'TIMESTAMP': pa.timestamp('us', tz='UTC'),
          'BYTES': pa.binary(),
          'FLOAT': pa.float64(),
          'NUMERIC': pa.decimal128(38, 9),
          'BIGNUMERIC': pa.string(),
          'BOOLEAN': pa.bool_(),
          'DATE': pa.date32(),
          'TIME': pa.time64('us'),
          'DATETIME': pa.timestamp('us'),
          'JSON': pa.string(),
          'GEOGRAPHY': pa.string(),
      }[self.type]
    return pa.list_(base) if self.mode == 'REPEATED' else base

  def to_bigquery_json(self, value, load_file=False):
    """A Python value (datetime, bytes, dict) -> what BigQuery's JSON API takes.

    ``load_file``: for a line of a load job's JSON file, where a JSON column
    takes the raw JSON value ("Fields declared as JSON type load the raw JSON
    value": https://cloud.google.com/bigquery/docs/loading-data-cloud-storage-json);
    elsewhere (streaming inserts) it is the JSON text in a string.
    """
    if value is None:
      return None
    if self.mode == 'REPEATED':
      return [self._scalar_json(v, load_file) for v in value]
    return self._scalar_json(value, load_file)

  def _scalar_json(self, value, load_file=False):
    if self.type == 'JSON' and load_file:
      # Our JSON text has only what BigQuery's JSON type holds exactly
      # (INT64/UINT64 integers, doubles that round-trip): json.loads and the
      # load file's json.dumps give the same JSON value back.
      return json.loads(value)
    if self.type == 'TIMESTAMP':
      return timestamp_text(value)
    if self.type == 'BYTES':
      return base64.b64encode(value).decode('ascii')
    if self.type in ('NUMERIC', 'BIGNUMERIC'):
      return decimal_text(value)
    if self.type in ('DATE', 'TIME', 'DATETIME'):
      return value.isoformat()
    if self.type == 'FLOAT' and not math.isfinite(value):
      return str(value).replace('inf', 'Infinity').replace('nan', 'NaN')
    if self.type == 'RECORD':
      return {f.name: f.to_bigquery_json(value.get(f.name), load_file)
              for f in self.fields}
    return value

  @property
  def needs_arrow_conversion(self):
    """Whether a value must change before Arrow takes it: BIGNUMERIC (kept
    as its decimal text), at any depth. Arrow reads records (dicts, missing
    keys as nulls) and repeated values (lists) itself."""
    if self.type == 'BIGNUMERIC':
      return True
    return any(f.needs_arrow_conversion for f in self.fields)

  def to_arrow_value(self, value):
    """What the Arrow type takes: BIGNUMERIC as its exact text."""
    if value is None:
      return None
    if self.mode == 'REPEATED':
      return [self._scalar_arrow(v) for v in value]
    return self._scalar_arrow(value)

  def _scalar_arrow(self, value):
    if self.type == 'BIGNUMERIC':
      return decimal_text(value)
    if self.type == 'RECORD':
      return {f.name: f.to_arrow_value(value.get(f.name)) for f in self.fields}
    return value


MODES = ('NULLABLE', 'REQUIRED', 'REPEATED')


def timestamp_text(value):
  """Aware datetime -> BigQuery's TIMESTAMP text, four-digit year always
  (strftime writes year 1 as '1', which BigQuery refuses)."""
  v = value.astimezone(datetime.timezone.utc)
  return '%04d-%02d-%02d %02d:%02d:%02d.%06d UTC' % (
      v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)


def decimal_text(value):
  """Decimal -> fixed-point text (never 1E+10), exact."""
  return format(value, 'f')


# Column names BigQuery refuses, from
# https://cloud.google.com/bigquery/docs/schemas#column_names (case ignored).
RESERVED_PREFIXES = ('_table_', '_file_', '_partition', '_row_timestamp',
                     '__root__', '_colidentifier', '_change_sequence_number',
                     '_change_type', '_change_timestamp')
MAX_NAME_LENGTH = 300


def column_name_problem(name):
  """Why BigQuery refuses ``name`` as a column name, or None."""
  if not name:
    return 'an empty name is not a BigQuery column name'
  if len(name) > MAX_NAME_LENGTH:
    return 'a column name has at most %d characters; this has %d' % (
        MAX_NAME_LENGTH, len(name))
  if name.lower().startswith(RESERVED_PREFIXES):
    return ('%r starts with a prefix BigQuery reserves (%s)' % (
        name, ', '.join(p.upper() for p in RESERVED_PREFIXES)))
  return None


def field_from_bigquery(spec, path=''):
  """One field of a BigQuery JSON schema -> Field; ValueError naming it."""
  from transforms import json_rows
  if not isinstance(spec, dict) or not isinstance(spec.get('name'), str):
    raise ValueError('%s: a field needs a "name"' % (path or 'schema'))
  name = spec['name']
  where = '%s.%s' % (path, name) if path else name
  problem = column_name_problem(name)
  if problem:
    raise ValueError('%s: %s' % (where or repr(name), problem))
  kind = str(spec.get('type', '')).upper()
  kind = json_rows.ALIASES.get(kind, kind)
  if kind not in json_rows.TYPES:
    raise ValueError('%s: unknown type %r' % (where, spec.get('type')))
  mode = str(spec.get('mode') or 'NULLABLE').upper()
  if mode not in MODES:
    raise ValueError('%s: unknown mode %r' % (where, spec.get('mode')))
  children = spec.get('fields') or []
  if kind == 'RECORD' and not children:
    raise ValueError('%s: a RECORD needs "fields"' % where)
  return Field(name, kind, mode, spec.get('description') or '',
               tuple(field_from_bigquery(f, where) for f in children))


def table_from_bigquery_schema(fields, name, message_id_column=True):
  """A BigQuery JSON schema (the list `bq show --schema` prints, or
  {"fields": [...]}) -> TableSchema, keyed by message_id when asked."""
  if isinstance(fields, dict):
    fields = fields.get('fields')
  if not isinstance(fields, list) or not fields:
    raise ValueError('a BigQuery schema is a non-empty JSON list of fields')
  parsed = tuple(field_from_bigquery(f) for f in fields)
  names = [f.name for f in parsed]
  if len(set(n.lower() for n in names)) != len(names):
    raise ValueError('field names repeat (BigQuery ignores case)')
  key = ()
  if message_id_column:
    if 'message_id' in names:
      raise ValueError('the schema has a message_id field; the pipeline adds '
                       'its own (or pass --nomessage_id_column)')
    parsed += (Field('message_id', 'STRING', 'NULLABLE',
                     'Pub/Sub message id, or file:PATH:LINE for replays.'),)
    key = ('message_id',)
  return TableSchema(name=name, fields=parsed, primary_key=key)


@dataclasses.dataclass(frozen=True)
class TableSchema:
  """A table's columns plus, for local DuckDB tables, the key that makes
  redelivered rows a no-op."""
  name: str
  fields: Tuple[Field, ...]
  primary_key: Tuple[str, ...] = ()
  description: Optional[str] = None

  @property
  def column_names(self):
    return [f.name for f in self.fields]

  def bigquery_schema(self):
    """The schema dict WriteToBigQuery takes."""
    return {'fields': [f.bigquery() for f in self.fields]}

  def duckdb_ddl(self, table=None):
    columns = [
        '"%s" %s%s' % (
            f.name, f.duckdb_type(), ' NOT NULL' if f.mode == 'REQUIRED' else '')
        for f in self.fields
    ]
    if self.primary_key:
      columns.append(
          'PRIMARY KEY (%s)' % ', '.join('"%s"' % k for k in self.primary_key))
    return 'CREATE TABLE IF NOT EXISTS "%s" (%s)' % (
        table or self.name, ', '.join(columns))

  def arrow_schema(self):
    import pyarrow as pa
    return pa.schema([
        pa.field(f.name, f.arrow_type(), nullable=f.mode != 'REQUIRED')
        for f in self.fields
    ])

  def to_bigquery_json(self, row, load_file=False):
    return {f.name: f.to_bigquery_json(row.get(f.name), load_file)
            for f in self.fields}

  def to_arrow_row(self, row):
    return {f.name: f.to_arrow_value(row.get(f.name)) for f in self.fields}

  def to_arrow_table(self, rows, constants=None):
    """Row dicts -> an Arrow table of this schema, built column by column
    (a list per column: ~3x cheaper than a dict per row). ``constants``
    ({column: value}) fills a column with one value for every row."""
    import pyarrow as pa
    constants = constants or {}
    columns = []
    for f in self.fields:
      if f.name in constants:
        values = [constants[f.name]] * len(rows)
      else:
        try:  # every row has the column (the common case): ~30% faster
          values = list(map(operator.itemgetter(f.name), rows))
        except KeyError:
          values = [row.get(f.name) for row in rows]
      if f.needs_arrow_conversion:  # else Arrow takes the values as they are
        values = [f.to_arrow_value(v) for v in values]
      columns.append(pa.array(values, type=f.arrow_type()))
    return pa.Table.from_arrays(columns, schema=self.arrow_schema())


WORD_COUNTS = TableSchema(
    name='word_counts',
    fields=(
        Field('word', 'STRING', 'REQUIRED'),
        Field('count', 'INTEGER', 'REQUIRED'),
    ),
    description='Word counts from the wordcount pipeline.')


SIGNINS = TableSchema(
    name='signins',
    fields=(
        Field('userid', 'STRING', 'REQUIRED', 'Who signed in.'),
        Field('date', 'TIMESTAMP', 'REQUIRED', 'When, normalised to UTC.'),
        Field('message_id', 'STRING', 'NULLABLE',
              'Pub/Sub message id, or file:PATH:LINE for file replays.'),
        Field('publish_time', 'TIMESTAMP', 'NULLABLE',
              'When Pub/Sub received the message; null for file replays.'),
        Field('ingested_at', 'TIMESTAMP', 'NULLABLE',
              'When the sink wrote the row.'),
    ),
    primary_key=('message_id',),
    description='One row per valid sign-in message.')

SIGNIN_ERRORS = TableSchema(
    name='signin_errors',
    # The fields of the error table of Google's Pub/Sub-to-BigQuery template,
    # plus our message_id and a stable reason code.
    fields=(
        Field('timestamp', 'TIMESTAMP', 'REQUIRED', 'When the message failed.'),
        Field('payloadString', 'STRING', 'NULLABLE',
              'The payload as text (undecodable bytes replaced); a prefix '
              'for too_large.'),
        Field('payloadBytes', 'BYTES', 'NULLABLE',
              'The raw payload; a prefix for too_large.'),
        Field('attributes', 'RECORD', 'REPEATED', 'Pub/Sub attributes.',
              fields=(Field('key', 'STRING'), Field('value', 'STRING'))),
        Field('errorMessage', 'STRING', 'NULLABLE', 'What was wrong.'),
        Field('stacktrace', 'STRING', 'NULLABLE',
              'Traceback, for unexpected errors only.'),
        Field('message_id', 'STRING', 'NULLABLE', 'As in signins.'),
        Field('reason', 'STRING', 'REQUIRED', 'Stable reason code.'),
        Field('redriven_at', 'TIMESTAMP', 'NULLABLE',
              'When `main.py redrive` made it a row; null while it is not.'),
    ),
    primary_key=('message_id',),
    description='Dead letters: every sign-in message that is not a row.')

SIGNIN_COUNTS = TableSchema(
    name='signin_counts',
    fields=(
        Field('window_start', 'TIMESTAMP', 'REQUIRED'),
        Field('window_end', 'TIMESTAMP', 'REQUIRED'),
        Field('userid', 'STRING', 'REQUIRED'),
        Field('signins', 'INTEGER', 'REQUIRED',
              'Sign-ins of this user in this event-time window so far '
              '(panes accumulate: the latest pane is the total).'),
        Field('pane_timing', 'STRING', 'NULLABLE',
              'EARLY, ON_TIME or LATE: which firing of the window this is.'),
        Field('pane_index', 'INTEGER', 'NULLABLE',
              'Firing number of the window, from 0.'),
    ),
    primary_key=('window_start', 'userid'),
    description='Sign-ins per user per event-time window.')


def error_records(name):
  """The dead-letter table of a schema-driven pipeline: the sign-in one's
  fields plus the path of the offending field (``items[2].price``)."""
  return dataclasses.replace(
      SIGNIN_ERRORS, name=name, fields=SIGNIN_ERRORS.fields + (
          Field('field', 'STRING', 'NULLABLE',
                'The offending field, e.g. items[2].price.'),),
      description='Dead letters: every message that is not a row.')

