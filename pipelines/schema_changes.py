"""Schema evolution as BigQuery allows it, before a run's first write.

A table made by an earlier run (or an earlier version of this project) is
compared with the schema this run writes:

- a NULLABLE or REPEATED field the table lacks, at any depth of a RECORD,
  is added; a REQUIRED field of the table the schema has as NULLABLE is
  relaxed. In DuckDB with ``ALTER TABLE``, in BigQuery with a table patch
  (what ``ALLOW_FIELD_ADDITION`` and ``ALLOW_FIELD_RELAXATION`` allow);
  each change is logged once;
- what BigQuery cannot change in place is a one-line error naming the table
  and the field, before anything is pulled or acknowledged: a type change,
  a mode change other than a relaxation, a new REQUIRED field, or a field
  the table requires that the schema no longer has. A field the table has
  as NULLABLE and the schema no longer names is left as it is (NULL in new
  rows).

Field names match case-insensitively, as BigQuery's do.
"""

import dataclasses
import logging
from typing import List, Optional, Tuple

from pipelines.errors import UsageError
from transforms import json_rows

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Column:
  """A column of an existing table: a BigQuery type name (or, in DuckDB, a
  scalar type's DuckDB name, or RECORD), its mode (None where the store does
  not say: DuckDB's nested fields and key columns) and nested columns."""
  name: str
  type: str
  mode: Optional[str]
  fields: Tuple['Column', ...] = ()


@dataclasses.dataclass
class Changes:
  """What a table needs: fields to add ((parent path, Field)) and fields to
  relax (paths); nothing when the table already matches."""
  additions: List[tuple] = dataclasses.field(default_factory=list)
  relaxations: List[tuple] = dataclasses.field(default_factory=list)

  def __bool__(self):
    return bool(self.additions or self.relaxations)

  def describe(self):
    parts = ['added %s (%s %s)' % ('.'.join(p + (f.name,)), f.mode, f.type)
             for p, f in self.additions]
    parts += ['relaxed %s to NULLABLE' % '.'.join(p) for p in self.relaxations]
    return '; '.join(parts)


def _bigquery_type(name):
  return json_rows.ALIASES.get(name.upper(), name.upper())


def plan(table, existing, desired, scalar_type=None):
  """The Changes that make ``existing`` ([Column]) hold rows of ``desired``
  (schemas.Field tuple); UsageError naming ``table`` and the field for a
  change BigQuery cannot make in place. ``scalar_type(field)`` gives a
  desired scalar field's type in the store's words (default: BigQuery's)."""
  changes = Changes()
  _plan(table, (), existing, desired, scalar_type or (
      lambda f: _bigquery_type(f.type)), changes)
  return changes


def _plan(table, parent, existing, desired, scalar_type, changes):
  have = {c.name.lower(): c for c in existing}
  wanted = {f.name.lower() for f in desired}
  for field in desired:
    path = parent + (field.name,)
    where = '%s: field %s' % (table, '.'.join(path))
    column = have.get(field.name.lower())
    if column is None:
      if field.mode == 'REQUIRED':
        raise UsageError('%s is new and REQUIRED: a table can only gain '
                         'NULLABLE or REPEATED fields' % where)
      changes.additions.append((parent, field))
      continue
    if (field.mode == 'REPEATED') != (column.mode == 'REPEATED') and (
        column.mode is not None or field.mode == 'REPEATED'):
      raise UsageError('%s is %s in the table and %s in the schema: a mode '
                       'cannot change that way' % (
                           where, column.mode or 'not REPEATED', field.mode))
    want = 'RECORD' if field.type in ('RECORD', 'STRUCT') else scalar_type(
        field)
    if want != column.type:
      raise UsageError('%s is %s in the table and %s in the schema: a type '
                       'cannot change in place' % (where, column.type, want))
    if column.mode == 'REQUIRED' and field.mode == 'NULLABLE':
      changes.relaxations.append(path)
    elif column.mode == 'NULLABLE' and field.mode == 'REQUIRED':
      raise UsageError('%s is NULLABLE in the table and REQUIRED in the '
                       'schema: a field cannot become REQUIRED' % where)
    if want == 'RECORD':
      _plan(table, path, column.fields, field.fields, scalar_type, changes)
  for column in existing:
    if column.name.lower() not in wanted and column.mode == 'REQUIRED':
      raise UsageError(
          '%s: field %s is REQUIRED in the table and not in the schema: every '
          'new row would be refused' % (table, '.'.join(parent + (column.name,))))


