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
import datetime
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
LATENESS_SECONDS = 300


def rss_mib(pid):
  try:
    with open('/proc/%d/status' % pid) as f:
      for line in f:
        if line.startswith('VmRSS:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return 0.0


class RssSampler(object):
  """The pipeline's RSS (MiB) every ``every`` seconds, in a thread."""
  def __init__(self, pid, every=2.0):
    self._pid, self._every = pid, every
    self._stop = threading.Event()
    self.samples = []  # (seconds since start, MiB)

  def start(self):
    started = time.monotonic()

    def loop():
      while True:
        self.samples.append((time.monotonic() - started, rss_mib(self._pid)))
        if self._stop.wait(self._every):
          return
    self._thread = threading.Thread(target=loop, daemon=True)
    self._thread.start()

  def stop(self):
    self._stop.set()
    if hasattr(self, '_thread'):
      self._thread.join()


def publish_backlog(topic, args):
  """``--backlog`` sign-ins published before the live traffic, their dates
  spread over the last ``--spread-minutes`` (so over that many windows)."""
  import random
  now = time.time()
  rng = random.Random(11)
  stamps = [now - rng.uniform(0, args.spread_minutes * 60)
            for _ in range(args.backlog)]
  dates = lambda i: datetime.datetime.fromtimestamp(  # noqa: E731
      stamps[i], datetime.timezone.utc).isoformat()
  publish_signins.publish(PROJECT, topic, args.backlog, bad_fraction=0.1,
                          date=dates, max_message_bytes=MAX_BYTES,
                          users=args.users)


# Issue 11's table: (case, what the issue measured, scenario flags).
ISSUE_CASES = [
    ('10,000 pre-published, 50 users, one window (the streaming benchmark)',
     '7,604 msgs/s', dict(backlog=10000, users=50, spread_minutes=0, seconds=0)),
    ('50,000 pre-published, 5,000 users, one window', '3,556-4,042 msgs/s',
     dict(backlog=50000, users=5000, spread_minutes=0, seconds=0)),
    ('50,000 pre-published, 5,000 users, dates over 10 minutes', '2,078 msgs/s',
     dict(backlog=50000, users=5000, spread_minutes=10, seconds=0)),
    ('live: 2,000 msgs/s for 60 s, 5,000 users', '~1,000 msgs/s, 60,200 behind',
     dict(backlog=0, users=5000, rate=2000, seconds=60)),
    ('live: 1,500 msgs/s for 200 s, 5,000 users',
     '~750 msgs/s while publishing', dict(backlog=0, users=5000, rate=1500,
                                          seconds=200)),
    ('live: 5,000 msgs/s for 60 s, 5,000 users (the target)', '-',
     dict(backlog=0, users=5000, rate=5000, seconds=60)),
]


def case_cell(r, timeout):
  """A case's result in one cell: backlogs by rate, live runs by lag."""
  if r['catch_up'] is None:
    return 'not caught up within %.0f s' % timeout
  if r['offered'] == 0:
    return '%.0f msgs/s' % r['stored_rate']
  return '%d behind at the last publish, caught up in %.1f s' % (
      r['behind'], r['catch_up'])


def run_issue_cases(args, tmp, code_variants):
  """Every case of ISSUE_CASES for every (label, shards, code), one table."""
  rows = ['| case | the issue | %s |' % ' | '.join(
      label for label, _, _ in code_variants),
          '| --- | --- |%s' % (' --- |' * len(code_variants))]
  for case, quoted, flags in ISSUE_CASES:
    cells = []
    for label, shards, code in code_variants:
      scenario = argparse.Namespace(**dict(vars(args), **flags))
      r = run_variant(shards, scenario, tmp, code)
      print('%s [%s] %s' % (case, label, r_line(r)), flush=True)
      cells.append('%s; counts %s (%d of %d totals from a late pane), '
                   '%d / %d stored' % (
                       case_cell(r, args.catch_up_timeout),
                       'exact' if r['count_mismatches'] == 0 else
                       '%d differ' % r['count_mismatches'], r['late_totals'],
                       r['totals'], r['stored'], r['published']))
    rows.append('| %s | %s | %s |' % (case, quoted, ' | '.join(cells)))
  return '\n'.join(rows)


def r_line(r):
  return ', '.join('%s=%s' % (k, round(v, 3) if isinstance(v, float) else
                              rss_text(v) if k == 'rss' else v)
                   for k, v in r.items())


def rss_text(samples):
  """'start -> max -> end MiB' (and every minute of a long run)."""
  if not samples:
    return '-'
  values = [mib for _, mib in samples]
  text = '%.0f -> max %.0f -> %.0f MiB' % (values[0], max(values), values[-1])
  if samples[-1][0] >= 300:
    per_minute = {}
    for t, mib in samples:
      per_minute.setdefault(int(t // 60), mib)
    text += ' (each minute: %s)' % ', '.join(
        '%.0f' % mib for _, mib in sorted(per_minute.items()))
  return text


def baseline_tree(ref, tmp):
  """A checkout of ``ref`` (git worktree, detached) to run side by side."""
  path = os.path.join(tmp, 'baseline')
  subprocess.run(['git', 'worktree', 'add', '--detach', '--force', path, ref],
                 cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  return path


def remove_baseline_tree(path):
  subprocess.run(['git', 'worktree', 'remove', '--force', path], cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_variant(shards, args, tmp, code=ROOT):
  """One run of main.py user_signin from ``code`` (this tree, or a baseline
  checkout); ``shards`` None runs without --count_shards."""
  topic, sub = 'live-%s' % uuid.uuid4().hex[:8], 'live-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(PROJECT, topic, 0, subscription=sub)
  status = os.path.join(tmp, sub + '.json')
  db = os.path.join(tmp, sub + '.duckdb')
  log = open(os.path.join(tmp, sub + '.log'), 'w')
  if args.backlog:  # pre-published: waiting when the pipeline starts
    publish_backlog(topic, args)
  shard_flags = [] if shards is None else ['--count_shards', str(shards)]
  proc = subprocess.Popen(
      [sys.executable, os.path.join(code, 'main.py'), 'user_signin',
       '--input_subscription', 'projects/%s/subscriptions/%s' % (PROJECT, sub),
       '--warehouse', db, '--max_message_bytes', str(MAX_BYTES),
       '--window_seconds', str(WINDOW_SECONDS), '--allowed_lateness_seconds',
       str(LATENESS_SECONDS), '--status_file', status,
       '--progress_seconds', '0.5'] + shard_flags + args.pipeline_flags.split(),
      stdout=subprocess.DEVNULL, stderr=log, cwd=code,
      env=dict(os.environ, PYTHONPATH=code))
  rss = RssSampler(proc.pid)
  try:
    status_file.wait_for(status, lambda s: 'messages_in' in s,
                         lambda: proc.poll() is None, 120)
    rss.start()
    ready = time.monotonic()
    published = []
    publisher = threading.Thread(target=lambda: published.append(
        publish_signins.publish(
            PROJECT, topic, int(args.rate * args.seconds), bad_fraction=0.1,
            rate=args.rate, max_message_bytes=MAX_BYTES, users=args.users)))
    started = time.monotonic()
    if args.seconds > 0:
      publisher.start()
      publisher.join()
    else:
      published.append((0, [], {}))
    last_publish = time.monotonic()
    n = published[0][0] + args.backlog
    behind = n - status_file.read(status).get('stored_total', 0)
    done, ok = status_file.wait_for(
        status, lambda s: s.get('stored_total', 0) >= n,
        lambda: proc.poll() is None, args.catch_up_timeout, interval=0.1)
    catch_up = time.monotonic() - last_publish if ok else None
    stored_rate = n / (time.monotonic() - ready) if ok else None
    # Let the last full windows fire on time before checking the counts.
    time.sleep(3)
    stopped = time.time()
  finally:
    rss.stop()
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
    # Every window that closed (its end passed) before the stop, and whose
    # lateness horizon (end + 300 s, in wall-clock time,
    # which is the local watermark) was still ahead when its last row was
    # stored must count exactly its rows. Others are left out: rows past the
    # horizon are not counted by design, unless they arrived before the
    # watermark first moved (the first bundle), which is on time in Beam.
    mismatches, windows = con.execute('''
        WITH counted AS (
               SELECT time_bucket(INTERVAL %(w)d SECOND, date) AS ws, userid,
                      count(*) AS n, max(ingested_at) AS last_in
               FROM signins GROUP BY 1, 2),
             judged AS (
               SELECT c.ws, c.n, s.signins,
                      CASE WHEN c.ws + INTERVAL %(h)d SECOND > c.last_in
                                                   + INTERVAL 2 SECOND
                            AND epoch(c.ws) + %(w)d < %(stopped)f - 2
                           THEN 'exact' END AS expect
               FROM counted c LEFT JOIN signin_counts s
                 ON s.window_start = c.ws AND s.userid = c.userid)
        SELECT count(*) FILTER (WHERE expect = 'exact' AND
                                      signins IS DISTINCT FROM n),
               count(DISTINCT ws) FILTER (WHERE expect IS NOT NULL)
        FROM judged''' % {'w': WINDOW_SECONDS, 'stopped': stopped,
                          'h': WINDOW_SECONDS + LATENESS_SECONDS}).fetchone()
    stored = con.execute('SELECT (SELECT count(*) FROM signins) + '
                         '(SELECT count(*) FROM signin_errors)').fetchone()[0]
    # (user, window) totals whose latest pane was a late firing: each late
    # element re-fires its shard's pane, so many late totals mean the
    # stream saw its own backlog as late data.
    late, totals = con.execute(
        "SELECT count(*) FILTER (WHERE pane_timing = 'LATE'), count(*) "
        'FROM signin_counts').fetchone()
  finally:
    con.close()
  return {
      'offered': (n - args.backlog) / max(last_publish - started, 1e-9),
      'stored_rate': stored_rate,
      'behind': behind, 'catch_up': catch_up, 'p50': p50, 'p99': p99,
      'rss': rss.samples, 'count_mismatches': mismatches,
      'windows_checked': windows, 'stored': stored, 'published': n,
      'late_totals': late, 'totals': totals,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rate', type=float, default=2000)
  parser.add_argument('--seconds', type=float, default=60)
  parser.add_argument('--users', type=int, default=5000)
  parser.add_argument('--variants', default='16,0',
                      help='--count_shards values to compare (0: a key per user)')
  parser.add_argument('--repeat', type=int, default=1)
  parser.add_argument('--backlog', type=int, default=0,
                      help='sign-ins published before the pipeline starts')
  parser.add_argument('--spread-minutes', type=float, default=10,
                      help='the backlog\'s dates spread over this many minutes')
  parser.add_argument('--pipeline-flags', default='',
                      help='more flags for main.py user_signin, one string')
  parser.add_argument('--section', default='live',
                      help='which results section of benchmarks/README.md')
  parser.add_argument('--catch-up-timeout', type=float, default=600)
  parser.add_argument('--baseline', default=None, metavar='GIT_REF',
                      help='also run the code of this commit (a git worktree), '
                      'side by side')
  parser.add_argument('--issue-cases', action='store_true',
                      help='run the cases of issue 11\'s table (backlogs and '
                      'live bursts) instead of one scenario; one table')
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
  os.environ.update({'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': '127.0.0.1:9',
                     'GCE_METADATA_IP': '127.0.0.1:9', 'PYTHONPATH': ROOT})
  variants = [int(v) for v in args.variants.split(',')]
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    emulator = emulators.PubSubEmulator(
        log_path=os.path.join(tmp, 'pubsub.log'), project=PROJECT)
    emulator.start()
    os.environ.update(emulator.env())
    baseline = baseline_tree(args.baseline, tmp) if args.baseline else None
    try:
      if args.issue_cases:
        code_variants = ([('baseline %s' % args.baseline, None, baseline)]
                         if baseline else []) + [
                             ('now (`--count_shards %d`)' % v, v, ROOT)
                             for v in variants]
        report = run_issue_cases(args, tmp, code_variants)
      else:
        # (label, shards, code): the baseline's code and ours alternate.
        cases = [('now', v, ROOT) for v in variants]
        if baseline:
          cases = [c for v in variants for c in (
              ('baseline %s' % args.baseline, v, baseline), ('now', v, ROOT))]
        for label, shards, _ in cases:
          results[(label, shards)] = []
        for round_ in range(args.repeat):
          for label, shards, code in (cases if round_ % 2 == 0 else cases[::-1]):
            r = run_variant(shards, args, tmp, code=code)
            results[(label, shards)].append(r)
            print('%s count_shards %-3d %s' % (label, shards, r_line(r)),
                  flush=True)
    finally:
      if baseline:
        remove_baseline_tree(baseline)
      emulator.stop()
  if not args.issue_cases:
    report = results_table(results, args)
  print('\n' + report)
  if args.write_readme:
    from results import replace_section
    replace_section(args.section, 'Last run %s: `./run.sh bench live %s`'
                    '\n\n%s\n' % (time.strftime('%Y-%m-%d'),
                                   ' '.join(argv or sys.argv[1:]), report))


def results_table(results, args):
  rows = ['| code | `--count_shards` | offered msgs/s (live) | behind at last publish | '
          'catch-up | stored msgs/s overall | latency p50 / p99 | RSS | '
          'counts == SQL (windows) | totals from a late pane | '
          'stored / published |',
          '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
  for (label, shards), runs in results.items():
    for r in runs:
      rows.append('| %s | %s | %.0f | %d | %s | %s | %.2f s / %.2f s | %s | '
                  '%s (%d) | %d of %d | %d / %d |' % (
                      label, shards if shards else '0 (a key per user)', r['offered'],
                      r['behind'], '%.1f s' % r['catch_up'] if r['catch_up']
                      is not None else 'not within %.0f s' % args.catch_up_timeout,
                      '%.0f' % r['stored_rate'] if r['stored_rate'] else '-',
                      r['p50'], r['p99'], rss_text(r['rss']),
                      'yes' if r['count_mismatches'] == 0 else
                      '%d differ' % r['count_mismatches'], r['windows_checked'],
                      r['late_totals'], r['totals'], r['stored'], r['published']))
  return '\n'.join(rows)


if __name__ == '__main__':
  main()
