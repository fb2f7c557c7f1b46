"""The streaming half of ./run.sh demo, on the running local emulators.

Twice, once into the local DuckDB warehouse and once into the local BigQuery
emulator (the graph Dataflow runs, with Beam's WriteToBigQuery): a topic and
subscription made, main.py user_signin started on the local runner, messages
published (some of every bad kind), the tables queried while the stream runs
until rows + dead letters account for all of them, SIGTERM, then counts per
table and three dead letters. Then a short stream of Avro sign-ins under
the shipped topic schema (data/signin.avsc), in both of Pub/Sub's
encodings, into a table derived from the schema.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

from tools import emulators
from tools import publish_signins
from tools import status as status_file
from storage.duckdb_files import wait_to_read

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW_SECONDS = 5  # short windows, so that some close during the demo
MAX_BYTES = 4096
TABLES = ('signins', 'signin_errors', 'signin_counts')

# The same questions for both warehouses; {t} is a table of TABLES.
COUNT_SQL = 'SELECT count(*) FROM {signins}'
REASONS_SQL = ('SELECT reason, count(*) FROM {signin_errors} GROUP BY 1 '
               'ORDER BY 1')
THREE_DEAD_SQL = (
    'SELECT message_id, reason, errorMessage, substr(payloadString, 1, 60) '
    'FROM {signin_errors} QUALIFY row_number() OVER (PARTITION BY reason '
    'ORDER BY message_id) = 1 ORDER BY reason DESC LIMIT 3')


class DuckDBTables(object):
  """The local warehouse file, opened read-only for each question."""
  def __init__(self, path):
    self.path = path
    self.names = dict({t: t for t in TABLES}, exact_counts='signin_counts')
    self.flags = ['--warehouse', path]
    self.where = path

  def query(self, sql):
    # As main.py query does: the running pipeline releases the file for us.
    with wait_to_read(self.path) as con:
      return con.execute(sql.format(**self.names)).fetchall()


class BigQueryTables(object):
  """Tables in the BigQuery emulator, queried with google-cloud-bigquery."""
  def __init__(self, project, dataset):
    from pipelines import emulator_clients
    self.client = emulator_clients.bigquery_client(project)
    self.client.create_dataset(dataset, exists_ok=True)
    for table in ('signins', 'signins_error_records', 'signins_counts'):
      self.client.delete_table('%s.%s' % (dataset, table), not_found_ok=True)
    self.names = {
        'signins': '%s.signins' % dataset,
        'signin_errors': '%s.signins_error_records' % dataset,
        'signin_counts': '%s.signins_counts' % dataset,
        'exact_counts': '%s.signins_counts_exact' % dataset}
    self.flags = ['--output_table', '%s:%s.signins' % (project, dataset),
                  '--warehouse', os.path.join(ROOT, 'output', 'demo',
                                              'bigquery-deliveries.duckdb')]
    self.where = 'BigQuery emulator, dataset %s' % dataset

  def query(self, sql):
    return [tuple(r.values()) for r in
            self.client.query(sql.format(**self.names)).result()]


def show_tables(tables):
  print('\nrows per table (%s):' % tables.where)
  for table in TABLES:
    print('  %-30s %6d' % (tables.names[table], tables.query(
        'SELECT count(*) FROM %s' % tables.names[table])[0][0]))
  counted = tables.query('SELECT coalesce(sum(signins), 0) FROM {exact_counts}')[0][0]
  rows = tables.query(COUNT_SQL)[0][0]
  print('\nsign-ins counted per user and window (%s): %d, %s' % (
      tables.names['exact_counts'], counted,
      'equal to the rows' if counted == rows else 'NOT EQUAL to the %d rows' % rows))
  print('\ndead letters by reason:')
  for reason, n in tables.query(REASONS_SQL):
    print('  %-18s %4d' % (reason, n))
  print('\nthree dead letters (three reasons):')
  for row in tables.query(THREE_DEAD_SQL):
    print('  id %s  %s: %s\n      payload %r' % row)


def start_archive(project, topic, directory, status_path):
  """pubsub_to_gcs on a second subscription of ``topic``, into
  ``directory`` (the GCS emulator); returns the process."""
  from google.cloud import pubsub_v1
  subscriber = pubsub_v1.SubscriberClient()
  sub = subscriber.subscription_path(project, topic + '-archive-demo')
  try:
    subscriber.delete_subscription(subscription=sub)
  except Exception:  # pylint: disable=broad-except
    pass  # a first run
  subscriber.create_subscription(name=sub, topic=pubsub_v1.PublisherClient(
      ).topic_path(project, topic))
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'pubsub_to_gcs',
       '--input_subscription', sub, '--output_directory', directory,
       '--warehouse', os.path.join(ROOT, 'output', 'demo',
                                   'archive-deliveries.duckdb'),
       '--status_file', status_path, '--progress_seconds', '1',
       '--num_shards', '1'], cwd=ROOT,  # closed windows: one file each
      stdout=subprocess.DEVNULL)
  status_file.wait_for(status_path, lambda s: 'messages_in' in s,
                       lambda: proc.poll() is None, 60)
  return proc


def replay_archive(directory, live):
  """The archive replayed into a fresh warehouse: the same counts as live."""
  replayed = os.path.join(ROOT, 'output', 'demo', 'replayed.duckdb')
  for path in (replayed, replayed + '.wal'):
    if os.path.exists(path):
      os.remove(path)
  print('\n-- the archive (%s) replayed into %s' % (directory, replayed),
        flush=True)
  done = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'user_signin',
       '--input_file', directory + '/**', '--warehouse', replayed,
       '--window_seconds', str(WINDOW_SECONDS), '--max_message_bytes',
       str(MAX_BYTES), '--progress_seconds', '1'], cwd=ROOT)
  if done.returncode != 0:
    return False
  again = DuckDBTables(replayed)
  same = True
  for what, sql in (('rows', COUNT_SQL), ('dead letters', 'SELECT count(*) '
                                          'FROM {signin_errors}'),
                    ('counted sign-ins', 'SELECT coalesce(sum(signins), 0) '
                     'FROM {signin_counts}')):
    a, b = live.query(sql)[0][0], again.query(sql)[0][0]
    same &= a == b
    print('  %-18s live %5d  replayed %5d  %s' % (
        what, a, b, 'same' if a == b else 'DIFFERENT'))
  return same


def run_stream(tables, project, topic, sub, count, timeout, status_path,
               archive_to=None):
  """One stream into ``tables`` (and, with ``archive_to``, archived there
  too); returns True when every message is stored (and the archive replays
  to the same counts)."""
  publish_signins.publish(project, topic, 0, subscription=sub)  # topic + sub
  if os.path.exists(status_path):
    os.remove(status_path)
  archiver = archive_to and start_archive(
      project, topic, archive_to, status_path + '.archive.json')
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'user_signin',
       '--input_subscription', 'projects/%s/subscriptions/%s' % (project, sub),
       '--max_message_bytes', str(MAX_BYTES), '--window_seconds',
       str(WINDOW_SECONDS), '--status_file', status_path,
       '--progress_seconds', '1'] + tables.flags, cwd=ROOT)
  accounted = 0
  try:
    status_file.wait_for(status_path, lambda s: 'messages_in' in s,
                         lambda: proc.poll() is None, 60)  # tables are made
    started = time.monotonic()
    n, ids, kinds = publish_signins.publish(
        project, topic, count, bad_fraction=0.1, max_message_bytes=MAX_BYTES)
    print('published %d messages (%s); ids %s..%s' % (
        n, ', '.join('%s=%d' % kv for kv in sorted(kinds.items())),
        ids[0] if ids else '-', ids[-1] if ids else '-'), flush=True)
    running = lambda: proc.poll() is None  # noqa: E731
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
      # Queried while the stream runs, from this (another) process.
      rows = tables.query(COUNT_SQL)[0][0]
      dead = sum(n for _, n in tables.query(REASONS_SQL))
      print('  queried while streaming: %d rows + %d dead letters' % (
          rows, dead), flush=True)
      accounted = rows + dead
      if accounted >= n:
        break
      time.sleep(1)
    print('stored %d of %d after %.1f s: %s' % (
        accounted, n, time.monotonic() - started,
        'every message accounted for' if accounted == n else 'MISSING SOME'),
        flush=True)
    # Event-time windows fire once the watermark passes them (locally: now,
    # once Pub/Sub has had nothing waiting for a second).
    status_file.wait_for(status_path, lambda s: False, running,
                         WINDOW_SECONDS + 2)
    if archiver:
      status_file.wait_for(status_path + '.archive.json',
                           lambda s: s.get('stored_total', 0) >= n,
                           lambda: archiver.poll() is None, timeout)
  finally:
    for running_proc in (proc, archiver):
      if running_proc and running_proc.poll() is None:
        running_proc.send_signal(signal.SIGTERM)
      if running_proc:
        running_proc.wait(60)
  show_tables(tables)
  ok = accounted == n and proc.returncode == 0
  if archiver:
    ok &= archiver.returncode == 0 and replay_archive(archive_to, tables)
  return ok


def run_avro_stream(project, warehouse, status_path, count=20, timeout=60):
  """Avro sign-ins under the shipped data/signin.avsc, half in Pub/Sub's
  binary and half in its JSON encoding, with the schema attributes Pub/Sub
  sets, through pubsub_to_bigquery into a DuckDB table derived from the
  schema; returns True when every message is a row."""
  topic, sub = 'signins-avro', 'signins-avro-demo'
  publish_signins.publish(project, topic, 0, subscription=sub)
  for path in (warehouse, warehouse + '.wal', status_path):
    if os.path.exists(path):
      os.remove(path)
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'pubsub_to_bigquery',
       '--payload_format', 'avro', '--payload_schema',
       os.path.join(ROOT, 'data', 'signin.avsc'), '--write_metadata',
       '--input_subscription', 'projects/%s/subscriptions/%s' % (project, sub),
       '--warehouse', warehouse, '--status_file', status_path,
       '--progress_seconds', '1'], cwd=ROOT)
  try:
    status_file.wait_for(status_path, lambda s: 'messages_in' in s,
                         lambda: proc.poll() is None, 60)
    n = 0
    for encoding in ('binary', 'json'):
      n += publish_signins.publish(project, topic, count // 2, bad_fraction=0,
                                   fmt='avro', encoding=encoding)[0]
    print('published %d Avro sign-ins (half binary, half JSON encoding)' % n,
          flush=True)
    status_file.wait_for(status_path, lambda s: s.get('stored_total', 0) >= n,
                         lambda: proc.poll() is None, timeout)
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
    proc.wait(60)
  table = DuckDBTables(warehouse)
  rows = table.query('SELECT count(*) FROM signin')[0][0]
  print('\n%s, table signin (its columns from data/signin.avsc):' % warehouse)
  for userid, date, device, attributes in table.query(
      'SELECT userid, date, device, attributes FROM signin ORDER BY '
      'publish_time LIMIT 2'):
    print('  %s  %s  %s  %s' % (userid, date, device, attributes))
  print('  ... %d rows' % rows)
  return rows == n and proc.returncode == 0


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--count', type=int, default=1000)
  parser.add_argument('--warehouse', default=os.path.join(
      ROOT, 'output', 'demo', 'warehouse.duckdb'))
  parser.add_argument('--timeout', type=float, default=90)
  parser.add_argument('--only', choices=['duckdb', 'bigquery'])
  args = parser.parse_args(argv)
  project = os.environ.get('PUBSUB_PROJECT_ID', 'local-project')
  os.makedirs(os.path.dirname(args.warehouse), exist_ok=True)
  status_path = os.path.join(os.path.dirname(args.warehouse), 'status.json')
  ok = True
  if args.only in (None, 'duckdb'):
    print('\n-- into the local DuckDB warehouse (%s)' % args.warehouse)
    for path in (args.warehouse, args.warehouse + '.wal'):
      if os.path.exists(path):
        os.remove(path)
    bucket = os.environ.get('DEMO_BUCKET', emulators.BUCKET)
    archive_to = ('gs://%s/demo-archive-%d' % (bucket, int(time.time()))
                  if os.environ.get('STORAGE_EMULATOR_HOST') else
                  os.path.join(ROOT, 'output', 'demo', 'archive'))
    print('   and archived by pubsub_to_gcs to %s' % archive_to)
    ok &= run_stream(DuckDBTables(args.warehouse), project, 'signins',
                     'signins-demo', args.count, args.timeout, status_path,
                     archive_to=archive_to)
    print('\n-- Avro payloads under a topic schema, into a table derived from '
          'it')
    ok &= run_avro_stream(project, os.path.join(
        os.path.dirname(args.warehouse), 'avro.duckdb'), status_path)
  if args.only in (None, 'bigquery'):
    print('\n-- into local BigQuery (bqemulator at %s), through Beam\'s '
          'WriteToBigQuery' % os.environ.get('BIGQUERY_EMULATOR_HOST'))
    ok &= run_stream(BigQueryTables(project, 'demo'), project,
                     'signins-bq', 'signins-bq-demo', args.count, args.timeout,
                     status_path)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
