"""Sinks chosen by where the output goes: a BigQuery table spec goes to
``WriteToBigQuery``; a local file goes to DuckDB, with the same schema.

Both return the rows the warehouse refused, as ``(row, error message)`` pairs,
so a pipeline can turn them into dead letters instead of losing them.
"""

import datetime
import logging
import os
import re
import threading

import apache_beam as beam

from transforms import outages
from transforms.duckdb_files import DuckDBFiles
from transforms.duckdb_files import HOLD_SECONDS

_LOG = logging.getLogger(__name__)

_BIGQUERY_SPEC = re.compile(
    r'^(?:[a-z][a-z0-9.:-]*[a-z0-9][:.])?[A-Za-z0-9_]+\.[A-Za-z0-9_$-]+$')
LOCAL_SUFFIXES = ('.duckdb', '.db')

BIGQUERY_METHODS = ('default', 'streaming_inserts', 'storage_write_api',
                    'file_loads')


def is_local_warehouse(spec):
  """True for a DuckDB file path, False for a BigQuery table spec."""
  return spec.endswith(LOCAL_SUFFIXES) or os.sep in spec


def check_table_spec(spec, flag):
  """Raises ValueError naming ``flag`` unless spec is a BigQuery table or a DuckDB file."""
  if is_local_warehouse(spec) or _BIGQUERY_SPEC.match(spec):
    return spec
  raise ValueError(
      '%s: %r is neither a BigQuery table (PROJECT:DATASET.TABLE) nor a '
      'local DuckDB file (*.duckdb)' % (flag, spec))


_DUCKDB_MAGIC = b'DUCK'  # bytes 8-12 of every DuckDB database file


def duckdb_file_problem(path):
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


def prepare_duckdb_table(path, schema, table=None, truncate=False):
  """Creates the table if needed (and empties it for truncate), before a run."""
  with DuckDBFiles.use(path, hold_seconds=0) as con:
    con.execute(schema.duckdb_ddl(table))
    if truncate:
      con.execute('DELETE FROM "%s"' % (table or schema.name))


