"""Streaming benchmark: messages per second through the whole user_signin
pipeline (parse, validate, DuckDB sinks, windowed counts) against a bare
ReadFromPubSub that only counts, on the same official Pub/Sub emulator, side
by side in one run; plus the per-message parse cost against bare json.loads.

    ./run.sh bench streaming [--messages 10000] [--repeat 3] [--write-readme]

After a warm-up run of each case (the emulator is a JVM), each round
pre-publishes the messages (10% bad, every kind) to a fresh subscription,
starts the pipeline process and times from the first message read to the
last one stored (rows + dead letters for ours, read for the bare one),
polling each process's status file (written every 0.1 s or less) every
0.05 s. Rounds alternate the order of the cases.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tools import emulators  # noqa: E402
from tools import publish_signins  # noqa: E402

MAX_BYTES = 4096
PROJECT = 'bench-project'
QUERY_SECONDS = []  # how long each main.py query took in the 'queried' case


POLL_SECONDS = 0.05


def poll(status_path, key, target, proc, timeout=600):
  """Returns (time of first message, time target reached)."""
  first = None
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      with open(proc.log_path) as f:
        raise RuntimeError('pipeline exited: %s' % f.read()[-2000:])
    try:
      with open(status_path) as f:
        status = json.load(f)
    except (OSError, ValueError):
      status = {}
    now = time.monotonic()
    if first is None and status.get('messages_in', 0) > 0:
      first = now
    if status.get(key, 0) >= target:
      return first, now
    time.sleep(POLL_SECONDS)
  raise RuntimeError('timed out; last status %s' % status)


CASES = {
    'bare': 'bare `ReadFromPubSub` + counting step',
    'beam_read': '`main.py user_signin --local_pubsub_reader beam`',
    'ack_after_commit': '`main.py user_signin` (default: ack-after-commit reader, DuckDB)',
    'unbounded': 'the same, read-ahead unbounded (`--max_in_flight 1000000000`)',
    'queried': 'the same as the default, `main.py query` every second meanwhile',
    'bigquery': 'the same into the BigQuery emulator (`--output_table`, Beam\'s `WriteToBigQuery`)',
}
BIGQUERY_DATASET = 'bench'


def command(name, subscription, status, db):
  if name == 'bare':
    return [sys.executable, os.path.join(HERE, 'bare_pubsub_read.py'),
            '--input_subscription', subscription, '--status_file', status]
  extra = {
      'beam_read': ['--local_pubsub_reader', 'beam'],
      'unbounded': ['--max_in_flight', '1000000000'],
      'bigquery': ['--output_table', '%s:%s.s_%s' % (
          PROJECT, BIGQUERY_DATASET, uuid.uuid4().hex[:8])],
  }.get(name, [])
  return [sys.executable, os.path.join(ROOT, 'main.py'), 'user_signin',
          '--input_subscription', subscription, '--warehouse', db,
          '--max_message_bytes', str(MAX_BYTES), '--status_file', status,
          '--progress_seconds', '0.1'] + extra


class QueryEverySecond(object):
  """A person's second terminal: main.py query on the warehouse every second."""
  def __init__(self, db):
    import threading
    self._db = db
    self._stop = threading.Event()
    self.answers = []
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()

  def _loop(self):
    while not self._stop.wait(1.0):
      if not os.path.exists(self._db):
        continue
      started = time.monotonic()
      subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), 'query',
                      '--warehouse', self._db, 'SELECT count(*) FROM signins'],
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=ROOT)
      self.answers.append(time.monotonic() - started)

  def stop(self):
    self._stop.set()
    self._thread.join()


