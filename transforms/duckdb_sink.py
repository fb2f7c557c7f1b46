"""Rows -> a table in a local DuckDB file, with the same schema BigQuery
gets: one Arrow bulk insert per bundle, redeliveries a no-op by the key, and
the rows DuckDB refuses returned as ``(row, error message)`` pairs so that a
pipeline turns them into dead letters instead of losing them. Outages (a
full disk, a lock, I/O) are waited out, holding the batch."""

import datetime
import logging
from typing import Any, Mapping

import apache_beam as beam

from storage import outages
from storage.duckdb_files import DuckDBFiles
from storage.duckdb_files import HOLD_SECONDS
from transforms.blocks import RowBlock

# How long a bounded replay holds its warehouse at a time (WriteToDuckDB).
BATCH_HOLD_SECONDS = 15.0

_LOG = logging.getLogger(__name__)
Row = Mapping[str, Any]


def prepare_duckdb_table(con, schema, table=None, truncate=False):
  """Creates the table if needed (and empties it for truncate), before a
  run, on the DuckDB connection ``con``."""
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
               write_time_column=None, with_inserted=None, update_only=None,
               insert_constants=None):
    self._write_time_column = write_time_column
    self._path = path
    self._schema = schema
    self._table = table or schema.name
    # Seconds the file is held at a time (0: released after each batch).
    self._hold_seconds = (hold_connection if type(hold_connection) in (
        int, float) else HOLD_SECONDS if hold_connection else 0)
    self._replace = replace
    self._with_inserted = with_inserted
    self._update_only = tuple(update_only or ())
    self._constants = dict(insert_constants or {})

  def start_bundle(self):
    self._rows, self._origins = [], []

  def process(self, row, element=beam.DoFn.WindowedValueParam):
    # The whole windowed value, so that a refused row leaves in its own
    # window and timestamp (one parameter: Beam's per-element cost of
    # several is ~5% of a live stream). A RowBlock's rows share its own.
    if type(row) is RowBlock:  # pylint: disable=unidiomatic-typecheck
      self._rows.extend(row)
      self._origins.extend([element] * len(row))
    else:
      self._rows.append(row)
      self._origins.append(element)
    if len(self._rows) >= self.MAX_BUFFER:
      yield from self._flush()

  def finish_bundle(self):
    yield from self._flush()

  def _flush(self):
    rows, origins = self._rows, self._origins
    self._rows, self._origins = [], []
    if not rows:
      return
    # An outage (disk full, lock, I/O) is waited out here, holding the batch:
    # its messages stay unacknowledged, nothing becomes a dead letter.
    refused = outages.wait_out(
        'warehouse %s' % self._path, lambda: self._store(rows),
        on_retry=self._after_outage)
    yield from self._refused(rows, origins, refused)

  def _refused(self, rows, origins, refused):
    for i, error in refused:
      yield beam.pvalue.TaggedOutput(self.REJECTED, origins[i].with_value((
          rows[i], '%s: %s' % (type(error).__name__, error))))

  def _after_outage(self, error):
    if outages.needs_reconnect(error):
      DuckDBFiles.close(self._path)

  def _store(self, rows):
    """Stores the batch; returns [(index in rows, error)] for rows the
    warehouse refuses. Raises what is an outage, not a row's fault."""
    with DuckDBFiles.use(
        self._path, hold_seconds=self._hold_seconds) as con:
      DuckDBFiles.ensure_table(
          self._path, con, self._schema.duckdb_ddl(self._table))
      try:
        self._insert(con, rows)
        return []
      except Exception as e:  # pylint: disable=broad-except
        if outages.is_outage(e):
          raise
        _LOG.warning('DuckDB batch insert failed (%s); retrying it in '
                     'halves down to the rows refused', e)
      refused = []
      mid = len(rows) // 2
      self._insert_halves(con, rows[:mid], 0, refused)
      self._insert_halves(con, rows[mid:], mid, refused)
      return refused

  def _insert_halves(self, con, rows, offset, refused):
    """Inserts ``rows`` (each insert all or nothing), halving what fails
    down to single rows: a batch of 20,000 with one refused row costs ~30
    inserts, not 20,000. Adds (index, error) to ``refused`` for each row
    refused alone."""
    if not rows:
      return
    try:
      self._insert(con, rows)
      return
    except Exception as e:  # pylint: disable=broad-except
      if outages.is_outage(e):
        raise
      if len(rows) == 1:
        refused.append((offset, e))
        return
    mid = len(rows) // 2
    self._insert_halves(con, rows[:mid], offset, refused)
    self._insert_halves(con, rows[mid:], offset + mid, refused)

  def _insert(self, con, rows):
    constants = dict(self._constants)
    if self._write_time_column:
      constants[self._write_time_column] = datetime.datetime.now(
          datetime.timezone.utc)
    insert_rows(con, self._table, self._schema, rows, replace=self._replace,
                update_only=self._update_only, constants=constants,
                with_inserted=self._with_inserted)