class _InsertIntoDuckDB(beam.DoFn):
  """Buffers rows per bundle and inserts them with one Arrow bulk insert.

  Rows whose key is already stored are skipped (redelivery is a no-op). A
  batch that fails is retried row by row; rows still refused go to the
  ``rejected`` output with the error.
  """
  REJECTED = 'rejected'
  MAX_BUFFER = 20000

  def __init__(self, path, schema, table, hold_connection, replace,
               on_commit=None, write_time_column=None, with_inserted=None,
               update_only=None, insert_constants=None):
    self._write_time_column = write_time_column
    self._path = path
    self._schema = schema
    self._table = table or schema.name
    self._hold = hold_connection
    self._replace = replace
    self._on_commit = on_commit
    self._with_inserted = with_inserted
    self._update_only = tuple(update_only or ())
    self._constants = dict(insert_constants or {})

  def start_bundle(self):
    self._buffer = []

  def process(self, row, element=beam.DoFn.WindowedValueParam):
    # The whole windowed value, so that a refused row leaves in its own
    # window and timestamp (one parameter: Beam's per-element cost of
    # several is ~5% of a live stream).
    self._buffer.append(element)
    if len(self._buffer) >= self.MAX_BUFFER:
      yield from self._flush()

  def finish_bundle(self):
    yield from self._flush()

  def _flush(self):
    buffered, self._buffer = self._buffer, []
    if not buffered:
      return
    # An outage (disk full, lock, I/O) is waited out here, holding the batch:
    # its messages stay unacknowledged, nothing becomes a dead letter.
    refused = outages.wait_out(
        'warehouse %s' % self._path, lambda: self._store(buffered),
        on_retry=self._after_outage)
    for wv, error in refused:
      yield beam.pvalue.TaggedOutput(self.REJECTED, wv.with_value((
          wv.value, '%s: %s' % (type(error).__name__, error))))

  def _after_outage(self, error):
    if outages.needs_reconnect(error):
      DuckDBFiles.close(self._path)

  def _store(self, buffered):
    """Stores the batch; returns [(windowed row, error)] for rows the
    warehouse refuses. Raises what is an outage, not a row's fault."""
    with DuckDBFiles.use(
        self._path, hold_seconds=HOLD_SECONDS if self._hold else 0) as con:
      DuckDBFiles.ensure_table(
          self._path, con, self._schema.duckdb_ddl(self._table))
      rows = [wv.value for wv in buffered]
      try:
        self._insert(con, rows)
        self._committed(rows)
        return []
      except Exception as e:  # pylint: disable=broad-except
        if outages.is_outage(e):
          raise
        _LOG.warning('DuckDB batch insert failed (%s); retrying row by row', e)
      refused = []
      for wv in buffered:
        try:
          self._insert(con, [wv.value])
          self._committed([wv.value])
        except Exception as row_error:  # pylint: disable=broad-except
          if outages.is_outage(row_error):
            raise
          refused.append((wv, row_error))
      return refused

  def _committed(self, rows):
    if self._on_commit is not None:
      self._on_commit(rows)

  def _insert(self, con, rows):
    key = self._schema.primary_key
    if key:  # one row per key: the first (keep) or the last (replace)
      unique = {}
      for row in rows:
        k = tuple(row.get(k) for k in key)
        if self._replace or self._update_only or k not in unique:
          unique[k] = row
      rows = list(unique.values())
    names = self._schema.column_names
    constants = dict(self._constants)
    if self._write_time_column:
      constants[self._write_time_column] = datetime.datetime.now(
          datetime.timezone.utc)
    data = self._schema.to_arrow_table(rows, constants=constants or None)
    columns = ', '.join('"%s"' % n for n in names)
    if self._update_only:
      verb, tail = 'INSERT', ' ON CONFLICT (%s) DO UPDATE SET %s' % (
          ', '.join('"%s"' % k for k in key), ', '.join(
              '"%s" = excluded."%s"' % (c, c) for c in self._update_only))
    elif key and self._replace:
      verb, tail = 'INSERT OR REPLACE', ''
    elif key:
      verb, tail = 'INSERT', ' ON CONFLICT DO NOTHING'
    else:
      verb, tail = 'INSERT', ''
    returning = self._with_inserted is not None and key and not (
        self._replace or self._update_only)
    if returning:
      tail += ' RETURNING %s' % ', '.join('"%s"' % k for k in key)
    con.register('_incoming_rows', data)
    try:
      if returning:  # the rows and what is derived from them, atomically
        con.execute('BEGIN TRANSACTION')
        try:
          new = {tuple(r) for r in con.execute(
              '%s INTO "%s" (%s) SELECT %s FROM _incoming_rows%s' % (
                  verb, self._table, columns, columns, tail)).fetchall()}
          self._with_inserted(con, [
              r for r in rows if tuple(r.get(k) for k in key) in new])
          con.execute('COMMIT')
        except BaseException:
          _rollback(con)
          raise
      else:
        con.execute('%s INTO "%s" (%s) SELECT %s FROM _incoming_rows%s' % (
            verb, self._table, columns, columns, tail))
    finally:
      con.unregister('_incoming_rows')


def _rollback(con):
  """Ends a failed transaction; what failed is raised by the caller."""
  try:
    con.execute('ROLLBACK')
  except Exception as e:  # pylint: disable=broad-except
    _LOG.debug('ROLLBACK after a failed insert: %s', e)


class WriteToDuckDB(beam.PTransform):
  """Rows (dicts) -> a table in a local DuckDB file. Returns refused rows.

  ``hold_connection`` keeps the file open for the life of the process (the
  single-process streaming runner); batch runs with several worker processes
  open it per bundle so that the workers take turns with its write lock.
  With a primary key, a row whose key is stored already is skipped, or with
  ``replace`` replaces the stored one, or with ``update_only`` (columns)
  updates just those columns of it (a new row takes ``insert_constants``
  for the columns it names).
  ``with_inserted(cursor, rows)`` is called with the rows that were new, in
  the transaction that stored them (data derived from stored rows).
  ``on_commit(rows)``, if given, is called once rows are durably stored
  (e.g. to acknowledge their Pub/Sub messages only then).
  ``write_time_column`` is set to the time of the insert.
  """
  def __init__(self, path, schema, table=None, hold_connection=False,
               replace=False, on_commit=None, write_time_column=None,
               with_inserted=None, update_only=None, insert_constants=None):
    super().__init__()
    self._args = (path, schema, table, hold_connection, replace, on_commit,
                  write_time_column, with_inserted, update_only,
                  insert_constants)

  def expand(self, rows):
    results = rows | 'InsertIntoDuckDB' >> beam.ParDo(
        _InsertIntoDuckDB(*self._args)).with_outputs(
            _InsertIntoDuckDB.REJECTED, main='inserted')
    return results[_InsertIntoDuckDB.REJECTED]


