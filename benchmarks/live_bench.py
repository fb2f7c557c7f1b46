"""Live streaming benchmark: traffic as it arrives in production, not a
pre-published backlog.

    ./run.sh bench live [--rate 2000] [--seconds 60] [--users 5000]
        [--variants 16,0] [--write-readme]

For each variant of ``--count_shards`` (side by side in one run, on one
Pub/Sub emulator, order alternating with --repeat), main.py user_signin runs
on a fresh subscription and warehouse while sign-ins with date = now from
``--users`` distinct users (10% bad) are published at ``--rate`` for
``--seconds``. Reported: how far behind the pipeline is at the last publish
(published - stored), how long it then takes to store everything, the
publish-to-commit latency p50/p99, the pipeline's RSS at start and end, and
whether the windowed counts equal counting the rows with SQL for every
(user, window) that closed.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from tools import emulators  # noqa: E402
from tools import publish_signins  # noqa: E402
from tools import status as status_file  # noqa: E402

PROJECT = 'bench-project'
MAX_BYTES = 4096
WINDOW_SECONDS = 60


def rss_mib(pid):
  try:
    with open('/proc/%d/status' % pid) as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return 0.0


def run_variant(shards, args, tmp):
  topic, sub = 'live-%s' % uuid.uuid4().hex[:8], 'live-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(PROJECT, topic, 0, subscription=sub)
  status = os.path.join(tmp, sub + '.json')
  db = os.path.join(tmp, sub + '.duckdb')
  log = open(os.path.join(tmp, sub + '.log'), 'w')
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'user_signin',
       '--input_subscription', 'projects/%s/subscriptions/%s' % (PROJECT, sub),
       '--warehouse', db, '--max_message_bytes', str(MAX_BYTES),
       '--window_seconds', str(WINDOW_SECONDS), '--allowed_lateness_seconds',
       '300', '--count_shards', str(shards), '--status_file', status,
       '--progress_seconds', '0.5'],
      stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT)
  try:
    status_file.wait_for(status, lambda s: 'messages_in' in s,
                         lambda: proc.poll() is None, 120)
    rss_start = rss_mib(proc.pid)
    published = []
    publisher = threading.Thread(target=lambda: published.append(
        publish_signins.publish(
            PROJECT, topic, int(args.rate * args.seconds), bad_fraction=0.1,
            rate=args.rate, max_message_bytes=MAX_BYTES, users=args.users)))
    started = time.monotonic()
    publisher.start()
    publisher.join()
    last_publish = time.monotonic()
    n = published[0][0]
    behind = n - status_file.read(status).get('stored_total', 0)
    done, ok = status_file.wait_for(
        status, lambda s: s.get('stored_total', 0) >= n,
        lambda: proc.poll() is None, args.catch_up_timeout, interval=0.1)
    catch_up = time.monotonic() - last_publish if ok else None
    # Let the last full windows fire on time before checking the counts.
    time.sleep(3)
    rss_end = rss_mib(proc.pid)
  finally:
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
    log.close()
  import duckdb
  con = duckdb.connect(db, read_only=True)
  try:
    p50, p99 = con.execute(
        'SELECT quantile_cont(epoch(ingested_at) - epoch(publish_time), '
        '[0.5, 0.99]) FROM signins').fetchone()[0]
    # Windows that fired (on time) before the stop: counts == rows.
    mismatches, windows = con.execute('''
        WITH fired AS (SELECT window_start, window_end, userid, signins
                       FROM signin_counts),
             counted AS (SELECT time_bucket(INTERVAL %d SECOND, date) AS ws,
                                userid, count(*) AS n FROM signins GROUP BY 1, 2)
        SELECT count(*) FILTER (WHERE n IS DISTINCT FROM signins),
               count(DISTINCT window_start)
        FROM fired LEFT JOIN counted ON ws = window_start
                                    AND counted.userid = fired.userid''' %
                                      WINDOW_SECONDS).fetchone()
    stored = con.execute('SELECT (SELECT count(*) FROM signins) + '
                         '(SELECT count(*) FROM signin_errors)').fetchone()[0]
  finally:
    con.close()
  return {
      'offered': n / (last_publish - started), 'behind': behind,
      'catch_up': catch_up, 'p50': p50, 'p99': p99, 'rss_start': rss_start,
      'rss_end': rss_end, 'count_mismatches': mismatches,
      'windows_checked': windows, 'stored': stored, 'published': n,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=2000)
  parser.add_argument('--seconds', type=float, default=60)
  parser.add_argument('--users', type=int, default=5000)
  parser.add_argument('--variants', default='16,0',
                      help='--count_shards values to compare (0: a key per user)')
  parser.add_argument('--repeat', type=int, default=1)
  parser.add_argument('--catch-up-timeout', type=float, default=600)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  os.environ.update({'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': '127.0.0.1:9',
                     'GCE_METADATA_IP': '127.0.0.1:9', 'PYTHONPATH': ROOT})
  variants = [int(v) for v in args.variants.split(',')]
  results = {v: [] for v in variants}
  with tempfile.TemporaryDirectory() as tmp:
    emulator = emulators.PubSubEmulator(
        log_path=os.path.join(tmp, 'pubsub.log'), project=PROJECT)
    emulator.start()
    os.environ.update(emulator.env())
    try:
      for round_ in range(args.repeat):
        for shards in (variants if round_ % 2 == 0 else variants[::-1]):
          r = run_variant(shards, args, tmp)
          results[shards].append(r)
          print('count_shards %-3d %s' % (shards, ', '.join(
              '%s=%s' % (k, round(v, 3) if isinstance(v, float) else v)
              for k, v in r.items())), flush=True)
    finally:
      emulator.stop()
  rows = ['| `--count_shards` | offered msgs/s | behind at last publish | '
          'catch-up | latency p50 / p99 | RSS start -> end | counts == SQL '
          '(windows) | stored / published |',
          '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
  for shards, runs in results.items():
    for r in runs:
      rows.append('| %s | %.0f | %d | %s | %.2f s / %.2f s | %.0f -> %.0f MiB | '
                  '%s (%d) | %d / %d |' % (
                      shards if shards else '0 (a key per user)', r['offered'],
                      r['behind'], '%.1f s' % r['catch_up'] if r['catch_up']
                      is not None else 'not within %.0f s' % args.catch_up_timeout,
                      r['p50'], r['p99'], r['rss_start'], r['rss_end'],
                      'yes' if r['count_mismatches'] == 0 else
                      '%d differ' % r['count_mismatches'], r['windows_checked'],
                      r['stored'], r['published']))
  report = '\n'.join(rows)
  print('\n' + report)
  if args.write_readme:
    from results import replace_section
    replace_section('live', 'Last run %s: `./run.sh bench live --rate %g '
                    '--seconds %g --users %d --variants %s --repeat %d '
                    '--write-readme`\n\n%s\n' % (
                        time.strftime('%Y-%m-%d'), args.rate, args.seconds,
                        args.users, args.variants, args.repeat, report))


if __name__ == '__main__':
  main()
