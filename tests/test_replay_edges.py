"""Replays at the edges of an archive (issue 28): a replay is exact by
message id within itself (a file present twice, a message twice in one
file: one row, into BigQuery as into DuckDB); a staging table a kill -9
left is dropped by the next replay and never counted; a replay reads
archive files only (the archiver's temporary files skipped, a foreign file
refused in one line before anything is stored); a file that vanishes while
a replay runs (a compaction merged it) is read from where its messages went."""

import datetime
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.conftest import PROJECT
from tests.conftest import ROOT
from tests.conftest import duckdb_dicts
from tests.conftest import new_dataset
from tests.conftest import run_main
from transforms import archive

WINDOW_START = 1714564800 * 10**6  # 2024-05-01T12:00:00Z, a 5-minute boundary
GOOD, BAD = 180, 20


def _payload(i):
  if i % 10 == 9:
    return b'{"oops %d' % i  # not JSON: a dead letter
  return b'{"userid": "u%d", "date": "2024-05-01T12:0%d:00Z"}' % (i % 7, i % 5)


def _records(indexes):
  from apache_beam.io.gcp.pubsub import PubsubMessage
  published = datetime.datetime.fromtimestamp(
      WINDOW_START / 1e6 + 3, tz=datetime.timezone.utc)
  return [archive.record(PubsubMessage(
      _payload(i), {'n': str(i)}, message_id='m-%03d' % i,
      publish_time=published)) for i in indexes]


def write_archive(directory, fmt='avro'):
  """Two bundle files of one window as the archiver names them (200
  messages: 180 sign-ins, 20 not JSON), the first present twice (a crash
  wrote its bundle again), the second holding ten messages twice (as a
  compaction of such a window writes them); returns the folder's files."""
  first = archive.file_path(directory, 'signins-', WINDOW_START, 300,
                            'a1b2c3d4e5f6', fmt)
  second = archive.file_path(directory, 'signins-', WINDOW_START, 300,
                             '0f0e0d0c0b0a', fmt)
  archive._write(first, archive.encode(_records(range(100)), fmt))  # pylint: disable=protected-access
  archive._write(second, archive.encode(  # pylint: disable=protected-access
      _records(list(range(100, 200)) + list(range(150, 160))), fmt))
  again = archive.file_path(directory, 'signins-', WINDOW_START, 300,
                            'ffffeeeedddd', fmt)
  shutil.copyfile(first, again)
  return [first, second, again]


def _bq(client, sql):
  return [tuple(r.values()) for r in client.query(sql).result()]


def _expected_counts():
  import collections
  out = collections.Counter()
  for i in range(200):
    data = _payload(i)
    if data.startswith(b'{"userid"'):
      m = json.loads(data)
      when = datetime.datetime.fromisoformat(m['date'].replace('Z', '+00:00'))
      out[(when.replace(second=0), m['userid'])] += 1
  return dict(out)


# -- A: exact by message id within one replay --------------------------------

@pytest.mark.emulator
def test_a_doubled_archive_file_is_one_row_per_message_in_bigquery(
    bigquery_emulator, tmp_path):
  """Before: the MERGE inserted both staged copies (rows 290 for 180 ids);
  now one row and one dead letter per message id, twice over."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  write_archive(str(tmp_path / 'archive'))
  for _ in range(2):
    result = run_main('user_signin', '--input_file',
                      str(tmp_path / 'archive/**'), '--output_table',
                      '%s:%s.signins' % (PROJECT, dataset))
    assert result.returncode == 0, result.stderr
  assert 'merged into %s:%s.signins: 0 new' % (PROJECT, dataset) in (
      result.stdout)
  assert _bq(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
             '%s.signins' % dataset) == [(GOOD, GOOD)]
  assert _bq(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
             '%s.signins_error_records' % dataset) == [(BAD, BAD)]
  exact = {(w, u): n for w, _, u, n in _bq(
      client, 'SELECT * FROM %s.signins_counts_exact' % dataset)}
  assert exact == _expected_counts()
  assert [t.table_id for t in client.list_tables(dataset)
          if '_replay_' in t.table_id] == []


@pytest.mark.emulator
def test_pubsub_to_bigquery_replays_each_message_once_into_bigquery(
    bigquery_emulator, tmp_path):
  """The same archive through pubsub_to_bigquery (blocks, file loads)."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  write_archive(str(tmp_path / 'archive'), fmt='parquet')
  schema = tmp_path / 'logins.json'
  schema.write_text(json.dumps([{'name': 'userid', 'type': 'STRING'},
                                {'name': 'date', 'type': 'TIMESTAMP'}]))
  result = run_main('pubsub_to_bigquery', '--schema', schema, '--input_file',
                    str(tmp_path / 'archive/**'), '--output_table',
                    '%s:%s.logins' % (PROJECT, dataset))
  assert result.returncode == 0, result.stderr
  assert _bq(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
             '%s.logins' % dataset) == [(GOOD, GOOD)]
  assert _bq(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
             '%s.logins_error_records' % dataset) == [(BAD, BAD)]


