"""The streaming half of ./run.sh demo, on the running local emulators:

topic and subscription made, main.py user_signin started on the local runner,
messages published (some of every bad kind), wait until rows + dead letters
account for all of them, SIGTERM, then counts per table and three dead
letters straight from the DuckDB file.
"""

import argparse
import os
import signal
import subprocess
import sys
import time

import duckdb

from tools import publish_signins
from tools import status as status_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOW_SECONDS = 5  # short windows, so that some close during the demo


def show_tables(path):
  con = duckdb.connect(path, read_only=True)
  try:
    print('\nrows per table (%s):' % path)
    for table in ('signins', 'signin_errors', 'signin_counts'):
      print('  %-14s %6d' % (table, con.execute(
          'SELECT count(*) FROM %s' % table).fetchone()[0]))
    print('\ndead letters by reason:')
    for reason, n in con.execute('SELECT reason, count(*) FROM signin_errors '
                                 'GROUP BY 1 ORDER BY 1').fetchall():
      print('  %-18s %4d' % (reason, n))
    print('\nthree dead letters (three reasons):')
    for row in con.execute(
        'SELECT message_id, reason, errorMessage, left(payloadString, 60) '
        'FROM signin_errors QUALIFY row_number() OVER (PARTITION BY reason '
        'ORDER BY message_id) = 1 ORDER BY reason DESC LIMIT 3').fetchall():
      print('  id %s  %s: %s\n      payload %r' % row)
  finally:
    con.close()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--count', type=int, default=1000)
  parser.add_argument('--warehouse', default=os.path.join(
      ROOT, 'output', 'demo', 'warehouse.duckdb'))
  parser.add_argument('--timeout', type=float, default=90)
  args = parser.parse_args(argv)
  project = os.environ.get('PUBSUB_PROJECT_ID', 'local-project')
  topic, sub, max_bytes = 'signins', 'signins-demo', 4096
  os.makedirs(os.path.dirname(args.warehouse), exist_ok=True)
  for path in (args.warehouse, args.warehouse + '.wal'):
    if os.path.exists(path):
      os.remove(path)
  status_path = os.path.join(os.path.dirname(args.warehouse), 'status.json')
  publish_signins.publish(project, topic, 0, subscription=sub)  # topic + sub
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'user_signin',
       '--input_subscription', 'projects/%s/subscriptions/%s' % (project, sub),
       '--warehouse', args.warehouse, '--max_message_bytes', str(max_bytes),
       '--window_seconds', str(WINDOW_SECONDS), '--status_file', status_path,
       '--progress_seconds', '1'], cwd=ROOT)
  try:
    started = time.monotonic()
    n, ids, kinds = publish_signins.publish(
        project, topic, args.count, bad_fraction=0.1,
        max_message_bytes=max_bytes)
    print('published %d messages (%s); ids %s..%s' % (
        n, ', '.join('%s=%d' % kv for kv in sorted(kinds.items())),
        ids[0] if ids else '-', ids[-1] if ids else '-'), flush=True)
    running = lambda: proc.poll() is None  # noqa: E731
    status, _ = status_file.wait_for(
        status_path, lambda s: s.get('stored_total', 0) >= n, running,
        args.timeout)
    accounted = status.get('stored_total', 0)
    print('stored %d of %d after %.1f s: %s' % (
        accounted, n, time.monotonic() - started,
        'every message accounted for' if accounted == n else 'MISSING SOME'),
        flush=True)
    # Event-time windows fire once the watermark (now, locally) passes them.
    status_file.wait_for(status_path, lambda s: s.get('count_rows', 0) > 0,
                         running, 3 * WINDOW_SECONDS)
  finally:
    if proc.poll() is None:
      proc.send_signal(signal.SIGTERM)
    proc.wait(60)
  show_tables(args.warehouse)
  return 0 if accounted == n and proc.returncode == 0 else 1


if __name__ == '__main__':
  sys.exit(main())