class WriteRowsToBigQuery(beam.PTransform):
  """Rows (dicts with datetimes and bytes) -> a BigQuery table, schema from code.

  Returns the rows BigQuery refused as ``(row, error message)`` pairs where
  the method reports them (streaming inserts and the Storage Write API);
  transient errors are retried, a refused row is not. ``on_commit(rows)``
  (local runs, streaming inserts) hears of the rows BigQuery accepted, in
  the process that inserted them.
  """
  def __init__(self, table, schema, method='default', truncate=False,
               write_time_column=None, on_commit=None):
    super().__init__()
    self._table = table
    self._schema = schema
    self._method = method
    self._truncate = truncate
    self._write_time_column = write_time_column
    self._on_commit = on_commit

  def expand(self, rows):
    # Imported here: BigQuery's client libraries cost memory and start-up
    # time that runs writing only text or DuckDB need not pay.
    from apache_beam.io.gcp.bigquery import BigQueryDisposition
    from apache_beam.io.gcp.bigquery import WriteToBigQuery
    from apache_beam.io.gcp.bigquery_tools import RetryStrategy
    schema = self._schema
    result = (
        rows
        | 'ToBigQueryJson' >> beam.ParDo(_ToBigQueryJsonFn(
            schema, self._write_time_column, self._table, self._on_commit))
        | 'WriteToBigQuery' >> WriteToBigQuery(
            table=self._table,
            schema=schema.bigquery_schema(),
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=(
                BigQueryDisposition.WRITE_TRUNCATE if self._truncate else
                BigQueryDisposition.WRITE_APPEND),
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
            method=self._method.upper()))
    if self._method == 'file_loads' or (
        self._method == 'default' and rows.is_bounded):
      # File loads report no per-row failures: a load job fails as a whole.
      return rows.pipeline | 'NoRefusedRows' >> beam.Create([])
    return (
        result.failed_rows_with_errors
        | 'RefusedRows' >> beam.Map(_refused_row))


class _ToBigQueryJsonFn(beam.DoFn):
  """Row -> BigQuery's JSON form; registers ``on_commit`` where rows are inserted."""
  def __init__(self, schema, write_time_column, table, on_commit):
    self._schema = schema
    self._write_time_column = write_time_column
    self._table = table
    self._on_commit = on_commit

  def setup(self):
    if self._on_commit is not None:
      BigQueryAccepted.listen(self._table, self._on_commit)

  def process(self, row):
    if self._write_time_column:
      row = dict(row, **{self._write_time_column: datetime.datetime.now(
          datetime.timezone.utc)})
    yield self._schema.to_bigquery_json(row)


class BigQueryAccepted(object):
  """Which rows BigQuery accepted, as Beam's streaming inserts learn it.

  Beam's WriteToBigQuery reports refused rows but not accepted ones. Here
  the one call through which its streaming inserts go
  (``BigQueryWrapper.insert_rows``) is wrapped, process-wide, so that the
  rows it sent without an error for them reach the table's listener. Used
  by the local ack-after-commit reader: a message is acknowledged only once
  BigQuery has its row or dead letter.
  """
  _lock = threading.Lock()
  _listeners = {}  # (dataset, table) -> on_commit

  @classmethod
  def listen(cls, table, on_commit):
    from apache_beam.io.gcp import bigquery_tools
    ref = bigquery_tools.parse_table_reference(table)
    with cls._lock:
      cls._listeners[(ref.datasetId, ref.tableId)] = on_commit
      wrapper = bigquery_tools.BigQueryWrapper
      if not getattr(wrapper.insert_rows, 'reports_accepted', False):
        wrapper.insert_rows = cls._reporting(wrapper.insert_rows)

  @classmethod
  def _reporting(cls, insert_rows):
    def reporting_insert_rows(self, project_id, dataset_id, table_id, rows,
                              *args, **kwargs):
      with outages.pending('BigQuery %s.%s' % (dataset_id, table_id)):
        passed, errors = insert_rows(
            self, project_id, dataset_id, table_id, rows, *args, **kwargs)
      listener = cls._listeners.get((dataset_id, table_id))
      if listener is not None:
        refused = {error['index'] for error in errors}
        listener([row for i, row in enumerate(rows) if i not in refused])
      return passed, errors
    reporting_insert_rows.reports_accepted = True
    return reporting_insert_rows


def _refused_row(failure):
  """BigQuery's (destination, row, errors) -> (row, error message)."""
  _, row, errors = failure
  return row, str(errors)
