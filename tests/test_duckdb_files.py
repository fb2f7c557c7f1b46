"""A writer that is never idle still lets other processes read its file."""

import json
import os
import subprocess
import sys
import threading
import time

from storage.duckdb_files import DuckDBFiles

# A person's second terminal: plain DuckDB, read-only, no announcement;
# retries for at most 2 s per read.
READER = r'''
import json, sys, time, duckdb
path, reads = sys.argv[1], int(sys.argv[2])
for _ in range(reads):
  started = time.time()
  n = None
  while time.time() - started < 2:
    try:
      con = duckdb.connect(path, read_only=True)
    except duckdb.IOException:
      time.sleep(0.05)
      continue
    n = con.execute('SELECT count(*) FROM t').fetchone()[0]
    con.close()
    break
  print(json.dumps({'ok': n is not None, 'rows': n}), flush=True)
  time.sleep(0.3)
'''


# main.py query's way in: announce, then read (a timeout under the hold).
ANNOUNCED_READER = r'''
import json, sys, time
from storage.duckdb_files import wait_to_read
started = time.monotonic()
with wait_to_read(sys.argv[1], timeout=float(sys.argv[2])) as con:
  waited = time.monotonic() - started
  rows = con.execute('SELECT count(*) FROM t').fetchone()[0]
print(json.dumps({'waited': waited, 'rows': rows}))
'''


def test_overlapping_writers_release_the_file_for_a_plain_reader(tmp_path):
  db = str(tmp_path / 'busy.duckdb')
  with DuckDBFiles.use(db) as con:
    con.execute('CREATE TABLE t (i INTEGER)')
  stop = threading.Event()
  written = []

  def write(offset):
    # Two threads whose uses overlap: the process never stops using the file.
    i = 0
    while not stop.is_set():
      with DuckDBFiles.use(db) as con:
        con.execute('INSERT INTO t VALUES (?)', [offset + i])
        time.sleep(0.03)
      written.append(1)
      i += 1
      time.sleep(0.01)

  writers = [threading.Thread(target=write, args=(k * 10**6,)) for k in (0, 1)]
  for w in writers:
    w.start()
  try:
    time.sleep(0.5)
    reader = subprocess.run([sys.executable, '-c', READER, db, '6'],
                            capture_output=True, text=True, timeout=60)
  finally:
    stop.set()
    for w in writers:
      w.join()
  reads = [json.loads(line) for line in reader.stdout.splitlines()]
  assert len(reads) == 6 and all(r['ok'] for r in reads), (reads, reader.stderr)
  assert reads[-1]['rows'] > reads[0]['rows']  # the writers kept writing
  with DuckDBFiles.use(db) as con:
    assert con.execute('SELECT count(*) FROM t').fetchone()[0] == len(written)
  DuckDBFiles.close(db)


def test_a_replay_holding_its_file_longer_still_lets_an_announced_reader_in(
    tmp_path):
  """A bounded replay holds its warehouse BATCH_HOLD_SECONDS at a time (each
  release checkpoints the file): a reader that announces itself, as
  ``main.py query`` does, still gets in at once, mid-hold, and the writer
  carries on after it."""
  from transforms.duckdb_sink import BATCH_HOLD_SECONDS
  db = str(tmp_path / 'replay.duckdb')
  with DuckDBFiles.use(db, hold_seconds=BATCH_HOLD_SECONDS) as con:
    con.execute('CREATE TABLE t (i INTEGER)')
  stop = threading.Event()
  written = []

  def write():
    i = 0
    while not stop.is_set():
      with DuckDBFiles.use(db, hold_seconds=BATCH_HOLD_SECONDS) as con:
        con.execute('INSERT INTO t VALUES (?)', [i])
      written.append(i)
      i += 1
      time.sleep(0.01)

  writer = threading.Thread(target=write)
  writer.start()
  try:
    time.sleep(0.5)
    reader = subprocess.run([sys.executable, '-c', ANNOUNCED_READER, db,
                             str(BATCH_HOLD_SECONDS / 3)],
                            capture_output=True, text=True, timeout=60,
                            cwd=os.path.dirname(os.path.dirname(
                                os.path.abspath(__file__))))
    time.sleep(0.5)
  finally:
    stop.set()
    writer.join()
  read = json.loads(reader.stdout or 'null')
  assert read is not None, reader.stderr
  assert read['waited'] < 2.0, read  # not the hold's 15 s
  assert 0 < read['rows'] < len(written)  # the writer went on after it
  with DuckDBFiles.use(db) as con:
    assert con.execute('SELECT count(*) FROM t').fetchone()[0] == len(written)
  DuckDBFiles.close(db)