def run_case(name, project, count, tmp, rate=None):
  """Messages/s from first read to last stored; with ``rate``, messages are
  published at that rate while the pipeline runs and the publish-to-commit
  latencies (seconds) of the stored rows come back too."""
  topic, sub = 'bench-%s' % uuid.uuid4().hex[:8], 'sub-%s' % uuid.uuid4().hex[:8]
  subscription = 'projects/%s/subscriptions/%s' % (project, sub)
  status = os.path.join(tmp, '%s.json' % sub)
  db = os.path.join(tmp, '%s.duckdb' % sub)
  publish_signins.publish(project, topic, 0 if rate else count,
                          bad_fraction=0.1, subscription=sub,
                          max_message_bytes=MAX_BYTES)
  key = 'messages_in' if name == 'bare' else 'stored_total'
  # Logs go to a file: an unread pipe fills up and blocks the process.
  log = open(os.path.join(tmp, '%s.log' % sub), 'w')
  proc = subprocess.Popen(command(name, subscription, status, db),
                          stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
  proc.log_path = log.name
  querying = QueryEverySecond(db) if name == 'queried' else None
  try:
    if rate:
      while not os.path.exists(status):
        time.sleep(0.05)
      publish_signins.publish(project, topic, count, bad_fraction=0.1,
                              rate=rate, max_message_bytes=MAX_BYTES)
    first, done = poll(status, key, count, proc)
  finally:
    if querying:
      querying.stop()
      QUERY_SECONDS.extend(querying.answers)
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(30)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()
  if not rate:
    # Both ends are seen by polling: never less than one poll apart.
    return count / max(done - first, POLL_SECONDS)
  import duckdb
  con = duckdb.connect(db, read_only=True)
  try:
    return con.execute(
        'SELECT quantile_cont(epoch(ingested_at) - epoch(publish_time), [0.5, 0.99]) '
        'FROM signins').fetchone()[0]
  finally:
    con.close()


def parse_cost(n=20000):
  """Microseconds per message: our parse+validate against bare json.loads."""
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from transforms import signin_messages
  payloads = [data for data, _ in publish_signins.messages(
      n, 0.0, None, MAX_BYTES)]
  messages = [PubsubMessage(p, {}, message_id=str(i))
              for i, p in enumerate(payloads)]
  fn = signin_messages.ParseSigninFn()
  fn.setup()
  ours = min(timeit.repeat(
      lambda: [list(fn.process(m)) for m in messages], number=1, repeat=5))
  bare = min(timeit.repeat(
      lambda: [json.loads(p) for p in payloads], number=1, repeat=5))
  return ours / n * 1e6, bare / n * 1e6


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--messages', type=int, default=10000)
  parser.add_argument('--repeat', type=int, default=3)
  parser.add_argument('--latency-rate', type=float, default=150,
                      help='msgs/s published while measuring latency (below '
                      'what every case sustains)')
  parser.add_argument('--latency-messages', type=int, default=1500)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  # SIGTERM unwinds like Ctrl-C, so the emulator is stopped on the way out.
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  os.environ.update({'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': '127.0.0.1:9',
                     'GCE_METADATA_IP': '127.0.0.1:9',
                     'PYTHONPATH': ROOT})
  with tempfile.TemporaryDirectory() as tmp:
    emulator = emulators.PubSubEmulator(
        log_path=os.path.join(tmp, 'pubsub.log'), project=PROJECT)
    emulator.start()
    os.environ.update(emulator.env())
    bigquery = emulators.BigQueryEmulator(
        log_path=os.path.join(tmp, 'bigquery.log'), project=PROJECT).start()
    os.environ.update(bigquery.env(), GOOGLE_CLOUD_PROJECT=PROJECT)
    from pipelines import emulator_clients as clients
    clients.bigquery_client(PROJECT).create_dataset(BIGQUERY_DATASET)
    rates = {name: [] for name in CASES}
    latency = {}
    try:
      # The emulator is a JVM: warm it up so that no case pays for its JIT.
      for name in CASES:
        run_case(name, PROJECT, args.messages // 2, tmp)
      for round_ in range(args.repeat):
        order = list(rates) if round_ % 2 == 0 else list(reversed(rates))
        for name in order:
          rate = run_case(name, PROJECT, args.messages, tmp)
          rates[name].append(rate)
          print('round %d  %-16s %7.0f msgs/s' % (round_ + 1, name, rate),
                flush=True)
      for name in ('beam_read', 'ack_after_commit'):
        latency[name] = run_case(name, PROJECT, args.latency_messages,
                                 tmp, rate=args.latency_rate)
        print('latency %-16s median %.3f s, p99 %.3f s' % (
            name, latency[name][0], latency[name][1]), flush=True)
    finally:
      emulator.stop()
      bigquery.stop()
  ours_us, bare_us = parse_cost()
  medians = {name: statistics.median(r) for name, r in rates.items()}
  bare = medians['bare']
  rows = ['| case | median msgs/s | vs bare read | publish-to-commit latency at %d msgs/s: median / p99 |'
          % args.latency_rate, '| --- | ---: | ---: | ---: |']
  for name, label in CASES.items():
    lat = latency.get(name)
    rows.append('| %s | %.0f | %.2fx | %s |' % (
        label, medians[name], medians[name] / bare,
        '%.3f s / %.3f s' % tuple(lat) if lat else '-'))
  report = '\n'.join(rows + [
      '',
      'Whole pipeline with the ack-after-commit reader: %.1fx Beam\'s bare '
      'read, %.1fx the same pipeline on Beam\'s read.' % (
          medians['ack_after_commit'] / bare,
          medians['ack_after_commit'] / medians['beam_read']),
      'Read-ahead bound (`--max_in_flight` 5,000) against unbounded: %.2fx; '
      'with `main.py query` every second: %.2fx the same run without '
      '(queries answered in %.2f s median, %.2f s at most).' % (
          medians['ack_after_commit'] / medians['unbounded'],
          medians['queried'] / medians['ack_after_commit'],
          statistics.median(QUERY_SECONDS or [0]), max(QUERY_SECONDS or [0])),
      'Into BigQuery (emulator) through Beam\'s streaming inserts: %.0f '
      'msgs/s, %.2fx the DuckDB path.' % (
          medians['bigquery'], medians['bigquery'] / medians['ack_after_commit']),
      'Parse + validate: %.1f us per message; bare `json.loads`: %.1f us '
      '(%.1fx).' % (ours_us, bare_us, ours_us / bare_us),
  ])
  print('\n' + report)
  if args.write_readme:
    from results import replace_section
    replace_section('streaming', 'Last run %s: `./run.sh bench streaming '
                    '--messages %d --repeat %d --write-readme`\n\n%s\n' % (
                        time.strftime('%Y-%m-%d'), args.messages, args.repeat,
                        report))


if __name__ == '__main__':
  main()
