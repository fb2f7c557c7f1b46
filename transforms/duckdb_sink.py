"""Rows -> a table in a local DuckDB file, with the same schema BigQuery
gets: one Arrow bulk insert per bundle, redeliveries a no-op by the key, and
the rows DuckDB refuses returned as ``(row, error message)`` pairs so that a
pipeline turns them into dead letters instead of losing them. Outages (a
full disk, a lock, I/O) are waited out, holding the batch. A replay's
ColumnBlocks go in as their Arrow tables, stored on a writer thread while
the next blocks are parsed."""

import bisect
import concurrent.futures
# Imported before the exit hook below is registered: the interpreter runs
# threading's exit hooks last-registered first, so ours runs before the one
# that joins the executor's threads.
import concurrent.futures.thread  # pylint: disable=unused-import
import datetime
import itertools
import logging
import threading
import weakref
from typing import Any, Mapping

import apache_beam as beam

from storage import outages
from storage.duckdb_files import DuckDBFiles
from storage.duckdb_files import HOLD_SECONDS
from transforms.blocks import ColumnBlock
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


# Every sink's stop, so that a process that exits without a teardown (an
# interrupted run: Ctrl-C) does not wait for ever on a writer thread waiting
# out an outage: the interpreter joins the executor's threads at exit.
_STOPS = weakref.WeakSet()


def _stop_writers_at_exit():
  for stop in list(_STOPS):
    stop.set()


if hasattr(threading, '_register_atexit'):  # CPython 3.9+
  threading._register_atexit(_stop_writers_at_exit)  # pylint: disable=protected-access


