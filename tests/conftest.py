"""Test session setup: loopback-only traffic, and the emulators the tests need.

Every emulator is started by the session on a free loopback port and stopped
by PID at the end; nothing outside this machine is contacted.
"""

import contextlib
import os
import subprocess
import sys

import pytest

from local_runner.beam_patches import use_emulator_clients

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Google auth probes a link-local metadata server; keep it on loopback.
os.environ['NO_GCE_CHECK'] = 'true'
os.environ['GCE_METADATA_HOST'] = '127.0.0.1:9'
os.environ['GCE_METADATA_IP'] = '127.0.0.1:9'
os.environ['CLOUDSDK_CORE_DISABLE_PROMPTS'] = '1'
os.environ['CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK'] = 'true'
os.environ['CLOUDSDK_CORE_DISABLE_USAGE_REPORTING'] = 'true'
# Worker processes of multi-process runs import our packages from here.
os.environ['PYTHONPATH'] = os.pathsep.join(
    p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)


GCS_BUCKET = 'test-bucket'
PROJECT = 'test-project'


@pytest.fixture(autouse=True)
def no_pipeline_left_running():
  """After each test, any pipeline it started in the background and left
  running (a test that failed before stopping it) is killed: an orphaned
  stream would run on, and load the machine, for the rest of the session."""
  yield
  from tests.test_user_signin_stream import Pipeline
  while Pipeline.started:
    proc = Pipeline.started.pop()
    if proc.poll() is None:
      proc.kill()
      proc.wait(30)


@pytest.fixture(scope='session')
def gcs_root(tmp_path_factory):
  """Where the GCS emulator keeps objects (and BigQuery load jobs read them)."""
  return str(tmp_path_factory.mktemp('gcs-data'))


@pytest.fixture(scope='session')
def gcs_emulator(tmp_path_factory, gcs_root):
  """gcp-storage-emulator on a free loopback port with one bucket, on disk;
  yields its URL."""
  from tools.emulators import GcsEmulator
  emulator = GcsEmulator(
      log_path=str(tmp_path_factory.mktemp('gcs') / 'emulator.log'),
      bucket=GCS_BUCKET, data_dir=gcs_root).start()
  os.environ.update(emulator.env())
  use_emulator_clients()
  try:
    yield 'http://%s' % emulator.host
  finally:
    os.environ.pop('STORAGE_EMULATOR_HOST', None)
    emulator.stop()


@pytest.fixture(scope='session')
def bigquery_emulator(tmp_path_factory, gcs_emulator, gcs_root):
  """bqemulator (installed by run.sh) on free loopback ports, reading load
  files from the GCS emulator's folder; yields a client for it."""
  from tools.emulators import BigQueryEmulator
  emulator = BigQueryEmulator(
      log_path=str(tmp_path_factory.mktemp('bigquery') / 'emulator.log'),
      project=PROJECT, gcs_root=gcs_root).start()
  env = dict(emulator.env(), GOOGLE_CLOUD_PROJECT=PROJECT)
  os.environ.update(env)
  use_emulator_clients()
  try:
    from pipelines import emulator_clients
    yield emulator_clients.bigquery_client(PROJECT)
  finally:
    for key in env:
      os.environ.pop(key, None)
    emulator.stop()


@pytest.fixture(scope='session')
def pubsub_emulator(tmp_path_factory):
  """Google's official Pub/Sub emulator on a free loopback port; yields it."""
  from tools.emulators import PubSubEmulator
  emulator = PubSubEmulator(
      log_path=str(tmp_path_factory.mktemp('pubsub') / 'emulator.log'),
      project='test-project')
  emulator.start()
  os.environ.update(emulator.env())
  try:
    yield emulator
  finally:
    for key in emulator.env():
      os.environ.pop(key, None)
    emulator.stop()


@pytest.fixture(scope='session')
def gcs_client(gcs_emulator):
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import storage
  return storage.Client(project='test', credentials=AnonymousCredentials())


def run_main(*args, env=None, timeout=300, cwd=ROOT):
  """Runs ``python main.py ARGS`` the way a user would; returns CompletedProcess."""
  return subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py')] + [str(a) for a in args],
      capture_output=True, text=True, timeout=timeout, cwd=cwd,
      env=dict(os.environ, **(env or {})))


def duckdb_dicts(path, sql):
  """Rows of a query on a DuckDB file as dicts, timestamps in UTC."""
  import duckdb
  con = duckdb.connect(str(path), read_only=True)
  try:
    con.execute("SET TimeZone = 'UTC'")
    cursor = con.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]
  finally:
    con.close()


def new_dataset(client):
  """A dataset of its own in the BigQuery emulator, for one test."""
  import uuid
  name = 'ds_%s' % uuid.uuid4().hex[:8]
  client.create_dataset(name)
  return name


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
  """A tmpfs of ``size`` mounted at ``path`` for the block (a small disk to
  fill, or a read-only one); skips the test where mounting is not allowed."""
  path.mkdir(exist_ok=True)
  options = 'size=%s%s' % (size, ',ro' if read_only else '')
  if subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)],
                    capture_output=True).returncode != 0:
    pytest.skip('mounting a tmpfs is not allowed here (needs root)')
  try:
    yield path
  finally:
    subprocess.run(['umount', '-l', str(path)], capture_output=True)


def replay_into_bigquery_and_duckdb(schema, replay, dataset, table, db):
  """main.py pubsub_to_bigquery replays ``replay`` twice, as a user would:
  through Beam's WriteToBigQuery (streaming inserts) into the emulator's
  ``dataset.table``, and into the DuckDB file ``db``."""
  for where in (['--output_table', '%s:%s.%s' % (PROJECT, dataset, table),
                 '--bigquery_method', 'streaming_inserts'],
                ['--warehouse', db]):
    result = run_main('pubsub_to_bigquery', '--schema', schema,
                      '--input_file', replay, *where)
    assert result.returncode == 0, result.stderr
