"""Table specs, parsed and checked in one place: a BigQuery table
(``PROJECT:DATASET.TABLE``, ``PROJECT.DATASET.TABLE`` or ``DATASET.TABLE``)
or a local DuckDB file (``*.duckdb``, or any path)."""

import os
import re

_BIGQUERY_SPEC = re.compile(
    r'^(?:[a-z][a-z0-9.:-]*[a-z0-9][:.])?[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$')
LOCAL_SUFFIXES = ('.duckdb', '.db')
# What a Flex Template parameter naming a BigQuery table must look like.
BIGQUERY_SPEC_REGEX = r'^([^:]+:)?[^.]+\.[^.]+$'
_DUCKDB_MAGIC = b'DUCK'  # bytes 8-12 of every DuckDB database file


def is_local_warehouse(spec: str) -> bool:
  """True for a DuckDB file path, False for a BigQuery table spec."""
  return spec.endswith(LOCAL_SUFFIXES) or os.sep in spec


def check_table_spec(spec: str, flag: str) -> str:
  """Raises ValueError naming ``flag`` unless spec is a BigQuery table or a
  DuckDB file."""
  if is_local_warehouse(spec) or _BIGQUERY_SPEC.match(spec):
    return spec
  raise ValueError(
      '%s: %r is neither a BigQuery table (PROJECT:DATASET.TABLE) nor a '
      'local DuckDB file (*.duckdb)' % (flag, spec))


def parse_table_spec(spec: str, default_project: str = None):
  """'P:D.T', 'P.D.T' or 'D.T' -> (project, dataset, table)."""
  if ':' in spec:
    project, rest = spec.split(':', 1)
    dataset, table = rest.split('.', 1)
  else:
    parts = spec.split('.')
    if len(parts) == 3:
      project, dataset, table = parts
    else:
      project, (dataset, table) = default_project, parts
  return project, dataset, table


def dotted(spec: str, default_project: str = None) -> str:
  """A spec as BigQuery SQL names tables: ``project.dataset.table``."""
  return '.'.join(parse_table_spec(spec, default_project))


def duckdb_file_problem(path: str):
  """Why ``path`` cannot be a DuckDB warehouse this run can write, or None.
  Reads at most the file's first 12 bytes: a file that is not DuckDB's is
  never opened by DuckDB (which could write to it)."""
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.exists(path):
    if not os.access(folder, os.W_OK):
      return 'cannot create it: the folder %r is not writable' % folder
    return None
  if not os.path.isfile(path):
    return 'it is not a regular file'
  try:
    with open(path, 'rb') as f:
      head = f.read(12)
  except OSError as e:
    return 'cannot read it: %s' % (e.strerror or e)
  if len(head) < 12 or head[8:12] != _DUCKDB_MAGIC:
    return 'it exists and is not a DuckDB database file (left untouched)'
  if not os.access(path, os.W_OK):
    return 'it is not writable%s' % (
        ' (read-only file system)' if not os.access(folder, os.W_OK) else '')
  return None
