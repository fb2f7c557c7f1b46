"""Test session setup: loopback-only traffic, and the emulators the tests need.

Every emulator is started by the session on a free loopback port and stopped
by PID at the end; nothing outside this machine is contacted.
"""

import os
import socket
import subprocess
import sys
import time

import pytest

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


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def wait_for_port(port, proc, timeout=60):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError('emulator exited with %s' % proc.returncode)
    try:
      with socket.create_connection(('127.0.0.1', port), timeout=0.5):
        return
    except OSError:
      time.sleep(0.1)
  raise RuntimeError('emulator did not open port %d' % port)


def stop(proc):
  """Stops a process group we started (the emulator and any children)."""
  if proc.poll() is None:
    os.killpg(proc.pid, 15)
    try:
      proc.wait(10)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, 9)
      proc.wait()


GCS_BUCKET = 'test-bucket'


@pytest.fixture(scope='session')
def gcs_emulator(tmp_path_factory):
  """gcp-storage-emulator on a free loopback port with one bucket; yields its URL."""
  port = free_port()
  log = open(tmp_path_factory.mktemp('gcs') / 'emulator.log', 'wb')
  exe = os.path.join(os.path.dirname(sys.executable), 'gcp-storage-emulator')
  proc = subprocess.Popen(
      [exe, 'start', '--host', '127.0.0.1', '--port', str(port), '--in-memory',
       '--default-bucket', GCS_BUCKET],
      stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
  try:
    wait_for_port(port, proc)
    url = 'http://127.0.0.1:%d' % port
    os.environ['STORAGE_EMULATOR_HOST'] = url
    yield url
  finally:
    os.environ.pop('STORAGE_EMULATOR_HOST', None)
    stop(proc)
    log.close()


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