def test_a_doubled_archive_file_is_one_row_per_message_in_duckdb(tmp_path):
  write_archive(str(tmp_path / 'archive'))
  db = tmp_path / 'w.duckdb'
  result = run_main('user_signin', '--input_file',
                    str(tmp_path / 'archive/**'), '--warehouse', db)
  assert result.returncode == 0, result.stderr
  assert duckdb_dicts(db, 'SELECT count(*) AS n, count(DISTINCT message_id) '
                      'AS d FROM signins') == [{'n': GOOD, 'd': GOOD}]
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM signin_errors') == [
      {'n': BAD}]
  counts = duckdb_dicts(db, 'SELECT window_start AS w, userid AS u, signins '
                        'AS n FROM signin_counts')
  assert {(c['w'], c['u']): c['n'] for c in counts} == _expected_counts()


@pytest.mark.emulator
def test_a_staging_table_left_by_a_kill_is_dropped_and_never_counted(
    bigquery_emulator, tmp_path):
  """A replay killed (-9) while it streams into its staging table leaves the
  table; the next replay drops it (its owner is gone) and stores each
  message once; the exact counts never read it."""
  client = bigquery_emulator
  dataset = new_dataset(client)
  spec = '%s:%s.signins' % (PROJECT, dataset)
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(b''.join(
      b'{"userid": "u%d", "date": "2024-05-01T12:0%d:00Z"}\n' % (i % 7, i % 5)
      for i in range(20000)))
  log = open(tmp_path / 'killed.log', 'wb')
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'user_signin',
       '--input_file', str(replay), '--output_table', spec,
       '--bigquery_method', 'streaming_inserts'],
      stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
  try:
    deadline = time.time() + 120
    staged = []
    while time.time() < deadline and proc.poll() is None:
      staged = [t.table_id for t in client.list_tables(dataset)
                if t.table_id.startswith('signins_replay_')]
      if staged and _bq(client, 'SELECT count(*) FROM %s.%s' % (
          dataset, staged[0]))[0][0] > 0:
        break
      time.sleep(0.2)
    assert proc.poll() is None, 'the replay ended before it could be killed'
    assert staged, 'no staging table seen'
    proc.kill()
    proc.wait()
  finally:
    if proc.poll() is None:
      proc.kill()
    log.close()
  assert staged[0] in [t.table_id for t in client.list_tables(dataset)]
  assert _bq(client, 'SELECT count(*) FROM %s.signins' % dataset) == [(0,)]
  result = run_main('user_signin', '--input_file', replay, '--output_table',
                    spec)
  assert result.returncode == 0, result.stderr
  assert 'dropped the staging table %s.%s' % (dataset, staged[0]) in (
      result.stderr)
  assert [t.table_id for t in client.list_tables(dataset)
          if '_replay_' in t.table_id] == []
  assert _bq(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
             '%s.signins' % dataset) == [(20000, 20000)]
  assert _bq(client, 'SELECT sum(signins) FROM %s.signins_counts_exact'
             % dataset) == [(20000,)]