class _InsertIntoDuckDB(beam.DoFn):
  """Buffers rows per bundle and inserts them with one Arrow bulk insert.

  Rows whose key is already stored are skipped (redelivery is a no-op). A
  batch that fails is retried row by row; rows still refused go to the
  ``rejected`` output with the error.
  """
  REJECTED = 'rejected'
  MAX_BUFFER = 20000
  # ColumnBlocks' tables go to the writer thread whenever it is free, and
  # the parse waits for it only past a row group (DuckDB's 122,880 rows,
  # which it writes to the file at once, not through its log): a million
  # orders' inserts take 2.0-2.6 s in row groups, 2.8-3.5 s in 20,000s.
  MAX_TABLE_ROWS = 122880
  # Of ColumnBlocks, at most: their tables and the payloads kept beside
  # them for a refusal's dead letter (a payload of megabytes may give a
  # row of bytes), with one batch on the writer thread, which may be
  # waiting out an outage while the parse goes on. Of RowBlocks, their
  # messages' payloads (20,000 rows of 3 MB messages would be 60 GB).
  MAX_BUFFER_BYTES = 32 << 20

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
    # A ColumnBlock's Arrow table goes in as it is, unless a row is needed
    # for each (what is derived from the rows, a value set at the insert).
    self._takes_tables = not (self._replace or self._update_only or
                              self._with_inserted or self._write_time_column
                              or self._constants)
    self.setup()

  def setup(self):
    self._look_first = False  # stored keys: looked up after a batch had some
    # Whether the table has the primary key (a table made without it, or
    # whose key column was added later, refuses no stored key: look first).
    self._keyed = None
    self._writer = None  # the thread that stores ColumnBlocks' tables
    self._storing = None  # (its future, the blocks, their origins)
    # Set at teardown: the writer stops waiting out an outage (a pipeline
    # that failed meanwhile would otherwise never end).
    self._stop = threading.Event()
    _STOPS.add(self._stop)

  def start_bundle(self):
    if self._storing is not None:  # left by a bundle that failed: its retry
      try:  # stores (and refuses) its rows again; only its end is awaited
        self._storing[0].result()
      except Exception:  # pylint: disable=broad-except
        pass
      self._storing = None
    self._rows, self._origins, self._rows_bytes = [], [], 0
    self._blocks, self._block_origins, self._block_rows = [], [], 0
    self._block_bytes = 0

  def process(self, row, element=beam.DoFn.WindowedValueParam):
    # The whole windowed value, so that a refused row leaves in its own
    # window and timestamp (one parameter: Beam's per-element cost of
    # several is ~5% of a live stream). A block's rows share its own.
    kind = type(row)
    if kind is ColumnBlock and self._takes_tables:
      if self._rows:  # in the order they came
        yield from self._flush()
      self._blocks.append(row)
      self._block_origins.append(element)
      self._block_rows += len(row)
      self._block_bytes += row.nbytes
      if (self._block_rows >= self.MAX_TABLE_ROWS or
          self._block_bytes >= self.MAX_BUFFER_BYTES or
          self._storing is None or self._storing[0].done()):
        yield from self._flush_blocks()
      return
    if self._blocks:
      yield from self._flush_blocks()
    if kind is RowBlock:
      self._rows.extend(row)
      self._origins.extend([element] * len(row))
      self._rows_bytes += row.nbytes
    elif kind is ColumnBlock:
      rows = row.rows()
      self._rows.extend(rows)
      self._origins.extend([element] * len(rows))
    else:
      self._rows.append(row)
      self._origins.append(element)
    if (len(self._rows) >= self.MAX_BUFFER or
        self._rows_bytes >= self.MAX_BUFFER_BYTES):
      yield from self._flush()

  def finish_bundle(self):
    yield from self._flush_blocks()
    yield from self._stored()  # every row stored before the bundle ends
    yield from self._flush()

  def _flush_blocks(self):
    """Hands the buffered ColumnBlocks' tables, as one, to the writer
    thread, after the previous batch's insert ended (its refused rows
    given here). DuckDB runs an insert without the GIL, so the next blocks
    are parsed while it stores these (a million orders: 6.6-8.6 s, against
    9.8-10.2 s with the thread waited on at once; ``process`` hands them
    over whenever the thread is free)."""
    blocks, origins = self._blocks, self._block_origins
    self._blocks, self._block_origins, self._block_rows = [], [], 0
    self._block_bytes = 0
    yield from self._stored()
    if not blocks:
      return
    import pyarrow as pa
    table = blocks[0].table if len(blocks) == 1 else pa.concat_tables(
        [b.table for b in blocks])
    if self._writer is None:
      self._writer = concurrent.futures.ThreadPoolExecutor(
          1, thread_name_prefix='duckdb-insert')
    self._storing = (self._writer.submit(
        outages.wait_out, 'warehouse %s' % self._path,
        lambda: self._store(_TableRows(table)),
        on_retry=self._after_outage, stop=self._stop), blocks, origins)

  def _stored(self):
    """Waits for the batch the writer thread is storing; its refused rows
    leave as their rows, in their blocks' windows (what it raised is
    raised here)."""
    if self._storing is None:
      return
    future, blocks, origins = self._storing
    self._storing = None
    refused = future.result()
    if not refused:
      return
    starts = list(itertools.accumulate([0] + [len(b) for b in blocks]))
    for i, error in refused:
      n = bisect.bisect_right(starts, i) - 1
      row, = blocks[n].rows(i - starts[n], i - starts[n] + 1)
      yield beam.pvalue.TaggedOutput(self.REJECTED, origins[n].with_value((
          row, '%s: %s' % (type(error).__name__, error))))

  def teardown(self):
    if self._writer is not None:
      self._stop.set()  # an insert waiting out an outage gives up
      self._writer.shutdown(wait=True)
      self._writer = None

  def _flush(self):
    yield from self._stored()  # a table the writer stores goes in first
    rows, origins = self._rows, self._origins
    self._rows, self._origins, self._rows_bytes = [], [], 0
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
    """Stores the batch (a list of rows, or an Arrow table as
    ``_TableRows``); returns [(index in rows, error)] for rows the warehouse
    refuses. Raises what is an outage, not a row's fault."""
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
    if type(rows) is _TableRows:  # pylint: disable=unidiomatic-typecheck
      if self._keyed is None:
        self._keyed = has_primary_key(con, self._table,
                                      self._schema.primary_key)
      self._look_first = insert_table(
          con, self._table, self._schema, rows.table,
          self._look_first or not self._keyed)
      return
    constants = dict(self._constants)
    if self._write_time_column:
      constants[self._write_time_column] = datetime.datetime.now(
          datetime.timezone.utc)
    insert_rows(con, self._table, self._schema, rows, replace=self._replace,
                update_only=self._update_only, constants=constants,
                with_inserted=self._with_inserted)


