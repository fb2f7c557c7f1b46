"""Start, stop and check the local emulators: Google's official Pub/Sub
emulator (through gcloud), gcp-storage-emulator for GCS and bqemulator for
BigQuery, all for one local project.

    python -m tools.emulators start|stop|status|env [--state DIR]

Each runs on loopback in its own process group; its log and PID live under
the state folder (default .local/emulators) and it is stopped by PID. `env`
prints the environment to export (PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST,
BIGQUERY_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT and what gcloud needs).

GCS keeps its objects on disk under the state folder, because bqemulator's
load jobs read ``gs://BUCKET/PATH`` as ``$BQEMU_GCS_LOCAL_ROOT/BUCKET/PATH``:
both are given the same folder, so Beam's BigQuery file loads work.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_STATE = os.path.join(ROOT, '.local', 'emulators')
PROJECT = 'local-project'
BUCKET = 'local-bucket'
# Where run.sh installs bqemulator (its own venv: it pins DuckDB 1.5.x).
BQEMULATOR_VENV = os.environ.get(
    'BQEMULATOR_VENV', os.path.join(ROOT, '.local', 'bqemulator'))
QUIET_GCLOUD = {
    'CLOUDSDK_CORE_DISABLE_PROMPTS': '1',
    'CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK': 'true',
    'CLOUDSDK_CORE_DISABLE_USAGE_REPORTING': 'true',
}


class EmulatorError(Exception):
  """An emulator is missing or did not start; the message says what to do."""


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _children(pid):
  try:
    with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
      return [int(c) for c in f.read().split()]
  except OSError:
    return []


class Emulator(object):
  """One emulator process group: started, awaited, stopped by PID."""
  name = None

  def __init__(self, port=None, log_path=None):
    self.port = port or free_port()
    self.log_path = log_path
    self.proc = None
    self.pids = []

  @property
  def host(self):
    return '127.0.0.1:%d' % self.port

  def command(self):
    raise NotImplementedError

  def process_env(self):
    """Environment variables the emulator process itself needs."""
    return {}

  def ready(self, log_text):
    raise NotImplementedError

  def start(self, timeout=60):
    log = open(self.log_path, 'wb') if self.log_path else subprocess.DEVNULL
    self.proc = subprocess.Popen(
        self.command(), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, **QUIET_GCLOUD, **self.process_env()))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise EmulatorError('%s exited with %s; see %s' % (
            self.name, self.proc.returncode, self.log_path))
      if self._is_ready():
        self.pids = [self.proc.pid] + _children(self.proc.pid)
        return self
      time.sleep(0.1)
    self.stop()
    raise EmulatorError('%s did not start within %d s; see %s' % (
        self.name, timeout, self.log_path))

  def _is_ready(self):
    if self.log_path:
      with open(self.log_path, 'rb') as f:
        return self.ready(f.read().decode('utf-8', 'replace'))
    return self.ready('')

  def stop(self):
    stop_pids([self.proc.pid] + _children(self.proc.pid) if self.proc else
              self.pids)
    if self.proc:
      try:
        self.proc.wait(10)
      except subprocess.TimeoutExpired:
        pass


class PubSubEmulator(Emulator):
  """Google's official Pub/Sub emulator, as `gcloud beta emulators pubsub start`."""
  name = 'pubsub'

  def __init__(self, port=None, log_path=None, project=PROJECT):
    super().__init__(port, log_path)
    self.project = project
    if not log_path:
      raise ValueError('the Pub/Sub emulator is awaited through its log')

  def command(self):
    if not shutil.which('gcloud'):
      raise EmulatorError(
          'gcloud is not installed: the Pub/Sub emulator ships with the Google '
          'Cloud SDK (gcloud components install pubsub-emulator beta)')
    if not shutil.which('java'):
      raise EmulatorError('java is not installed: the Pub/Sub emulator needs '
                          'a Java 11+ runtime (apt-get install openjdk-17-jre)')
    return ['gcloud', 'beta', 'emulators', 'pubsub', 'start',
            '--host-port=%s' % self.host, '--project=%s' % self.project]

  def ready(self, log_text):
    # A taken port makes it log BindException and hang, not exit.
    if 'BindException' in log_text:
      raise EmulatorError('port %d is taken (see %s)' % (self.port,
                                                        self.log_path))
    return 'Server started' in log_text

  def env(self):
    return {
        'PUBSUB_EMULATOR_HOST': self.host, 'PUBSUB_PROJECT_ID': self.project,
        # What `gcloud pubsub ...` needs to reach the emulator.
        'CLOUDSDK_API_ENDPOINT_OVERRIDES_PUBSUB': 'http://%s/' % self.host,
        'CLOUDSDK_AUTH_DISABLE_CREDENTIALS': 'true',
        'CLOUDSDK_CORE_PROJECT': self.project,
    }