def test_which_leftover_staging_tables_a_replay_drops():
  """Dropped: one a process of this machine owned that is gone, or one
  older than the staging lifetime (made before expirations); kept: one a
  live process owns, or another machine's younger than that (a replay that
  may be running now)."""
  from pipelines import bigquery_replay as replay
  now = datetime.datetime.now(datetime.timezone.utc)
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()

  class Table:
    def __init__(self, labels, age, table_id='signins_replay_0123abcd'):
      self.labels, self.created = labels, now - age
      self.table_id = table_id

  here = replay._owner()  # pylint: disable=protected-access
  young, old = datetime.timedelta(minutes=5), replay.STAGING_LIFETIME * 2
  run = {replay.RUN_LABEL: '0123abcd'}
  mine = lambda pid: dict(run, **{replay.OWNER_LABEL: here,  # noqa: E731
                                  replay.PID_LABEL: str(pid)})
  assert 'is gone' in replay.leftover_reason(Table(mine(dead.pid), young), now)
  assert replay.leftover_reason(Table(mine(os.getpid()), young), now) is None
  other = dict(run, **{replay.OWNER_LABEL: 'elsewhere',
                       replay.PID_LABEL: str(dead.pid)})
  assert replay.leftover_reason(Table(other, young), now) is None
  assert 'ago' in replay.leftover_reason(Table(run, old), now)
  assert 'ago' in replay.leftover_reason(Table(mine(os.getpid()), old), now)
  # A user's own table named like one (a date is 8 hex digits) is never
  # dropped, however old: only tables a replay labelled as its own are.
  assert replay.leftover_reason(
      Table({}, old, 'orders_replay_20240115'), now) is None
  assert replay.leftover_reason(
      Table(run, old, 'orders_replay_20240115'), now) is None


def test_staging_tables_are_made_with_an_expiration_and_their_owner(
    monkeypatch):
  """bqemulator keeps no expiration: what stage() asks BigQuery for."""
  import argparse
  from pipelines import bigquery_replay as replay
  from pipelines import emulator_clients
  from pipelines import user_signin
  from pipelines.tables import Destinations

  class Client:
    project = 'p'

    def __init__(self):
      self.made = []

    def list_tables(self, dataset):
      return []

    def create_table(self, table):
      self.made.append(table)

  client = Client()
  monkeypatch.setattr(emulator_clients, 'bigquery_client', lambda *a: client)
  opts = argparse.Namespace(output_table='p:d.signins', warehouse=None)
  before = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(
      milliseconds=1)  # BigQuery keeps milliseconds
  staged_to, staged = replay.stage(Destinations.of(user_signin.TABLES, opts))
  assert [s for _, s, _ in staged] == ['p:d.' + t.table_id
                                       for t in client.made]
  assert {t.table_id.split('_replay_')[0] for t in client.made} == {
      'signins', 'signins_error_records'}
  assert staged_to['rows'].spec == staged[0][1]
  for table in client.made:
    assert before + replay.STAGING_LIFETIME <= table.expires <= (
        datetime.datetime.now(datetime.timezone.utc) + replay.STAGING_LIFETIME)
    assert table.labels[replay.PID_LABEL] == str(os.getpid())
  assert staged_to['counts'].spec == 'p:d.signins_counts'  # not staged


# -- B: an archive replay reads archive files only ---------------------------

def _lines(stderr):
  return [line for line in stderr.strip().splitlines() if line.strip()]


@pytest.mark.parametrize('stray', ['weather.parquet', 'notes.jsonl'])
def test_a_foreign_file_in_an_archive_tree_is_refused_in_one_line(
    tmp_path, stray):
  """Before: weather.parquet was a 115-line traceback (KeyError:
  publish_time), exit 1; notes.jsonl was read as messages of their own."""
  directory = tmp_path / 'archive'
  write_archive(str(directory))
  path = directory / '2024' / stray
  if stray.endswith('.parquet'):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'city': ['Oslo'], 'celsius': [3.5]}), str(path))
  else:
    path.write_bytes(b'{"userid": "z", "date": "2024-05-01T12:00:00Z"}\n')
  schema = tmp_path / 'logins.json'
  schema.write_text(json.dumps([{'name': 'userid', 'type': 'STRING'}]))
  for args in (['user_signin'], ['pubsub_to_bigquery', '--schema', schema]):
    db = tmp_path / ('%s.duckdb' % args[0])
    result = run_main(*args, '--input_file', str(directory / '**'),
                      '--warehouse', db)
    assert result.returncode == 2, result.stderr
    lines = _lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and 'not an archive file' in lines[0], lines
    assert not db.exists()  # nothing stored, not even the tables


