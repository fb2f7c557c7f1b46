"""Flags that cannot work are one line at start, exit 2 (issue 28): windows
too large for a timestamp, lateness, shards and waits out of range, an
archive name too long for the file system. A name no file system takes is
never waited out as an outage; windows at the calendar's ends are stored."""

import errno
import os
import threading

import pytest

from storage import outages
from tests.conftest import duckdb_dicts
from tests.conftest import run_main

SIGNIN = ('user_signin', '--input_file', 'data/signins_sample.jsonl')
ARCHIVE = ('pubsub_to_gcs', '--input_subscription',
           'projects/demo-proj/subscriptions/s')


@pytest.mark.parametrize('args, flag', [
    (SIGNIN + ('--window_seconds', '400000000000'), '--window_seconds'),
    (SIGNIN + ('--window_seconds', '0'), '--window_seconds'),
    (SIGNIN + ('--window_seconds', '-5'), '--window_seconds'),
    (SIGNIN + ('--allowed_lateness_seconds', '400000000000'),
     '--allowed_lateness_seconds'),
    (SIGNIN + ('--count_shards', '1000000000'), '--count_shards'),
    (SIGNIN + ('--progress_seconds', '1e20'), '--progress_seconds'),
    (SIGNIN + ('--drain_seconds', 'nan'), '--drain_seconds'),
    (ARCHIVE + ('--window_seconds', '400000000000'), '--window_seconds'),
    (ARCHIVE + ('--output_filename_prefix', 'x' * 200),
     '--output_filename_prefix'),
    (ARCHIVE + ('--output_filename_prefix', 'é' * 100),
     '--output_filename_prefix'),
    (ARCHIVE + ('--output_directory', 'gs://bucket/' + 'd/' * 450,
                '--output_filename_prefix', 'x' * 150),
     '--output_filename_prefix'),
])
def test_a_flag_that_cannot_work_is_one_line(tmp_path, args, flag):
  result = run_main(*args, '--warehouse', tmp_path / 'wh.duckdb',
                    timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.count('\n') == 1 and flag in result.stderr, (
      result.stderr)
  assert not (tmp_path / 'wh.duckdb').exists()  # refused before any work


def test_the_longest_prefix_that_fits_is_taken(tmp_path):
  from pipelines import options as pipeline_options
  from pipelines import pubsub_to_gcs
  from pipelines.errors import UsageError

  def check(prefix):
    argv = list(ARCHIVE[1:]) + ['--output_filename_prefix', prefix,
                                '--output_directory', str(tmp_path / 'a'),
                                '--warehouse', str(tmp_path / 'wh.duckdb')]
    options = pipeline_options.parse_options(
        argv, pubsub_to_gcs.OPTIONS, 'test', '')
    pipeline_options.window_seconds(options, 'pubsub_to_gcs')
    pubsub_to_gcs.check(options, pipeline_options.flag_values(options))
  with pytest.raises(UsageError) as refused:
    check('x' * 200)
  fits = int(str(refused.value).rsplit('at most ', 1)[1].split(' ')[0])
  assert 100 < fits < 200, refused.value
  check('x' * fits)
  with pytest.raises(UsageError):
    check('x' * (fits + 1))
  # and the archiver writes that name, its temp name included
  from transforms import archive
  archive._write(archive.file_path(  # pylint: disable=protected-access
      str(tmp_path / 'a'), 'x' * fits, 0, 300, 'f' * 12, 'avro'), b'data')


def test_a_name_too_long_is_not_an_outage(tmp_path):
  from transforms import archive
  path = str(tmp_path / ('y' * 300 + '.avro'))
  outcome = []

  def write():
    try:
      outages.wait_out('archive', lambda: archive._write(path, b'data'))  # pylint: disable=protected-access
    except OSError as e:
      outcome.append(e.errno)
  worker = threading.Thread(target=write, daemon=True)
  worker.start()
  worker.join(10)
  assert outcome == [errno.ENAMETOOLONG]  # raised at once, not waited out
  assert outages.is_outage(OSError(errno.ENOSPC, 'No space left on device'))
  assert not os.listdir(tmp_path)


def test_signins_at_the_calendar_ends_are_counted(tmp_path):
  lines = tmp_path / 'edge.jsonl'
  lines.write_text('{"userid": "a", "date": "9999-12-31T23:59:59.999999Z"}\n'
                   '{"userid": "b", "date": "0001-01-01T00:00:00Z"}\n'
                   '{"userid": "c", "date": "2017-10-17T20:57:17Z"}\n')
  db = tmp_path / 'wh.duckdb'
  for _ in range(2):  # the second run checks the stored window lengths
    result = run_main('user_signin', '--input_file', lines, '--warehouse', db,
                      '--window_seconds', '7')
    assert result.returncode == 0, result.stderr[-3000:]
  counts = duckdb_dicts(db, 'SELECT userid, signins, window_start, window_end '
                        'FROM signin_counts ORDER BY userid')
  assert [(c['userid'], c['signins']) for c in counts] == [
      ('a', 1), ('b', 1), ('c', 1)]
  assert str(counts[0]['window_end']) == '9999-12-31 23:59:59.999999+00:00'
  assert str(counts[1]['window_start']) == '0001-01-01 00:00:00+00:00'
  assert counts[2]['window_end'] - counts[2]['window_start'] == (
      counts[2]['window_end'] - counts[2]['window_end'].replace(
          second=counts[2]['window_end'].second) + __import__(
              'datetime').timedelta(seconds=7))


@pytest.mark.parametrize('args, flag', [
    (('pubsub_to_bigquery', '--schema', 'gs://b/orders.json', '--input_file',
      'data/orders_sample.jsonl'), '--schema gs://b/orders.json'),
    (('pubsub_to_bigquery', '--schema', 'data/orders.json', '--input_file',
      'data/orders_sample.jsonl', '--output_table', 'proj:dataset.t'),
     '--output_table proj:dataset.t'),
    (('pubsub_to_bigquery', '--schema', 'data/orders.json',
      '--input_subscription', 'projects/demo-proj/subscriptions/s'),
     '--input_subscription'),
    (('wordcount', '--input', 'gs://b/in.txt', '--output',
      '/tmp/beam-no-credentials/x'),
     '--input gs://b/in.txt'),
])
def test_no_credentials_is_one_line_at_once(tmp_path, args, flag):
  """Google Cloud without an emulator and without credentials: one line
  naming the flag and the command that gives credentials, before any
  client retries (before: 25 s of retries, or a 35-line traceback)."""
  import subprocess
  import sys
  import time
  from tests.conftest import ROOT
  env = {k: v for k, v in os.environ.items() if not k.endswith(
      '_EMULATOR_HOST') and k != 'GOOGLE_APPLICATION_CREDENTIALS'}
  env['CLOUDSDK_CONFIG'] = str(tmp_path / 'no-gcloud')  # no ADC file
  began = time.monotonic()
  if args[0] != 'wordcount':
    args += ('--warehouse', str(tmp_path / 'wh.duckdb'))
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=ROOT,
      env=env, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.count('\n') == 1 and flag in done.stderr, done.stderr
  assert 'gcloud auth application-default login' in done.stderr
  assert 'run.sh emulators env' in done.stderr
  assert time.monotonic() - began < 15
