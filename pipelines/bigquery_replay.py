"""Replays into BigQuery that are exact by message id: a file replay writes
its rows and dead letters to staging tables, then one MERGE per table
inserts each message id the table does not hold yet, once, and the staging
tables are dropped. BigQuery's streaming de-duplication is best effort and
load jobs append, so this is what makes a replay add nothing twice there,
as the message-id key does in DuckDB: neither a second replay of the same
files, nor a message the replay itself holds twice (an archive file
present twice after a crash, a message twice in one compacted file).

Of the copies of one message id in staging, the MERGE keeps the one whose
whole row, as JSON (``TO_JSON_STRING``), sorts first: the same copy
whatever order they were staged in (copies of one message differ at most
in when they were written, e.g. ``ingested_at``). Rows without a message
id are all kept, as before (nothing says they are copies).

Staging tables are ``<table>_replay_<8 hex>``, made here before the run
with an expiration (``STAGING_LIFETIME``) and labels naming the process
that owns them. A replay killed before its merge (kill -9) leaves its
staging tables: BigQuery drops them when they expire, and the next replay
into the same table drops them at its start when their owner is a process
of this machine that is gone, or when they are older than
``STAGING_LIFETIME`` (made before expirations were set). A leftover owned
by a live process, or by another machine, younger than that may be a
replay running now: it is left alone. Nothing reads staging tables but
their merge: the exact counts view and every count read the final tables.

Cost: each replay loads its rows once into staging and runs one MERGE per
table, which reads the staging table and the target's ``message_id``
column (with only an INSERT clause BigQuery bills the bytes the statement
reads, not the target's size); the de-duplication sorts the staged copies
of each id, which costs slot time, not bytes.
"""

import datetime
import hashlib
import logging
import os
import re
import socket
import uuid

from pipelines import emulator_clients
from pipelines.errors import PipelineFailed
from storage import table_specs

_LOG = logging.getLogger(__name__)
STAGED_ROLES = ('rows', 'dead_letters')
STAGING_INFIX = '_replay_'
# Longer than any replay is expected to run; a replay whose staging table
# expired before its merge fails in one line at the merge (nothing merged)
# rather than merging what a recreated table holds.
STAGING_LIFETIME = datetime.timedelta(days=1)
OWNER_LABEL, PID_LABEL, RUN_LABEL = (
    'beam_replay_owner', 'beam_replay_pid', 'beam_replay_run')
_MADE = {}  # staging spec -> the run label stage() gave it (this process)

# The MERGE (https://cloud.google.com/bigquery/docs/reference/standard-sql/
# dml-syntax#merge_statement): its source may be a subquery, and with only a
# WHEN NOT MATCHED ... INSERT clause it inserts every source row that matches
# no target row, so copies of one id in the source would all be inserted:
# the source keeps one row per message_id (ROW_NUMBER() OVER (PARTITION BY
# ...), https://cloud.google.com/bigquery/docs/reference/standard-sql/
# numbering_functions#row_number), filtered in an outer WHERE (BigQuery's
# QUALIFY would need a WHERE, GROUP BY or HAVING beside it). bqemulator
# (DuckDB) runs the same statement; it needs the explicit column list.
MERGE_SQL = (
    'MERGE `{target}` T USING ('
    'SELECT * FROM (SELECT _replay_staged.*, ROW_NUMBER() OVER ('
    'PARTITION BY message_id ORDER BY TO_JSON_STRING(_replay_staged)) '
    'AS _replay_copy FROM `{staging}` AS _replay_staged) '
    'WHERE _replay_copy = 1 OR message_id IS NULL) S '
    'ON T.message_id = S.message_id '
    'WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({values})')


def merge_sql(target, staging, names):
  """The MERGE of ``staging`` into ``target`` (dotted names) over columns
  ``names``: each message id not in the target inserted once."""
  return MERGE_SQL.format(
      target=target, staging=staging,
      columns=', '.join('`%s`' % n for n in names),
      values=', '.join('S.`%s`' % n for n in names))


def _owner():
  """This machine, boot and PID namespace, hashed: where a label's PID means
  this process table's PID."""
  parts = [socket.gethostname()]
  try:
    with open('/proc/sys/kernel/random/boot_id') as f:
      parts.append(f.read().strip())
    parts.append(os.readlink('/proc/self/ns/pid'))
  except OSError:
    pass
  return hashlib.sha1('|'.join(parts).encode('utf-8')).hexdigest()[:16]


