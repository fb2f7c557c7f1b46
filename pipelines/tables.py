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


@dataclasses.dataclass(frozen=True)
class Table:
  """One table of a pipeline."""
  role: str  # 'rows', 'dead_letters', 'counts'
  flag: str  # the flag naming it in BigQuery
  schema: TableSchema
  suffix: str = ''  # after --output_table when the flag is not given


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
