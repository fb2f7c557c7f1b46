"""A writer that is never idle still lets other processes read its file."""

import json
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
