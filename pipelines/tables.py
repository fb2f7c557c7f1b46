"""Every table a pipeline writes, described once: its role, the flag that
names it in BigQuery, its schema and the suffix it takes after
``--output_table`` when its flag is not given. Everything else is derived
from that: where each table goes (a BigQuery spec or the local DuckDB
file), the flags checked, the tables made before a run (DuckDB DDL,
BigQuery schemas: ``schemas.TableSchema``), progress and the summary."""

import dataclasses
from typing import Dict, Optional, Tuple

from storage import table_specs
from transforms.schemas import TableSchema


GRANULARITIES = ('HOUR', 'DAY', 'MONTH', 'YEAR')
INGESTION_TIME = '_PARTITIONTIME'


@dataclasses.dataclass(frozen=True)
class Layout:
  """How BigQuery stores a table this project creates: time partitioning
  (by a TIMESTAMP, DATE or DATETIME field, or ``_PARTITIONTIME``: ingestion
  time) and clustering. ``explicit``: asked for by flags, so an existing
  table laid out otherwise is an error (a default is only a warning)."""
  partition_field: Optional[str] = None
  granularity: str = 'DAY'
  cluster_fields: Tuple[str, ...] = ()
  explicit: bool = False

  def bigquery_parameters(self) -> Dict:
    """The table's ``timePartitioning`` and ``clustering``, as BigQuery's API
    (and WriteToBigQuery's ``additional_bq_parameters``) take them."""
    out = {}
    if self.partition_field:
      out['timePartitioning'] = {'type': self.granularity}
      if self.partition_field != INGESTION_TIME:
        out['timePartitioning']['field'] = self.partition_field
    if self.cluster_fields:
      out['clustering'] = {'fields': list(self.cluster_fields)}
    return out

  def describe(self) -> str:
    parts = []
    if self.partition_field:
      parts.append('partitioned by %s (%s)' % (self.partition_field,
                                               self.granularity))
    if self.cluster_fields:
      parts.append('clustered by %s' % ', '.join(self.cluster_fields))
    return ' and '.join(parts) or 'neither partitioned nor clustered'


@dataclasses.dataclass(frozen=True)
class Table:
  """One table of a pipeline."""
  role: str  # 'rows', 'dead_letters', 'counts'
  flag: str  # the flag naming it in BigQuery
  schema: TableSchema
  suffix: str = ''  # after --output_table when the flag is not given
  layout: Layout = Layout()  # in BigQuery, unless the flags say otherwise


@dataclasses.dataclass(frozen=True)
class Destination:
  """Where one table goes in this run: ``spec`` is a BigQuery table or the
  local DuckDB file (the table in it is ``schema.name``)."""
  table: Table
  spec: str

  @property
  def schema(self) -> TableSchema:
    return self.table.schema

  @property
  def flag(self) -> str:
    return self.table.flag

  @property
  def is_local(self) -> bool:
    return table_specs.is_local_warehouse(self.spec)

  @property
  def layout(self) -> Layout:
    return self.table.layout


class Destinations(object):
  """A pipeline's tables for one run: all in BigQuery (``output_table``, or
  each table's own flag) or all in the DuckDB file ``warehouse``."""
  def __init__(self, tables: Tuple[Table, ...], destinations):
    self.tables = tuple(tables)
    self._by_role: Dict[str, Destination] = dict(destinations)

  @classmethod
  def of(cls, tables, opts, warehouse: Optional[str] = None):
    """From the flags: BigQuery when --output_table names a BigQuery table,
    else the DuckDB file ``warehouse`` (default: --warehouse)."""
    tables = tuple(_with_flag_layout(t, opts) for t in tables)
    output = getattr(opts, 'output_table', None)
    if output and not table_specs.is_local_warehouse(output):
      specs = {t.role: getattr(opts, t.flag[2:], None) or output + t.suffix
               for t in tables}
    else:
      local = warehouse or output or opts.warehouse
      specs = {t.role: local for t in tables}
    return cls(tables, [(t.role, Destination(t, specs[t.role]))
                        for t in tables])

  def __getitem__(self, role) -> Destination:
    return self._by_role[role]

  def __iter__(self):
    return iter(self._by_role.values())

  @property
  def is_local(self) -> bool:
    return all(d.is_local for d in self)

  @property
  def warehouse(self) -> Optional[str]:
    """The DuckDB file, when the tables are local."""
    return next(iter(self)).spec if self.is_local else None

  def local_names(self) -> Dict[str, str]:
    """{role: table name in the DuckDB file}."""
    return {d.table.role: d.schema.name for d in self}

  def replaced(self, specs: Dict[str, str]) -> 'Destinations':
    """The same tables, some going elsewhere ({role: spec}): a replay's
    staging tables."""
    return Destinations(self.tables, [
        (d.table.role, Destination(d.table, specs.get(d.table.role, d.spec)))
        for d in self])


def bigquery_flags(tables) -> Tuple[str, ...]:
  """The flags naming ``tables`` in BigQuery, --output_table first."""
  return tuple(t.flag for t in tables)


def flag_layout(opts, default=Layout()) -> Layout:
  """The rows table's layout from --partition_field, --partition_granularity
  and --cluster_fields, each defaulting to ``default``'s."""
  field = getattr(opts, 'partition_field', None)
  granularity = getattr(opts, 'partition_granularity', None)
  cluster = getattr(opts, 'cluster_fields', None)
  if field is None and granularity is None and cluster is None:
    return default
  return Layout(
      default.partition_field if field is None else (field or None),
      (granularity or default.granularity).upper(),
      default.cluster_fields if cluster is None else tuple(
          c.strip() for c in cluster.split(',') if c.strip()),
      explicit=True)


def _with_flag_layout(table, opts):
  if table.role != 'rows':
    return table
  return dataclasses.replace(table, layout=flag_layout(opts, table.layout))
