"""What is derived from the messages stays right under ordinary events:
replays under any spelling of a file add nothing, and a warehouse that
cannot be used is a one-line error before anything is read."""

import hashlib
import os
import subprocess
import sys

import duckdb
import pytest

from tests.conftest import new_dataset
from tests.conftest import run_main
from tests.conftest import tmpfs

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


def test_a_full_disk_at_start_is_one_line_before_anything_is_read(tmp_path):
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS)
  with tmpfs(tmp_path / 'full', '64k') as disk:
    with open(disk / 'filler', 'wb') as f:
      try:
        f.write(b'\0' * (1 << 20))
      except OSError:
        pass  # full
    schema = os.path.join(os.path.dirname(__file__), '..', 'data', 'orders.json')
    for args in (('user_signin', '--input_file', replay, '--warehouse', disk / 'w.duckdb'),
                 ('pubsub_to_bigquery', '--schema', schema, '--input_file', replay,
                  '--warehouse', disk / 'w.duckdb'),
                 ('wordcount', '--output', tmp_path / 'out' / 'c', '--output_table',
                  disk / 'w.duckdb')):
      result = run_main(*args)
      lines = result.stderr.strip().splitlines()
      assert result.returncode == 1, result.stderr
      assert 'Traceback' not in result.stderr and 'No space left' in lines[-1]


def test_a_warehouse_on_a_read_only_disk_is_a_one_line_error(tmp_path):
  """A new file on a read-only disk, and an existing DuckDB file there."""
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS)
  with tmpfs(tmp_path / 'disk', '4m') as disk:
    con = duckdb.connect(str(disk / 'w.duckdb'))
    con.execute('CREATE TABLE t (a INT)')
    con.close()
    subprocess.run(['mount', '-o', 'remount,ro', str(disk)], check=True)
    for name in ('new.duckdb', 'w.duckdb'):
      line = _one_line_error(run_main(
          'user_signin', '--input_file', replay, '--warehouse', disk / name),
          '--warehouse')
      assert 'cannot write in %r' % str(disk) in line, line


COUNTS_VS_ROWS = '''
    SELECT c.window_start, c.userid, c.signins, r.n FROM signin_counts c
    FULL OUTER JOIN (
      SELECT to_timestamp(0) + to_microseconds(
                 epoch_us(date) - ((epoch_us(date) % {size}) + {size}) % {size})
               AS window_start, userid, count(*) AS n
      FROM signins GROUP BY 1, 2) r
    USING (window_start, userid)
    WHERE c.signins IS DISTINCT FROM r.n'''


def counts_that_differ_from_the_rows(db, window_seconds):
  con = duckdb.connect(str(db), read_only=True)
  try:
    return con.execute(COUNTS_VS_ROWS.format(size=window_seconds * 10**6)).fetchall()
  finally:
    con.close()


def test_replays_leave_counts_equal_to_the_rows(tmp_path):
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS)
  db = tmp_path / 'w.duckdb'
  for _ in range(2):
    assert run_main('user_signin', '--input_file', replay, '--warehouse', db,
                    '--window_seconds', 60).returncode == 0
  assert counts_that_differ_from_the_rows(db, 60) == []
  assert sum(r[0] for r in duckdb.connect(str(db), read_only=True).execute(
      'SELECT signins FROM signin_counts').fetchall()) == 500
  # Another window length on the same warehouse: a one-line error.
  line = _one_line_error(run_main('user_signin', '--input_file', replay,
                                  '--warehouse', db, '--window_seconds', 10),
                         '--window_seconds')
  assert 'give --window_seconds 60' in line


def test_a_warehouse_an_older_version_counted_is_recounted(tmp_path):
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS)
  db = tmp_path / 'w.duckdb'
  assert run_main('user_signin', '--input_file', replay, '--warehouse', db
                  ).returncode == 0
  con = duckdb.connect(str(db))
  con.execute("UPDATE signin_counts SET signins = 1 WHERE userid = 'u1'")
  con.execute("INSERT INTO signin_counts VALUES (to_timestamp(0), "
              "to_timestamp(60), 'ghost', 5, NULL, NULL)")
  con.close()
  result = run_main('user_signin', '--input_file', replay, '--warehouse', db)
  assert result.returncode == 0 and 'recounted' in result.stderr
  assert counts_that_differ_from_the_rows(db, 60) == []


def _publish(project, topic, payloads):
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  futures = [publisher.publish(publisher.topic_path(project, topic), p)
             for p in payloads]
  return [f.result(timeout=60) for f in futures]


