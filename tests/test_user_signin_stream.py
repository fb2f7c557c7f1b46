"""main.py user_signin for real: the official Pub/Sub emulator, a DuckDB file,
SIGTERM; count in, count out. Plus the file replay and the Dataflow dry run."""

import collections
import json
import os
import signal
import subprocess
import sys
import uuid

import duckdb
import pytest

from tests.conftest import ROOT
from tests.conftest import run_main
from tools import publish_signins
from tools import status as status_file

MAX_BYTES = 2048
FIXED_DATE = '2017-10-17T20:57:17.338320'


class Pipeline(object):
  """main.py user_signin in the background, its output in files (an unread
  pipe would fill up with progress lines and block it). Every one started
  is killed at its test's end if still running (conftest): a test that
  failed before stopping its stream must not leave it running."""
  started = []

  def __init__(self, log_dir, *args, name='user_signin', env=None):
    self._out = open(os.path.join(log_dir, 'stdout-%d.txt' % id(self)), 'w+')
    self._err = open(os.path.join(log_dir, 'stderr-%d.txt' % id(self)), 'w+')
    self.proc = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'main.py'), name] +
        [str(a) for a in args], stdout=self._out, stderr=self._err, cwd=ROOT,
        env=env)
    Pipeline.started.append(self.proc)

  def poll(self):
    return self.proc.poll()

  def send_signal(self, sig):
    self.proc.send_signal(sig)

  @property
  def returncode(self):
    return self.proc.returncode

  def communicate(self, timeout=None):
    """Waits; returns (stdout, stderr) as text."""
    self.proc.wait(timeout)
    outputs = []
    for f in (self._out, self._err):
      f.seek(0)
      outputs.append(f.read())
      f.close()
    return tuple(outputs)


def start_pipeline(log_dir, *args, name='user_signin', env=None):
  return Pipeline(log_dir, *args, name=name, env=env)


def wait_for_status(path, done, proc, timeout=120):
  status, ok = status_file.wait_for(
      path, done, lambda: proc.poll() is None, timeout)
  if proc.poll() is not None:
    raise AssertionError('pipeline exited: %s' % (proc.communicate(),))
  assert ok, 'not done in %d s; last status %s' % (timeout, status)
  return status


def stored(db):
  con = duckdb.connect(str(db), read_only=True)
  try:
    rows = con.execute('SELECT message_id, userid, date FROM signins').fetchall()
    dead = con.execute(
        'SELECT message_id, reason FROM signin_errors').fetchall()
  finally:
    con.close()
  return rows, dead


