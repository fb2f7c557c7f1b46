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

from pipelines import cli

_LOG = logging.getLogger(__name__)
STAGED_FLAGS = ('--output_table', '--dead_letter_table')


def stage(opts, bigquery_tables):
  """Points the replay's rows and dead letters at staging tables (changes
  ``opts``); returns [(final spec, staging spec, TableSchema)] to merge.
  Tables without a message_id column are appended to, as before."""
  suffix = '_replay_%s' % uuid.uuid4().hex[:8]
  staged = []
  for flag, spec, schema in bigquery_tables:
    if flag == '--counts_table':
      opts.counts_table = spec  # derived: the exact view reads the rows
    if flag in STAGED_FLAGS and 'message_id' in schema.column_names:
      staging = spec + suffix
      staged.append((spec, staging, schema))
      setattr(opts, flag[2:], staging)
  return staged


def merge(project, staged):
  """Each staging table into its final table (new message ids only), then
  drops it; returns [(final spec, rows added)]."""
  from google.api_core import exceptions

  from transforms import emulators
  client = emulators.bigquery_client(project)
  added = []
  for final, staging, schema in staged:
    target = '.'.join(cli.parse_table_spec(final, client.project))
    source = '.'.join(cli.parse_table_spec(staging, client.project))
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
  from transforms import emulators
  client = emulators.bigquery_client(project)
  for _, staging, _ in staged:
    try:
      client.delete_table('.'.join(cli.parse_table_spec(staging, client.project)),
                          not_found_ok=True)
    except Exception as e:  # pylint: disable=broad-except
      _LOG.warning('could not drop the staging table %s: %s', staging, e)