def _topic_and_subscription(project, name):
  from google.cloud import pubsub_v1
  publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
  topic = publisher.topic_path(project, name)
  sub = subscriber.subscription_path(project, name + '-sub')
  publisher.create_topic(name=topic)
  subscriber.create_subscription(name=sub, topic=topic)
  return name, sub


def _signins(count, users, prefix=''):
  return [b'{"userid": "%su%d", "date": "2024-01-01T00:00:%02d.%06dZ"}' % (
      prefix.encode(), i % users, (i * 7) % 30, i) for i in range(count)]


@pytest.mark.emulator
def test_counts_equal_the_rows_after_a_kill_and_a_restart(pubsub_emulator, tmp_path):
  import signal
  import uuid

  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  project = pubsub_emulator.project
  topic, sub = _topic_and_subscription(project, 'kill-%s' % uuid.uuid4().hex[:8])
  ids = _publish(project, topic, _signins(3000, 20))
  db, status = tmp_path / 'w.duckdb', tmp_path / 'status.json'
  args = ('--input_subscription', sub, '--warehouse', db, '--window_seconds',
          10, '--progress_seconds', 0.2, '--status_file', status)
  first = start_pipeline(tmp_path, *args)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= 1000, first)
  first.proc.kill()  # -9, mid-stream
  first.communicate(timeout=30)
  os.remove(status)
  second = start_pipeline(tmp_path, *args)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids), second,
                  timeout=180)
  second.send_signal(signal.SIGTERM)
  _, err = second.communicate(timeout=60)
  assert second.returncode == 0, err
  assert count(db, 'signins') == len(ids)
  assert counts_that_differ_from_the_rows(db, 10) == []


@pytest.mark.emulator
def test_two_writers_on_one_warehouse_keep_counts_equal_to_the_rows(
    pubsub_emulator, tmp_path):
  import signal
  import uuid

  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  project = pubsub_emulator.project
  db = tmp_path / 'w.duckdb'
  procs, total = [], 0
  for n in range(2):
    topic, sub = _topic_and_subscription(project, 'two-%s' % uuid.uuid4().hex[:8])
    total += len(_publish(project, topic, _signins(1500, 10)))  # the same users
    status = tmp_path / ('status%d.json' % n)
    procs.append((start_pipeline(
        tmp_path, '--input_subscription', sub, '--warehouse', db,
        '--window_seconds', 10, '--progress_seconds', 0.2, '--status_file',
        status), status))
  for proc, status in procs:
    wait_for_status(status, lambda s: s.get('stored_total', 0) >= total, proc,
                    timeout=180)
  for proc, _ in procs:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
  assert count(db, 'signins') == total
  assert counts_that_differ_from_the_rows(db, 10) == []


def _bq_rows(client, sql):
  return [tuple(r.values()) for r in client.query(sql).result()]


def _expected_counts(payloads, window_seconds):
  """Per (window start, user) counts computed from what was published."""
  import collections
  import datetime
  import json
  out = collections.Counter()
  for p in payloads:
    m = json.loads(p)
    when = datetime.datetime.fromisoformat(m['date'].replace('Z', '+00:00'))
    start = int(when.timestamp()) // window_seconds * window_seconds
    out[(datetime.datetime.fromtimestamp(start, datetime.timezone.utc),
         m['userid'])] += 1
  return dict(out)


@pytest.mark.emulator
def test_replays_into_bigquery_add_nothing_and_counts_are_exact(
    bigquery_emulator, tmp_path):
  from tests.conftest import PROJECT
  client = bigquery_emulator
  dataset = new_dataset(client)
  replay = tmp_path / 's.jsonl'
  replay.write_bytes(SIGNINS + b'{"userid": "x"}\n')
  for _ in range(2):
    result = run_main('user_signin', '--input_file', replay, '--output_table',
                      '%s:%s.signins' % (PROJECT, dataset))
    assert result.returncode == 0, result.stderr
  assert 'merged into %s:%s.signins: 0 new' % (PROJECT, dataset) in result.stdout
  assert _bq_rows(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
                  '%s.signins' % dataset) == [(500, 500)]
  assert _bq_rows(client, 'SELECT count(*) FROM %s.signins_error_records'
                  % dataset) == [(1,)]
  assert [t.table_id for t in client.list_tables(dataset)
          if '_replay_' in t.table_id] == []  # staging dropped
  exact = {(w, u): n for w, _, u, n in _bq_rows(
      client, 'SELECT * FROM %s.signins_counts_exact' % dataset)}
  assert exact == _expected_counts(SIGNINS.splitlines(), 60)


