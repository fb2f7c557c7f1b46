"""What is derived from the messages stays right under ordinary events:
replays under any spelling of a file add nothing, and a warehouse that
cannot be used is a one-line error before anything is read."""

import hashlib
import os
import subprocess

import duckdb
import pytest

from tests.conftest import run_main

SIGNINS = b''.join(b'{"userid": "u%d", "date": "2024-01-01T00:0%d:00Z"}\n' % (
    i % 7, i % 10) for i in range(500))


def count(db, table):
  con = duckdb.connect(str(db), read_only=True)
  try:
    return con.execute('SELECT count(*) FROM %s' % table).fetchall()[0][0]
  finally:
    con.close()


def test_a_replay_adds_nothing_whatever_names_the_file(tmp_path):
  """Absolute path, a relative path from another folder, a symlink: one
  file, so 500 rows, not 1,500."""
  folder = tmp_path / 'in'
  folder.mkdir()
  (folder / 's.jsonl').write_bytes(SIGNINS)
  os.symlink(folder / 's.jsonl', tmp_path / 'link.jsonl')
  elsewhere = tmp_path / 'elsewhere'
  elsewhere.mkdir()
  db = tmp_path / 'w.duckdb'
  for path, cwd in ((folder / 's.jsonl', None), ('../in/s.jsonl', elsewhere),
                    (tmp_path / 'link.jsonl', None)):
    kwargs = {'cwd': cwd} if cwd else {}
    result = run_main('user_signin', '--input_file', path, '--warehouse', db,
                      **kwargs)
    assert result.returncode == 0, result.stderr
  assert count(db, 'signins') == 500
  assert count(db, 'signin_errors') == 0


def _one_line_error(result, flag):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr
  assert len(lines) == 1 and flag in lines[0] and 'Traceback' not in result.stderr
  return lines[0]


@pytest.mark.parametrize('pipeline, flag', [
    ('user_signin', '--warehouse'), ('wordcount', '--output_table')])
def test_a_file_that_is_not_duckdb_is_a_one_line_error_and_left_alone(
    tmp_path, pipeline, flag):
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS)
  for content in (b'name,count\nada,1\n', b''):
    target = tmp_path / 'notes.duckdb'
    target.write_bytes(content)
    before = hashlib.sha256(target.read_bytes()).hexdigest()
    args = (['--input_file', replay, '--warehouse', target]
            if pipeline == 'user_signin' else
            ['--output', tmp_path / 'out' / 'counts', '--output_table', target])
    line = _one_line_error(run_main(pipeline, *args), flag)
    assert 'not a DuckDB database file' in line
    assert hashlib.sha256(target.read_bytes()).hexdigest() == before


def test_a_warehouse_on_a_read_only_disk_is_a_one_line_error(tmp_path):
  """A new file on a read-only disk, and an existing DuckDB file there."""
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS)
  disk = tmp_path / 'disk'
  disk.mkdir()
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', str(disk)],
                    capture_output=True).returncode != 0:
    pytest.skip('mounting a tmpfs is not allowed here (needs root)')
  try:
    con = duckdb.connect(str(disk / 'w.duckdb'))
    con.execute('CREATE TABLE t (a INT)')
    con.close()
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    for name in ('new.duckdb', 'w.duckdb'):
      line = _one_line_error(run_main(
          'user_signin', '--input_file', replay, '--warehouse', disk / name),
          '--warehouse')
      assert 'cannot write in %r' % str(disk) in line, line
  finally:
    subprocess.run(['umount', str(disk)], capture_output=True)