def _running(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (OSError, ValueError):  # not ours to signal: alive
    return True
  return True


def _client(spec):
  return emulator_clients.bigquery_client(table_specs.parse_table_spec(spec)[0])


def leftover_reason(table, now=None):
  """Why a staging ``table`` (google-cloud-bigquery Table) is a leftover
  to drop, or None when it may belong to a replay running now."""
  now = now or datetime.datetime.now(datetime.timezone.utc)
  labels = table.labels or {}
  if labels.get(RUN_LABEL) != table.table_id[-8:]:
    return None  # not a staging table a replay made (a user's own table)
  if labels.get(OWNER_LABEL) == _owner():
    try:
      pid = int(labels.get(PID_LABEL, ''))
    except ValueError:
      pid = None
    if pid is not None and not _running(pid):
      return 'its replay (process %d on this machine) is gone' % pid
  if table.created is not None and now - table.created > STAGING_LIFETIME:
    return 'made %s ago' % str(now - table.created).split('.')[0]
  return None


def drop_leftovers(client, final):
  """Drops the staging tables earlier replays into ``final`` left (a kill
  before their merge) that no running replay can own; returns their names."""
  project, dataset, table = table_specs.parse_table_spec(final, client.project)
  name = re.compile(re.escape(table + STAGING_INFIX) + '[0-9a-f]{8}$')
  dropped = []
  try:
    found = [t.table_id for t in client.list_tables('%s.%s' % (
        project, dataset)) if name.match(t.table_id)]
    for table_id in found:
      leftover = client.get_table('%s.%s.%s' % (project, dataset, table_id))
      why = leftover_reason(leftover)
      if why:
        client.delete_table(leftover, not_found_ok=True)
        _LOG.info('dropped the staging table %s.%s an earlier replay left '
                  '(%s)', dataset, table_id, why)
        dropped.append(table_id)
  except Exception as e:  # pylint: disable=broad-except
    _LOG.warning('could not look for staging tables earlier replays into %s '
                 'left: %s', final, str(e).splitlines()[0] if str(e) else e)
  return dropped


def stage(destinations):
  """The replay's destinations with rows and dead letters pointed at staging
  tables, made now (with an expiration and their owner's labels) after the
  leftovers of earlier replays are dropped; and [(final spec, staging spec,
  TableSchema)] to merge. Tables without a message_id column, and counts
  (the exact view reads the rows), are written as they are."""
  from pipelines import bigquery_tables
  run = uuid.uuid4().hex[:8]
  staged, specs, made = [], {}, []
  for d in destinations:
    if d.table.role in STAGED_ROLES and 'message_id' in d.schema.column_names:
      specs[d.table.role] = d.spec + STAGING_INFIX + run
      staged.append((d, d.spec + STAGING_INFIX + run))
  if not staged:
    return destinations, []
  client = _client(staged[0][0].spec)
  labels = {OWNER_LABEL: _owner(), PID_LABEL: str(os.getpid()), RUN_LABEL: run}
  try:
    for d, staging in staged:
      drop_leftovers(client, d.spec)
      table = bigquery_tables.new_table(
          table_specs.dotted(staging, client.project), d)
      table.expires = datetime.datetime.now(
          datetime.timezone.utc) + STAGING_LIFETIME
      table.labels = dict(labels)
      table.description = (
          'Staging of a replay into %s (process %d on %s); dropped after its '
          'merge, or when it expires.' % (d.spec, os.getpid(),
                                          socket.gethostname()))
      client.create_table(table)
      made.append((d.spec, staging, d.schema))
      _MADE[staging] = run
  except Exception as e:  # pylint: disable=broad-except
    drop(client.project, made)
    raise PipelineFailed('cannot make the replay\'s staging table %s: %s' % (
        staging, str(e).splitlines()[0] if str(e) else type(e).__name__))
  return destinations.replaced(specs), made


def _check_still_ours(client, staging, source):
  """A staging table stage() made must still be the one it made: one that
  expired (or was dropped) during the replay and was made again by a later
  write holds only part of the replay."""
  run = _MADE.get(staging)
  if run is None:
    return
  from google.api_core import exceptions
  try:
    labels = client.get_table(source).labels or {}
  except exceptions.NotFound:
    labels = {}
  if labels.get(RUN_LABEL) != run:
    raise PipelineFailed(
        'the staging table %s is gone or was made again during the replay '
        '(it expires %s after it was made): nothing merged; replay again'
        % (staging, STAGING_LIFETIME))


def merge(project, staged):
  """Each staging table into its final table (each new message id once),
  then drops it; returns [(final spec, rows added)]."""
  from google.api_core import exceptions
  client = emulator_clients.bigquery_client(project)
  added = []
  for final, staging, schema in staged:
    target = table_specs.dotted(final, client.project)
    source = table_specs.dotted(staging, client.project)
    _check_still_ours(client, staging, source)
    sql = merge_sql(target, source, [f.name for f in schema.fields])
    try:
      job = client.query(sql)
      job.result()
    except exceptions.NotFound as e:  # stage() made it: it vanished since
      raise PipelineFailed(
          'the staging table %s vanished before its merge (it expires %s '
          'after it was made): nothing of it merged; replay again: %s' % (
              staging, STAGING_LIFETIME, str(e).splitlines()[0]))
    except exceptions.GoogleAPICallError as e:
      text = ' '.join(str(e).split('\n\n')[0].split())
      hint = ''
      if os.environ.get('BIGQUERY_EMULATOR_HOST') and (
          'does not have a column' in text):
        hint = ('; the BigQuery emulator keeps a column added to an existing '
                'table as metadata only: replay into a new table')
      raise PipelineFailed('the merge into %s failed, nothing of this replay '
                           'merged: %s%s' % (final, text[:300], hint))
    added.append((final, job.num_dml_affected_rows or 0))
  return added


def drop(project, staged):
  """Drops the staging tables (after a merge, or after a failed replay)."""
  client = emulator_clients.bigquery_client(project)
  for _, staging, _ in staged:
    _MADE.pop(staging, None)
    try:
      client.delete_table(table_specs.dotted(staging, client.project),
                          not_found_ok=True)
    except Exception as e:  # pylint: disable=broad-except
      _LOG.warning('could not drop the staging table %s: %s', staging, e)
