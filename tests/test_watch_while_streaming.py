"""A person watches the local warehouse fill while the stream runs: another
process reads it (DuckDB read-only, and main.py query) while rows arrive,
and the seed's own gcloud command lands a row through the local stack."""

import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from tests.conftest import ROOT
from tests.conftest import run_main
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import stored
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins

pytestmark = pytest.mark.emulator

# Another process, as a person's second terminal: opens the file read-only,
# retrying for at most 2 s, every 0.5 s; prints one JSON line per read.
READER = r'''
import json, sys, time, duckdb
path, until = sys.argv[1], time.time() + float(sys.argv[2])
while time.time() < until:
  started = time.time()
  while True:
    try:
      con = duckdb.connect(path, read_only=True)
      break
    except duckdb.IOException:
      if time.time() - started > 2:
        con = None
        break
      time.sleep(0.05)
  if con is None:
    print(json.dumps({'ok': False}), flush=True)
  else:
    n = con.execute('SELECT count(*) FROM signins').fetchone()[0]
    con.close()
    print(json.dumps({'ok': True, 'rows': n, 's': time.time() - started}),
          flush=True)
  time.sleep(0.5)
'''


def test_warehouse_is_readable_while_the_stream_writes(pubsub_emulator,
                                                       tmp_path):
  project = pubsub_emulator.project
  topic, sub = 'watch-%s' % uuid.uuid4().hex[:8], 'watch-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(project, topic, 0, subscription=sub)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--input_subscription',
      'projects/%s/subscriptions/%s' % (project, sub), '--warehouse', db,
      '--max_message_bytes', 2048, '--progress_seconds', 0.5,
      '--status_file', status)
  wait_for_status(status, lambda s: 'stored_total' in s, proc)
  reader = subprocess.Popen(
      [sys.executable, '-c', READER, str(db), '14'], stdout=subprocess.PIPE,
      text=True)
  # Live traffic for ~12 s while both read.
  published = []
  publisher = threading.Thread(target=lambda: published.append(
      publish_signins.publish(project, topic, 6000, bad_fraction=0.1, rate=500,
                              max_message_bytes=2048)))
  publisher.start()
  queries = []
  while reader.poll() is None:
    started = time.monotonic()
    result = run_main('query', '--warehouse', db, '--format', 'json',
                      'SELECT count(*) AS n FROM signins', timeout=30)
    queries.append((result.returncode, time.monotonic() - started,
                    result.stdout, result.stderr))
    time.sleep(0.5)
  reads = [json.loads(line) for line in reader.stdout.read().splitlines()]
  publisher.join()
  n, ids, _ = published[0]
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= n, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err

  assert len(reads) >= 10 and all(r['ok'] for r in reads), reads
  assert max(r['s'] for r in reads) <= 2
  counts = [r['rows'] for r in reads]
  assert counts == sorted(counts) and counts[-1] > counts[0]  # growing
  assert len(queries) >= 5
  for code, took, out, stderr in queries:
    assert code == 0 and took <= 3, (code, took, stderr)  # 2 s + start-up
  query_counts = [json.loads(out)[0]['n'] for _, _, out, _ in queries]
  assert query_counts == sorted(query_counts) and query_counts[-1] > 0
  rows, dead = stored(db)
  got = [r[0] for r in rows] + [d[0] for d in dead]
  assert len(got) == len(set(got)) and set(got) == set(ids)


def test_the_seeds_gcloud_publish_lands_a_row(pubsub_emulator, tmp_path):
  """`gcloud pubsub topics publish ...` exactly as the seed wrote it, with
  the environment `./run.sh emulators env` exports."""
  project = pubsub_emulator.project
  sub = 'gcloud-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(project, 'topic-user-signin', 0, subscription=sub)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--input_subscription',
      'projects/%s/subscriptions/%s' % (project, sub), '--warehouse', db,
      '--progress_seconds', 0.3, '--status_file', status)
  env = dict(os.environ, **pubsub_emulator.env())
  published = subprocess.run(
      'gcloud pubsub topics publish topic-user-signin --message '
      '\'{"userid": "93234234", "date": "2017-10-17T20:57:17.338320"}\'',
      shell=True, env=env, capture_output=True, text=True, timeout=60,
      cwd=ROOT)
  assert published.returncode == 0, published.stderr
  wait_for_status(status, lambda s: s.get('rows', 0) >= 1, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  rows, dead = stored(db)
  assert [r[1:] for r in rows] == [('93234234', datetime.datetime(
      2017, 10, 17, 20, 57, 17, 338320, tzinfo=datetime.timezone.utc))]
  assert rows[0][0] in published.stdout and dead == []