def _http_ok(url):
  try:
    with urllib.request.urlopen(url, timeout=0.5) as response:
      return response.status == 200
  except OSError:
    return False


class GcsEmulator(Emulator):
  """gcp-storage-emulator (PyPI) with one bucket: on disk in ``data_dir``
  (where the BigQuery emulator's load jobs read it), else in memory."""
  name = 'gcs'

  def __init__(self, port=None, log_path=None, bucket=BUCKET, data_dir=None):
    super().__init__(port, log_path)
    self.bucket = bucket
    self.data_dir = data_dir

  def process_env(self):
    if not self.data_dir:
      return {}
    os.makedirs(self.data_dir, exist_ok=True)
    # Objects at DATA_DIR/BUCKET/PATH: no extra folder level.
    return {'STORAGE_BASE': os.path.abspath(self.data_dir), 'STORAGE_DIR': ''}

  def command(self):
    exe = os.path.join(os.path.dirname(sys.executable), 'gcp-storage-emulator')
    if not os.path.exists(exe):
      exe = shutil.which('gcp-storage-emulator')
    if not exe:
      raise EmulatorError('gcp-storage-emulator is not installed '
                          '(pip install -r requirements-test.txt)')
    return [exe, 'start', '--host', '127.0.0.1', '--port', str(self.port),
            '--default-bucket', self.bucket] + (
                [] if self.data_dir else ['--in-memory'])

  def ready(self, _):
    try:
      with socket.create_connection(('127.0.0.1', self.port), timeout=0.5):
        return True
    except OSError:
      return False

  def env(self):
    return {'STORAGE_EMULATOR_HOST': 'http://%s' % self.host}


class BigQueryEmulator(Emulator):
  """bqemulator (PyPI; REST + Storage gRPC on DuckDB) from its own venv.

  Its HOME is the venv's private home, where run.sh installed DuckDB's
  spatial and avro extensions from PyPI (offline it would die downloading
  them); load jobs read gs:// objects from ``gcs_root`` on disk.
  """
  name = 'bigquery'

  def __init__(self, port=None, log_path=None, project=PROJECT, gcs_root=None,
               venv=None):
    super().__init__(port, log_path)
    self.project = project
    self.grpc_port = free_port()
    self.gcs_root = gcs_root
    self.venv = venv or BQEMULATOR_VENV

  def command(self):
    exe = os.path.join(self.venv, 'bin', 'bqemulator')
    if not os.path.exists(exe):
      raise EmulatorError(
          'bqemulator is not installed in %s: ./run.sh installs it (./run.sh '
          'emulators start, ./run.sh test)' % self.venv)
    return [exe, 'start', '--rest-port', str(self.port), '--grpc-port',
            str(self.grpc_port), '--project', self.project, '--log-level',
            'warning']

  def process_env(self):
    env = {'HOME': os.path.join(self.venv, 'home')}
    if self.gcs_root:
      env['BQEMU_GCS_LOCAL_ROOT'] = os.path.abspath(self.gcs_root)
    return env

  def ready(self, _):
    return _http_ok('http://%s/healthz' % self.host)

  def env(self):
    return {'BIGQUERY_EMULATOR_HOST': 'http://%s' % self.host}


def stop_pids(pids, grace=5.0):
  """SIGTERM, then SIGKILL what is left after ``grace`` seconds."""
  alive = []
  for pid in pids:
    try:
      os.kill(pid, signal.SIGTERM)
      alive.append(pid)
    except ProcessLookupError:
      pass
  deadline = time.monotonic() + grace
  while alive and time.monotonic() < deadline:
    alive = [p for p in alive if _alive(p)]
    time.sleep(0.1)
  for pid in alive:
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass


def _alive(pid):
  try:
    waited, _ = os.waitpid(pid, os.WNOHANG)
    if waited:
      return False
  except ChildProcessError:
    pass
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:
    with open('/proc/%d/stat' % pid) as f:
      return f.read().split(')')[-1].split()[0] != 'Z'
  except OSError:
    return False