@pytest.mark.emulator
def test_every_published_message_stored_exactly_once(pubsub_emulator, tmp_path):
  project = pubsub_emulator.project
  topic, sub = 'signins-%s' % uuid.uuid4().hex[:8], 'sub-%s' % uuid.uuid4().hex[:8]
  count, ids, kinds = publish_signins.publish(
      project, topic, 600, bad_fraction=0.2, date=FIXED_DATE,
      subscription=sub, max_message_bytes=MAX_BYTES)
  assert set(kinds) == set(publish_signins.BAD_KINDS) | {'valid'}
  db, status_file = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path,
      '--input_subscription', 'projects/%s/subscriptions/%s' % (project, sub),
      '--warehouse', db, '--max_message_bytes', MAX_BYTES,
      '--progress_seconds', 0.5, '--status_file', status_file)
  status = wait_for_status(
      status_file, lambda s: s.get('stored_total', 0) >= count, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert 'Traceback' not in err
  assert 'user_signin: ' in out and 'dead letters:' in out
  assert status['stored_total'] == count

  rows, dead = stored(db)
  stored_ids = [r[0] for r in rows] + [d[0] for d in dead]
  assert len(stored_ids) == count == len(set(stored_ids))  # none twice
  assert set(stored_ids) == set(ids)  # none lost
  reasons = collections.Counter(d[1] for d in dead)
  assert dict(reasons) == {k: n for k, n in kinds.items() if k != 'valid'}
  assert len(rows) == kinds['valid']

  # The same payloads replayed from a file give the same rows, and a second
  # replay adds nothing.
  replay = tmp_path / 'replay.jsonl'
  with open(replay, 'wb') as f:
    for data, _ in publish_signins.messages(600, 0.2, FIXED_DATE, MAX_BYTES):
      f.write(data + b'\n')
  replay_db = tmp_path / 'replay.duckdb'
  for _ in range(2):
    result = run_main('user_signin', '--input_file', replay, '--warehouse',
                      replay_db, '--max_message_bytes', MAX_BYTES)
    assert result.returncode == 0, result.stderr
  replay_rows, replay_dead = stored(replay_db)
  assert sorted(r[1:] for r in replay_rows) == sorted(r[1:] for r in rows)
  assert collections.Counter(d[1] for d in replay_dead) == reasons


def test_signin_flags_are_checked(tmp_path):
  cases = [
      ([], 'give exactly one of --input_subscription, --input_topic, --input_file (got none)'),
      (['--input_file', 'a', '--input_topic', 'projects/my-project/topics/t'], 'give exactly one of'),
      (['--input_file', tmp_path / 'missing*.jsonl'], '--input_file: no file matches'),
      (['--input_topic', 'projects/my-project/topics/t', '--default_timezone', 'Nowhere/Special'],
       '--default_timezone: unknown time zone'),
      (['--input_subscription', 'my-subscription'], '--input_subscription: PubSub subscription must be in the form'),
      (['--input_topic', 'projects/my-project/topics/t', '--window_seconds', '0'],
       '--window_seconds must be 1 to 31,622,400 seconds, not 0'),
      (['--input_topic', 'projects/my-project/topics/t', '--output_table', 'x.duckdb'],
       '--output_table takes a BigQuery table'),
      (['--input_topic', 'projects/my-project/topics/t', '--runner', 'DataflowRunner',
        '--project', 'p', '--region', 'r', '--temp_location', 'gs://b/t'],
       'DataflowRunner needs --output_table'),
  ]
  (tmp_path / 'a_dir').mkdir()
  (tmp_path / 'x.jsonl').write_text('{}\n')
  cases += [
      (['--input_file', tmp_path / 'a_dir'], '--input_file: %r is a directory'
       % str(tmp_path / 'a_dir')),
      (['--input_file', tmp_path / 'x.jsonl', '--warehouse', tmp_path / 'a_dir'],
       '--warehouse: %r is a directory' % str(tmp_path / 'a_dir')),
  ]
  for args, message in cases:
    result = run_main('user_signin', '--warehouse', tmp_path / 'w.duckdb', *args)
    assert result.returncode == 2, (args, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (args, result.stderr)


def test_compressed_replay_equals_the_plain_one(tmp_path):
  import gzip
  lines = [json.dumps({'userid': str(i), 'date': FIXED_DATE}).encode()
           for i in range(50)] + [b'not json']
  (tmp_path / 'plain.jsonl').write_bytes(b'\n'.join(lines) + b'\n')
  with gzip.open(tmp_path / 'packed.jsonl.gz', 'wb') as f:
    f.write(b'\n'.join(lines) + b'\n')
  stored_by_file = []
  for name in ('plain.jsonl', 'packed.jsonl.gz'):
    db = tmp_path / (name + '.duckdb')
    result = run_main('user_signin', '--input_file', tmp_path / name,
                      '--warehouse', db)
    assert result.returncode == 0, result.stderr
    rows, dead = stored(db)
    stored_by_file.append((sorted((r[1], r[2]) for r in rows),
                           [d[1] for d in dead]))
  assert stored_by_file[0] == stored_by_file[1]
  assert len(stored_by_file[0][0]) == 50 and stored_by_file[0][1] == ['not_json']


def test_help_documents_every_flag():
  result = run_main('user_signin', '--help')
  assert result.returncode == 0
  for flag in ('--input_subscription', '--input_topic', '--input_file',
               '--warehouse', '--output_table', '--dead_letter_table',
               '--counts_table', '--bigquery_method', '--window_seconds',
               '--allowed_lateness_seconds', '--default_timezone',
               '--max_message_bytes', '--status_file', '--streaming'):
    assert flag in result.stdout, flag


def test_dataflow_dry_run_builds_the_streaming_job():
  from pipelines import user_signin
  result = user_signin.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--input_subscription', 'projects/demo-proj/subscriptions/signins',
      '--output_table', 'demo-proj:signins.signins'])
  assert result.job.proto.type == result.job.proto.type.JOB_TYPE_STREAMING
  names = {t.unique_name for t in
           result.job.proto_pipeline.components.transforms.values()}
  store = 'StoreRowsAndDeadLetters/'
  for step in ('ReadMessages/ReadFromPubSub', 'ParseSignins', store + 'WriteRows',
               store + 'WriteDeadLetters', 'CountPerWindow', 'WriteCounts',
               store + 'WriteRows/WriteToBigQuery',
               store + 'WriteDeadLetters/WriteToBigQuery'):
    assert step in names, step
  options = result.job.options.get_all_options()
  assert options['streaming'] is True
  assert options['setup_file'] == os.path.join(ROOT, 'setup.py')


@pytest.mark.parametrize('location, says', [
    ('gs://b/tmp', "'b' is not a valid bucket name"),
    ('/tmp/somewhere', 'is not a gs:// location'),
    ('gs://Bad_Bucket/tmp', "'Bad_Bucket' is not a valid bucket name")])
def test_a_malformed_temp_location_is_one_line_at_once(location, says):
  """A bucket name GCS cannot have made the Dataflow dry run try the network
  for 120 s, then end in a traceback."""
  result = run_main(
      'user_signin', '--runner', 'DataflowRunner', '--dry_run=True', '--project',
      'demo-proj', '--region', 'europe-west1', '--temp_location', location,
      '--input_subscription', 'projects/demo-proj/subscriptions/s',
      '--output_table', 'demo-proj:d.t', timeout=60)
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  assert '--temp_location' in lines[0] and says in lines[0]


def test_a_dataflow_dry_run_says_what_it_built():
  result = run_main(
      'user_signin', '--runner', 'DataflowRunner', '--dry_run=True',
      '--project', 'demo-proj', '--region', 'europe-west1', '--temp_location',
      'gs://demo-bucket/tmp', '--input_subscription',
      'projects/demo-proj/subscriptions/signins', '--output_table',
      'demo-proj:signins.signins')
  assert result.returncode == 0, result.stderr[-2000:]
  said = result.stdout
  assert 'user_signin: dry run: the Dataflow job was built and not submitted' \
      in said
  assert '(streaming) in europe-west1, project demo-proj' in said
  assert 'top level: ReadMessages, ParseSignins, StoreRowsAndDeadLetters' \
      in said
  assert 'staging: gs://demo-bucket/tmp' in said
