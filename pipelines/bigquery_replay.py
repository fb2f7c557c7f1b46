"""Replays into BigQuery that add nothing twice: a file replay writes its
rows and dead letters to staging tables, then one MERGE per table inserts
only the messages the table does not hold yet (by ``message_id``), and the
staging tables are dropped. BigQuery's streaming de-duplication is best
effort and load jobs append, so this is what makes a second replay of the
same files a no-op there, as the message-id key does in DuckDB.

Cost: each replay loads its rows once into staging and runs one MERGE per
table, which scans the target table's ``message_id`` column.
"""

import logging
import uuid

from pipelines import emulator_clients
from storage import table_specs

_LOG = logging.getLogger(__name__)
STAGED_ROLES = ('rows', 'dead_letters')


def stage(destinations):
  """The replay's destinations with rows and dead letters pointed at staging
  tables; and [(final spec, staging spec, TableSchema)] to merge. Tables
  without a message_id column, and counts (the exact view reads the rows),
  are written as they are."""
  suffix = '_replay_%s' % uuid.uuid4().hex[:8]
  staged, specs = [], {}
  for d in destinations:
    if d.table.role in STAGED_ROLES and 'message_id' in d.schema.column_names:
      specs[d.table.role] = d.spec + suffix
      staged.append((d.spec, d.spec + suffix, d.schema))
  return destinations.replaced(specs), staged


def merge(project, staged):
  """Each staging table into its final table (new message ids only), then
  drops it; returns [(final spec, rows added)]."""
  from google.api_core import exceptions
  client = emulator_clients.bigquery_client(project)
  added = []
  for final, staging, schema in staged:
    target = table_specs.dotted(final, client.project)
    source = table_specs.dotted(staging, client.project)
    names = [f.name for f in schema.fields]
    sql = ('MERGE `{t}` T USING `{s}` S ON T.message_id = S.message_id '
           'WHEN NOT MATCHED THEN INSERT ({cols}) VALUES ({values})').format(
               t=target, s=source, cols=', '.join('`%s`' % n for n in names),
               values=', '.join('S.`%s`' % n for n in names))
    try:
      job = client.query(sql)
      job.result()
      added.append((final, job.num_dml_affected_rows or 0))
    except exceptions.NotFound:  # nothing was loaded into staging
      added.append((final, 0))
  return added


def drop(project, staged):
  """Drops the staging tables (after a merge, or after a failed replay)."""
  client = emulator_clients.bigquery_client(project)
  for _, staging, _ in staged:
    try:
      client.delete_table(table_specs.dotted(staging, client.project),
                          not_found_ok=True)
    except Exception as e:  # pylint: disable=broad-except
      _LOG.warning('could not drop the staging table %s: %s', staging, e)