def test_the_archivers_temporary_files_are_skipped_with_one_warning(tmp_path):
  """A kill -9 mid-write leaves ``NAME.avro.XXXXXXXX.tmp``: before, it was
  read as JSON lines (junk dead letters); now skipped, said once."""
  directory = tmp_path / 'archive'
  files = write_archive(str(directory))
  with open(files[1], 'rb') as f:
    cut = f.read()[:700]  # what a write cut short leaves
  temp = files[1] + '.0123abcd.tmp'
  with open(temp, 'wb') as f:
    f.write(cut)
  with open(files[1] + '.k3_x9zq1.tmp', 'wb') as f:  # a compaction's (mkstemp)
    f.write(cut)
  # A file the archiver did not name (a copy, another tool's) is read as an
  # archive file when its records are the archive's.
  with open(directory / 'backup.avro', 'wb') as f:
    f.write(archive.encode(_records([500, 501]), 'avro'))
  db = tmp_path / 'w.duckdb'
  result = run_main('user_signin', '--input_file', str(directory / '**'),
                    '--warehouse', db)
  assert result.returncode == 0, result.stderr
  warned = [line for line in _lines(result.stderr) if '.tmp' in line]
  assert len(warned) == 1 and 'WARNING' in warned[0], result.stderr
  assert '2 temporary files' in warned[0] and temp in warned[0], warned
  assert 'Traceback' not in result.stderr
  assert duckdb_dicts(db, 'SELECT count(*) AS n FROM signins') == [
      {'n': GOOD + 2}]
  assert duckdb_dicts(db, 'SELECT reason, count(*) AS n FROM signin_errors '
                      'GROUP BY 1') == [{'reason': 'not_json', 'n': BAD}]


def test_only_temporary_files_is_a_one_line_error(tmp_path):
  directory = tmp_path / 'archive'
  directory.mkdir()
  (directory / 'x.avro.0123abcd.tmp').write_bytes(b'Obj\x01 cut short')
  result = run_main('user_signin', '--input_file', str(directory / '*'),
                    '--warehouse', tmp_path / 'w.duckdb')
  assert result.returncode == 2, result.stderr
  lines = _lines(result.stderr)
  assert len(lines) == 1 and 'temporary' in lines[0], lines


# -- B: a file that vanishes while a replay runs ------------------------------

def _read(metadata_list, tmp_path):
  """ReadFileLines over ``metadata_list`` as a replay's read step runs it."""
  import apache_beam as beam
  from apache_beam.testing.test_pipeline import TestPipeline
  from transforms import message_files
  out = tmp_path / ('ids-%d' % time.monotonic_ns())

  class Keep(beam.DoFn):
    def process(self, message):
      with open(out, 'a') as f:
        f.write(message.message_id + '\n')

  with TestPipeline(runner='FnApiRunner') as p:
    _ = (p | beam.Create(metadata_list, reshuffle=False)
         | beam.ParDo(message_files.ReadFileLines())
         | beam.ParDo(Keep()))
  return open(out).read().split() if out.exists() else []


def test_a_file_a_compaction_removed_is_read_from_the_new_shards(tmp_path):
  """The replay listed a window's bundle files; a compaction merged them
  into shards and deleted them before they were read. Before: a traceback
  (FileNotFoundError); now every message is read from the shards."""
  from apache_beam.io.filesystems import FileSystems
  from transforms import archive_compaction
  directory = str(tmp_path / 'archive')
  files = write_archive(directory)
  listed = FileSystems.match([directory + '/**'])[0].metadata_list
  assert len(listed) == 3
  written, removed = archive_compaction.compact(
      directory, 'signins-', WINDOW_START, 300, 2, 'avro')
  assert sorted(removed) == sorted(files) and written
  ids = _read(listed, tmp_path)
  assert set(ids) == {'m-%03d' % i for i in range(200)}


def test_a_json_lines_file_that_vanished_is_one_error_line(tmp_path, caplog):
  from apache_beam.io.filesystems import FileSystems
  kept, gone = tmp_path / 'a.jsonl', tmp_path / 'b.jsonl'
  kept.write_bytes(b'{"userid": "a"}\n')
  gone.write_bytes(b'{"userid": "b"}\n')
  listed = FileSystems.match([str(tmp_path / '*.jsonl')])[0].metadata_list
  gone.unlink()
  with caplog.at_level('INFO'):
    ids = _read(listed, tmp_path)
  assert ids == ['file:%s:1' % kept]
  said = [r for r in caplog.records if str(gone) in r.getMessage()]
  assert len(said) == 1 and said[0].levelname == 'ERROR', caplog.text
  assert '\n' not in said[0].getMessage() and not said[0].exc_info