class _TableRows(object):
  """An Arrow table as the halving retry slices it (``rows[a:b]``)."""
  __slots__ = ('table',)

  def __init__(self, table):
    self.table = table

  def __len__(self):
    return self.table.num_rows

  def __getitem__(self, part):
    start, stop, _ = part.indices(self.table.num_rows)
    return _TableRows(self.table.slice(start, stop - start))


def insert_table(con, name, schema, table, look_first=True):
  """One bulk insert of an Arrow ``table`` of ``schema`` (a ColumnBlock's)
  into ``name``, as ``insert_rows`` inserts rows: with a primary key, the
  first row of each key, and only the keys not stored yet. Returns whether
  some were stored already.

  ``look_first`` False: the INSERT is tried first, and the stored keys are
  looked up only when the primary key refuses it (a replay into a table
  that has none of its keys pays no look-up: ~1 s a million rows); the
  caller looks first again after a batch that had stored keys."""
  import duckdb
  import pyarrow.compute as pc
  key = schema.primary_key
  if not key:
    _insert_arrow(con, name, schema, table)
    return False
  table = _first_of_each_key(table, key)
  if not look_first:
    try:
      _insert_arrow(con, name, schema, table)
      return False
    except duckdb.ConstraintException:
      pass  # a key stored already (or a null refused): look them up
  stored = _stored_keys(con, name, key, table.select(list(key)))
  if stored:
    import pyarrow as pa
    if len(key) == 1:
      column = table.column(key[0])
      new = pc.invert(pc.is_in(column, value_set=pa.array(
          [s[0] for s in stored], column.type)))
    else:
      stored = set(stored)
      new = pa.array([k not in stored for k in zip(
          *(table.column(k).to_pylist() for k in key))])
    table = table.filter(new)
  _insert_arrow(con, name, schema, table)
  return bool(stored)


def has_primary_key(con, table, key):
  """Whether ``table`` has ``key`` as its primary key (a table made before
  its key column was, or restored from a file, has none)."""
  if not key:
    return False
  found = con.execute(
      "SELECT constraint_column_names FROM duckdb_constraints() WHERE "
      "table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]).fetchall()
  return any(list(names) == list(key) for names, in found)


def _stored_keys(con, table, key, keys):
  """The rows (tuples) of ``key`` stored in ``table`` among ``keys`` (an
  Arrow table of key columns), by a semi-join that hashes ``keys`` and
  scans the stored ones (see ``_insert_new``)."""
  con.register('_incoming_keys', keys)
  try:
    return con.execute(
        'SELECT %s FROM "%s" AS stored WHERE EXISTS (SELECT 1 FROM '
        '_incoming_keys AS incoming WHERE %s)' % (
            ', '.join('stored."%s"' % k for k in key), table,
            ' AND '.join('incoming."%s" = stored."%s"' % (k, k)
                         for k in key))).fetchall()
  finally:
    con.unregister('_incoming_keys')


def _first_of_each_key(table, key):
  """``table`` with only the first row of each ``key`` (as insert_rows
  keeps them)."""
  import pyarrow.compute as pc
  if len(key) == 1 and pc.count_distinct(
      table.column(key[0]), mode='all').as_py() == table.num_rows:
    return table  # every key once: the common batch, checked in C
  keys = list(zip(*(table.column(k).to_pylist() for k in key)))
  if len(set(keys)) == len(keys):
    return table
  first = {}
  for i, k in enumerate(keys):
    first.setdefault(k, i)
  return table.take(sorted(first.values()))


def _insert_arrow(con, name, schema, table):
  if not table.num_rows:
    return
  columns = ', '.join('"%s"' % n for n in schema.column_names)
  con.register('_incoming_rows', table)
  try:
    con.execute('INSERT INTO "%s" (%s) SELECT %s FROM _incoming_rows' % (
        name, columns, columns))
  finally:
    con.unregister('_incoming_rows')


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
  stored = _stored_keys(con, table, key, keys)
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