def _state_file(state):
  return os.path.join(state, 'emulators.json')


def start(state):
  if os.path.exists(_state_file(state)):
    status_ = status(state)
    if all(s['running'] for s in status_.values()):
      return status_
    stop(state)
  os.makedirs(state, exist_ok=True)
  gcs_root = os.path.join(state, 'gcs-data')
  shutil.rmtree(gcs_root, ignore_errors=True)  # as the others: fresh state
  pubsub = PubSubEmulator(log_path=os.path.join(state, 'pubsub.log'))
  gcs = GcsEmulator(log_path=os.path.join(state, 'gcs.log'), data_dir=gcs_root)
  bigquery = BigQueryEmulator(log_path=os.path.join(state, 'bigquery.log'),
                              gcs_root=gcs_root)
  started = []
  try:
    for emulator in (pubsub, gcs, bigquery):
      emulator.start()
      started.append(emulator)
  except Exception:
    for emulator in started:
      emulator.stop()
    raise
  record = {e.name: {'pids': e.pids, 'env': e.env(), 'log': e.log_path}
            for e in started}
  with open(_state_file(state), 'w') as f:
    json.dump(record, f, indent=2)
  return status(state)


def status(state):
  try:
    with open(_state_file(state)) as f:
      record = json.load(f)
  except OSError:
    return {}
  for entry in record.values():
    entry['running'] = any(_alive(p) for p in entry['pids'])
  return record


def stop(state):
  record = status(state)
  for entry in record.values():
    stop_pids(entry['pids'])
  if os.path.exists(_state_file(state)):
    os.remove(_state_file(state))
  return record


def make_dataset(state, spec):
  """Makes dataset ``spec`` (PROJECT:DATASET or PROJECT.DATASET) on the
  running BigQuery emulator; one line, and exit 1, when it cannot."""
  import re as _re
  match = _re.fullmatch(r'([a-z][a-z0-9-]{4,28}[a-z0-9])[:.]([A-Za-z0-9_]{1,1024})',
                        spec or '')
  if not match:
    print('emulators: error: dataset: give PROJECT:DATASET, not %r' % (
        spec or ''), file=sys.stderr)
    return 2
  entry = status(state).get('bigquery')
  if not entry or not entry['running']:
    print('emulators: error: the BigQuery emulator is not running '
          '(./run.sh emulators start)', file=sys.stderr)
    return 1
  os.environ.update(entry['env'])
  from pipelines import emulator_clients
  client = emulator_clients.bigquery_client(match.group(1))
  client.create_dataset('%s.%s' % match.groups(), exists_ok=True)
  print('dataset %s:%s on the BigQuery emulator' % match.groups())
  return 0


def main(argv=None):
  parser = argparse.ArgumentParser(prog='emulators', description=__doc__)
  parser.add_argument('action',
                      choices=['start', 'stop', 'status', 'env', 'dataset'])
  parser.add_argument('dataset', nargs='?', metavar='PROJECT:DATASET',
                      help='dataset: the BigQuery dataset to make on the '
                      'running emulator')
  parser.add_argument('--state', default=DEFAULT_STATE)
  args = parser.parse_args(argv)
  if args.action == 'dataset':
    return make_dataset(args.state, args.dataset)
  try:
    if args.action == 'start':
      record = start(args.state)
    elif args.action == 'stop':
      record = stop(args.state)
      for name in record:
        print('stopped %s' % name)
      return 0
    else:
      record = status(args.state)
  except EmulatorError as e:
    print('emulators: error: %s' % e, file=sys.stderr)
    return 1
  if args.action == 'env':
    if record:
      print('export GOOGLE_CLOUD_PROJECT=%s' % PROJECT)
    for entry in record.values():
      for key, value in entry['env'].items():
        print('export %s=%s' % (key, value))
    return 0 if record else 1
  if not record:
    print('no emulators running (./run.sh emulators start)')
    return 1 if args.action == 'status' else 0
  for name, entry in record.items():
    print('%-8s %-8s %s  pids %s  log %s' % (
        name, 'running' if entry['running'] else 'DEAD',
        '%s=%s' % next(iter(entry['env'].items())),
        ','.join(map(str, entry['pids'])), entry['log']))
  return 0


if __name__ == '__main__':
  sys.exit(main())