def test_a_refused_batch_is_halved_down_to_the_rows_refused(tmp_path):
  """Rows the warehouse refuses (a CHECK the schema does not know) are
  found by halving the batch: each refused row alone with its own error,
  every other row stored once, a row stored already skipped, in few
  inserts."""
  import duckdb
  from transforms import duckdb_sink
  from transforms import schemas
  schema = schemas.table_from_bigquery_schema(
      [{'name': 'n', 'type': 'INTEGER', 'mode': 'REQUIRED'}], 't')
  db = str(tmp_path / 'w.duckdb')
  con = duckdb.connect(db)
  con.execute(schema.duckdb_ddl().replace(
      '"n" BIGINT NOT NULL', '"n" BIGINT NOT NULL CHECK (n % 701 <> 5)'))
  con.execute("INSERT INTO t (n, message_id) VALUES (3, 'm3')")
  con.close()
  fn = duckdb_sink._InsertIntoDuckDB(db, schema, 't', True, False)  # pylint: disable=protected-access
  inserts = []
  insert = fn._insert  # pylint: disable=protected-access
  fn._insert = lambda c, rows: (inserts.append(len(rows)), insert(c, rows))  # pylint: disable=protected-access
  rows = [{'n': i, 'message_id': 'm%d' % i} for i in range(2000)]
  refused = fn._store(rows)  # pylint: disable=protected-access
  assert [i for i, _ in refused] == [5, 706, 1407]
  assert all('CHECK constraint' in str(e) for _, e in refused)
  assert len(inserts) < 100, inserts  # not one insert a row (2,001)
  DuckDBFiles.close(db)
  con = duckdb.connect(db, read_only=True)
  stored = sorted(n for n, in con.execute('SELECT n FROM t').fetchall())
  con.close()
  assert stored == [i for i in range(2000) if i % 701 != 5]


def test_a_key_stored_by_another_writer_mid_batch_is_skipped_not_refused(
    tmp_path):
  """Another writer stores one of the batch's keys between the look-up of
  stored keys and the insert: the insert fails on the primary key, the
  halving retries find the key stored and skip it. No row is refused, none
  is stored twice, the other writer's row stays."""
  import duckdb
  from transforms import duckdb_sink
  from transforms import schemas
  schema = schemas.table_from_bigquery_schema(
      [{'name': 'n', 'type': 'INTEGER', 'mode': 'REQUIRED'}], 't')
  db = str(tmp_path / 'w.duckdb')
  con = duckdb.connect(db)
  con.execute(schema.duckdb_ddl())
  con.close()

  class RacingCursor(object):
    """A cursor whose first look-up of stored keys is followed by another
    writer's insert of key m7 (committed before this batch's insert)."""
    def __init__(self, cursor):
      self._cursor = cursor
      self.raced = False

    def execute(self, sql, *args):
      result = self._cursor.execute(sql, *args)
      if not self.raced and sql.startswith('SELECT') and 'EXISTS' in sql:
        self.raced = True
        rows = result.fetchall()
        self._cursor.execute("INSERT INTO t (n, message_id) VALUES "
                             "(-7, 'm7')")
        return FetchAll(rows)
      return result

    def __getattr__(self, name):
      return getattr(self._cursor, name)

  class FetchAll(object):
    def __init__(self, rows):
      self._rows = rows

    def fetchall(self):
      return self._rows

  fn = duckdb_sink._InsertIntoDuckDB(db, schema, 't', True, False)  # pylint: disable=protected-access
  insert = fn._insert  # pylint: disable=protected-access
  racing = []

  def insert_racing(con, rows):
    if not racing:
      racing.append(RacingCursor(con))
    return insert(racing[0] if racing[0]._cursor is con else con, rows)  # pylint: disable=protected-access
  fn._insert = insert_racing  # pylint: disable=protected-access
  rows = [{'n': i, 'message_id': 'm%d' % i} for i in range(20)]
  refused = fn._store(rows)  # pylint: disable=protected-access
  assert racing and racing[0].raced
  assert refused == []
  DuckDBFiles.close(db)
  con = duckdb.connect(db, read_only=True)
  stored = dict(con.execute('SELECT message_id, n FROM t').fetchall())
  con.close()
  assert len(stored) == 20
  assert stored['m7'] == -7  # the other writer's row, not stored twice
  assert all(stored['m%d' % i] == i for i in range(20) if i != 7)