@pytest.mark.emulator
def test_bigquery_exact_counts_after_a_kill_and_a_restart(
    pubsub_emulator, bigquery_emulator, tmp_path):
  import signal
  import uuid

  from tests.conftest import PROJECT
  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  client = bigquery_emulator
  dataset = new_dataset(client)
  project = pubsub_emulator.project
  topic, sub = _topic_and_subscription(project, 'bqkill-%s' % uuid.uuid4().hex[:8])
  payloads = _signins(1200, 12)
  _publish(project, topic, payloads)
  status = tmp_path / 'status.json'
  args = ('--input_subscription', sub, '--output_table',
          '%s:%s.signins' % (PROJECT, dataset), '--warehouse',
          tmp_path / 'deliveries.duckdb', '--window_seconds', 10,
          '--progress_seconds', 0.3, '--status_file', status)
  first = start_pipeline(tmp_path, *args)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= 300, first)
  first.proc.kill()
  first.communicate(timeout=30)

  def all_stored():
    return _bq_rows(client, 'SELECT count(DISTINCT message_id) FROM %s.signins'
                    % dataset)[0][0] >= len(payloads)
  second = start_pipeline(tmp_path, *args)
  import time
  deadline = time.monotonic() + 180
  while not all_stored():
    assert time.monotonic() < deadline and second.poll() is None
    time.sleep(1)
  second.send_signal(signal.SIGTERM)
  second.communicate(timeout=60)
  exact = {(w, u): n for w, _, u, n in _bq_rows(
      client, 'SELECT * FROM %s.signins_counts_exact' % dataset)}
  assert exact == _expected_counts(payloads, 10)


@pytest.mark.emulator
def test_a_full_disk_is_waited_out_and_the_stream_resumes_by_itself(
    pubsub_emulator, tmp_path):
  """A warehouse on a 3 MB tmpfs fills up mid-stream: the run says so in
  its status, holds what is in flight, and once the disk has room again
  stores everything once, with no dead letter and no restart."""
  import json
  import signal
  import time
  import uuid

  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  with tmpfs(tmp_path / 'disk', '3m') as disk:
    proc = None
    try:
      project = pubsub_emulator.project
      topic, sub = _topic_and_subscription(project, 'full-%s' % uuid.uuid4().hex[:8])
      payloads = [b'{"userid": "user-%06d-%s", "date": "2024-01-01T00:00:%02dZ"}' % (
          i, b'x' * 150, i % 60) for i in range(12000)]
      ids = _publish(project, topic, payloads)
      db, status = disk / 'w.duckdb', tmp_path / 'status.json'
      proc = start_pipeline(tmp_path, '--input_subscription', sub, '--warehouse',
                            db, '--progress_seconds', 0.3, '--status_file', status)
      seen = wait_for_status(status, lambda s: any(
          'No space left' in o['error'] for o in s.get('outages', {}).values()),
          proc, timeout=120)
      time.sleep(3)  # a while on a full disk
      subprocess.run(['mount', '-o', 'remount,size=64m', str(disk)], check=True)
      done = wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids)
                             and not s.get('outages'), proc, timeout=180)
      proc.send_signal(signal.SIGTERM)
      out, err = proc.communicate(timeout=60)
      assert proc.returncode == 0, err
      assert seen['stored_total'] < len(ids) and done['dead_letters'] == {}
      assert 'waiting and retrying' in err and 'working again' in err
      assert 'sink_rejected' not in err
      con = duckdb.connect(str(db), read_only=True)
      try:
        assert con.execute('SELECT count(*), count(DISTINCT message_id) FROM '
                           'signins').fetchall() == [(len(ids), len(ids))]
        assert con.execute('SELECT count(*) FROM signin_errors').fetchall() == [(0,)]
      finally:
        con.close()
      assert json.loads(status.read_text())['stored_total'] == len(ids)
    finally:
      if proc is not None and proc.poll() is None:
        proc.proc.kill()


def _reader_sockets(tmpdir=None):
  """The unix sockets a process listens on in its private reader folder."""
  import glob
  import stat
  found = []
  for folder in glob.glob(os.path.join(
      tmpdir or os.environ.get('TMPDIR', '/tmp'), 'beam-reader-*')):
    st = os.stat(folder)
    assert stat.S_IMODE(st.st_mode) == 0o700, oct(st.st_mode)
    found.extend(glob.glob(os.path.join(folder, 'events')))
  return found