# -- DuckDB -------------------------------------------------------------------
def _duckdb_columns(types, nullable=None, key=()):
  """DuckDB's (name, DuckDBPyType) pairs -> [Column]; ``nullable`` {name:
  bool} for top-level columns (nested nullability is not kept by DuckDB)."""
  out = []
  for name, kind in types:
    mode = None
    if kind.id == 'list':
      kind, mode = kind.child, 'REPEATED'
    elif nullable is not None and name not in key:
      mode = 'NULLABLE' if nullable[name] else 'REQUIRED'
    if kind.id == 'struct':
      out.append(Column(name, 'RECORD', mode, tuple(_duckdb_columns(
          list(kind.children)))))
    else:
      out.append(Column(name, str(kind), mode))
  return out


def _duckdb_scalar(con):
  cache = {}

  def scalar_type(field):
    text = field.duckdb_type().rstrip('[]')
    if text not in cache:
      cache[text] = str(con.execute('SELECT NULL::%s' % text).description[0][1])
    return cache[text]
  return scalar_type


def evolve_duckdb_table(con, path, schema):
  """Brings the DuckDB table of ``schema`` in ``con`` (the file ``path``) up
  to it, if it exists; returns the Changes made."""
  name = schema.name
  found = con.execute(
      "SELECT column_name, is_nullable FROM information_schema.columns WHERE "
      "table_name = ? AND table_schema = 'main' ORDER BY ordinal_position",
      [name]).fetchall()
  if not found:
    return Changes()
  relation = con.table('"%s"' % name)
  existing = _duckdb_columns(
      list(zip(relation.columns, relation.types)),
      {n: nullable == 'YES' for n, nullable in found},
      key=schema.primary_key)
  changes = plan('%s table %s' % (path, name), existing, schema.fields,
                 _duckdb_scalar(con))
  for parent, field in changes.additions:
    steps = []
    for part, column in _walk(existing, parent):
      steps.append('"%s"' % part)
      if column.mode == 'REPEATED':
        steps.append('element')
    con.execute('ALTER TABLE "%s" ADD COLUMN %s %s' % (
        name, '.'.join(steps + ['"%s"' % field.name]), field.duckdb_type()))
  for path_ in changes.relaxations:
    if len(path_) == 1:  # DuckDB keeps NOT NULL for top-level columns only
      con.execute('ALTER TABLE "%s" ALTER COLUMN "%s" DROP NOT NULL' % (
          name, path_[0]))
  if changes:
    _LOG.warning('%s table %s: %s', path, name, changes.describe())
  return changes


def _walk(columns, parent):
  """(name, Column) for each step of ``parent`` (a path of field names)."""
  out = []
  for part in parent:
    column = next(c for c in columns if c.name.lower() == part.lower())
    out.append((column.name, column))
    columns = column.fields
  return out


# -- BigQuery -----------------------------------------------------------------
def _bigquery_columns(fields):
  return [Column(f.name, _bigquery_type(f.field_type), (f.mode or 'NULLABLE'),
                 tuple(_bigquery_columns(f.fields))) for f in fields]


def evolve_bigquery_table(client, table, schema):
  """Patches the BigQuery ``table`` (a google-cloud-bigquery Table, as it
  exists) to take rows of ``schema``; returns the Changes made."""
  changes = plan('table %s' % table.full_table_id, _bigquery_columns(
      table.schema), schema.fields)
  if not changes:
    return changes
  table.schema = _patched(list(table.schema), (), changes)
  client.update_table(table, ['schema'])
  _LOG.warning('table %s: %s', table.full_table_id, changes.describe())
  return changes


def _patched(fields, parent, changes):
  from google.cloud import bigquery
  out = []
  for f in fields:
    path = parent + (f.name,)
    api = f.to_api_repr()
    if tuple(p.lower() for p in path) in {
        tuple(p.lower() for p in r) for r in changes.relaxations}:
      api['mode'] = 'NULLABLE'
    if f.fields:
      api['fields'] = [g.to_api_repr() for g in _patched(
          list(f.fields), path, changes)]
    out.append(bigquery.SchemaField.from_api_repr(api))
  for where, field in changes.additions:
    if tuple(p.lower() for p in where) == tuple(p.lower() for p in parent):
      out.append(bigquery.SchemaField.from_api_repr(field.bigquery()))
  return out