def insert_rows(con, table, schema, rows, replace=False, update_only=(),
                constants=None, with_inserted=None):
  """One bulk insert of ``rows`` into ``table`` (see WriteToDuckDB for
  ``replace``, ``update_only`` and ``with_inserted``; ``constants``
  {column: value} fill a column for every row)."""
  key = schema.primary_key
  if key:  # one row per key: the first (keep) or the last (replace)
    unique = {}
    last_wins = replace or update_only
    if len(key) == 1:
      name = key[0]
      for row in rows:
        k = row.get(name)
        if last_wins or k not in unique:
          unique[k] = row
    else:
      for row in rows:
        k = tuple(row.get(k) for k in key)
        if last_wins or k not in unique:
          unique[k] = row
    rows = list(unique.values())
  if key and not (replace or update_only):
    _insert_new(con, table, schema, rows, constants, with_inserted)
    return
  names = schema.column_names
  data = schema.to_arrow_table(rows, constants=constants or None)
  columns = ', '.join('"%s"' % n for n in names)
  if update_only:
    verb, tail = 'INSERT', ' ON CONFLICT (%s) DO UPDATE SET %s' % (
        ', '.join('"%s"' % k for k in key), ', '.join(
            '"%s" = excluded."%s"' % (c, c) for c in update_only))
  elif key and replace:
    verb, tail = 'INSERT OR REPLACE', ''
  else:
    verb, tail = 'INSERT', ''
  con.register('_incoming_rows', data)
  try:
    con.execute('%s INTO "%s" (%s) SELECT %s FROM _incoming_rows%s' % (
        verb, table, columns, columns, tail))
  finally:
    con.unregister('_incoming_rows')


def _insert_new(con, table, schema, rows, constants, with_inserted):
  """Inserts the rows whose key is not stored yet (their keys unique among
  themselves already), and gives them to ``with_inserted`` in the
  transaction that stores them.

  The stored keys are found first by a semi-join that hashes the batch's
  keys and scans the stored ones (~7 ms for 3 million), then the new rows
  go in with a plain INSERT, which the primary key still checks. Not ON
  CONFLICT DO NOTHING: DuckDB 2.0's conflict path turns -0.0 inside a
  RECORD or REPEATED value into 0.0 (found by the exact-values property
  test; OR REPLACE and DO UPDATE do it too: the counts tables, which use
  them, hold no floats). Not an INSERT ... WHERE NOT EXISTS: DuckDB hashes
  the stored side for it, so each batch cost more as the table grew (37 ms
  for 20,000 rows into 1 million, 89 ms into 3 million; this way ~18 and
  ~23). A writer that stored one of the keys between the two statements
  makes the INSERT fail: the caller then retries row by row, which finds it
  stored."""
  import pyarrow as pa
  key = schema.primary_key
  by_name = {f.name: f for f in schema.fields}
  keys = pa.table({k: pa.array([row.get(k) for row in rows],
                               type=by_name[k].arrow_type()) for k in key})
  con.register('_incoming_keys', keys)
  try:
    stored = con.execute(
        'SELECT %s FROM "%s" AS stored WHERE EXISTS (SELECT 1 FROM '
        '_incoming_keys AS incoming WHERE %s)' % (
            ', '.join('stored."%s"' % k for k in key), table,
            ' AND '.join('incoming."%s" = stored."%s"' % (k, k)
                         for k in key))).fetchall()
  finally:
    con.unregister('_incoming_keys')
  if stored:
    stored = set(stored)
    rows = [row for row in rows
            if tuple(row.get(k) for k in key) not in stored]
  columns = ', '.join('"%s"' % n for n in schema.column_names)
  insert = 'INSERT INTO "%s" (%s) SELECT %s FROM _incoming_rows' % (
      table, columns, columns)
  # Registered outside the transaction: a view dropped inside a failed one
  # raises "transaction aborted", hiding the error that failed it.
  con.register('_incoming_rows', schema.to_arrow_table(
      rows, constants=constants or None))
  try:
    if with_inserted is None:
      if rows:
        con.execute(insert)
      return
    con.execute('BEGIN TRANSACTION')  # the rows and what derives from them
    try:
      if rows:
        con.execute(insert)
      with_inserted(con, rows)
      con.execute('COMMIT')
    except BaseException:
      _rollback(con)
      raise
  finally:
    con.unregister('_incoming_rows')


def _rollback(con):
  """Ends a failed transaction; what failed is raised by the caller."""
  try:
    con.execute('ROLLBACK')
  except Exception as e:  # pylint: disable=broad-except
    _LOG.debug('ROLLBACK after a failed insert: %s', e)


@beam.typehints.with_input_types(Row)
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
  ``write_time_column`` is set to the time of the insert. ``blocks``: the
  input is RowBlocks (a bounded replay's), each stored with its rows; a
  held file is then held BATCH_HOLD_SECONDS at a time, not HOLD_SECONDS:
  each release checkpoints the file, whose cost grows with the table (13
  releases were 3 of the 22 s of a replay of a million orders, measured),
  and a reader that announces itself (``main.py query``) still gets the
  file at once.
  """
  def __init__(self, path, schema, table=None, hold_connection=False,
               replace=False, write_time_column=None, with_inserted=None,
               update_only=None, insert_constants=None, blocks=False):
    super().__init__()
    if blocks:  # RowBlocks in (``transforms.blocks``), not rows
      self.with_input_types(RowBlock)
    if blocks and hold_connection is True:
      hold_connection = BATCH_HOLD_SECONDS
    self._args = (path, schema, table, hold_connection, replace,
                  write_time_column, with_inserted, update_only,
                  insert_constants)

  def expand(self, rows):
    results = rows | 'InsertIntoDuckDB' >> beam.ParDo(
        _InsertIntoDuckDB(*self._args)).with_outputs(
            _InsertIntoDuckDB.REJECTED, main='inserted')
    return results[_InsertIntoDuckDB.REJECTED]