@pytest.mark.emulator
def test_another_process_gets_nothing_from_the_readers_channel(
    pubsub_emulator, tmp_path):
  """The reader serves the runner on a unix socket in a 0700 folder, and one
  stream only: a second client is refused, takes no message, and every
  message is stored once without a restart."""
  import signal
  import uuid

  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  project = pubsub_emulator.project
  topic, sub = _topic_and_subscription(project, 'spy-%s' % uuid.uuid4().hex[:8])
  # A TMPDIR of its own: other streams (tests run side by side) make
  # reader folders too. Short, for the socket's path.
  import tempfile
  tmpdir = tempfile.mkdtemp(prefix='spy', dir='/tmp')
  before = set(_reader_sockets(tmpdir))
  db, status = tmp_path / 'w.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(tmp_path, '--input_subscription', sub, '--warehouse', db,
                        '--progress_seconds', 0.3, '--status_file', status,
                        env=dict(os.environ, TMPDIR=tmpdir))
  wait_for_status(status, lambda s: 'in_flight' in s, proc)
  sockets = set(_reader_sockets(tmpdir)) - before
  assert len(sockets) == 1, sockets
  spy = subprocess.run(
      [sys.executable, '-c', SPY, 'unix:' + sockets.pop()],
      capture_output=True, text=True, timeout=60, cwd=os.path.dirname(__file__))
  ids = _publish(project, topic, _signins(1000, 10))
  done = wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids),
                         proc, timeout=120)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0
  assert spy.stdout.strip() == 'refused, 0 events', (spy.stdout, spy.stderr)
  assert 'refused a second client' in err
  assert done['stored_total'] == len(ids) and count(db, 'signins') == len(ids)
  assert not [s for s in _reader_sockets(tmpdir) if s not in before]  # removed
  os.rmdir(tmpdir)


SPY = '''
import sys, grpc
from apache_beam.portability.api import beam_interactive_api_pb2
from apache_beam.portability.api import beam_interactive_api_pb2_grpc
stub = beam_interactive_api_pb2_grpc.TestStreamServiceStub(
    grpc.insecure_channel(sys.argv[1]))
events = 0
try:
  for _ in stub.Events(beam_interactive_api_pb2.EventsRequest(output_ids=['None']),
                       timeout=5):
    events += 1
  print('ended, %d events' % events)
except grpc.RpcError as e:
  print('%s, %d events' % ('refused' if e.code() == grpc.StatusCode.PERMISSION_DENIED
                           else e.code(), events))
'''


@pytest.mark.emulator
def test_a_bigquery_that_stops_answering_is_waited_out(pubsub_emulator, gcs_root,
                                                       tmp_path):
  """The BigQuery emulator frozen (SIGSTOP) mid-stream for 20 s: the stream
  holds what is in flight, says what it waits for, and once BigQuery answers
  stores every message once, with no dead letter and no restart."""
  import signal
  import time
  import uuid

  from tests.conftest import PROJECT
  from tests.test_user_signin_stream import start_pipeline
  from tests.test_user_signin_stream import wait_for_status
  from tools.emulators import BigQueryEmulator
  from pipelines import emulator_clients as emulator_wiring
  emulator = BigQueryEmulator(log_path=str(tmp_path / 'bq.log'), project=PROJECT,
                              gcs_root=gcs_root).start()
  env = dict(emulator.env(), GOOGLE_CLOUD_PROJECT=PROJECT)
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  proc = None
  try:
    client = emulator_wiring.bigquery_client(PROJECT)
    dataset = new_dataset(client)
    project = pubsub_emulator.project
    topic, sub = _topic_and_subscription(project, 'bqstop-%s' % uuid.uuid4().hex[:8])
    payloads = _signins(2000, 20)
    _publish(project, topic, payloads[:800])
    status = tmp_path / 'status.json'
    proc = start_pipeline(tmp_path, '--input_subscription', sub, '--output_table',
                          '%s:%s.signins' % (PROJECT, dataset), '--warehouse',
                          tmp_path / 'deliveries.duckdb', '--progress_seconds',
                          0.5, '--status_file', status)
    wait_for_status(status, lambda s: s.get('stored_total', 0) >= 300, proc)
    os.kill(emulator.proc.pid, signal.SIGSTOP)
    try:
      _publish(project, topic, payloads[800:])
      waiting = wait_for_status(status, lambda s: any(
          w.startswith('BigQuery') for w in s.get('outages', {})), proc, timeout=60)
      time.sleep(10)
    finally:
      os.kill(emulator.proc.pid, signal.SIGCONT)
    done = wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(payloads)
                           and not s.get('outages'), proc, timeout=180)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert waiting['stored_total'] < len(payloads) <= done['stored_total']
    assert 'not answering' in err and 'answering again' in err
    assert _bq_rows(client, 'SELECT count(*), count(DISTINCT message_id) FROM '
                    '%s.signins' % dataset)[0][1] == len(payloads)
    assert _bq_rows(client, 'SELECT count(*) FROM %s.signins_error_records'
                    % dataset) == [(0,)]
  finally:
    if proc is not None and proc.poll() is None:
      proc.proc.kill()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    emulator.stop()
