"""Archive benchmark: pubsub_to_gcs keeping up with live traffic.

    ./run.sh bench archive [--rate 5000] [--seconds 60] [--format avro,parquet,jsonl]
        [--num-shards 0,1] [--window-seconds 300] [--write-readme]

For each format, on one Pub/Sub emulator: main.py pubsub_to_gcs archives a
fresh subscription into a local folder while sign-ins are published at
``--rate`` for ``--seconds``. Reported: how far behind it is at the last
publish, how long until every message is archived (and so acknowledged),
and the bytes the archive takes per message against the payload's. With
``--num-shards`` N (several, comma separated, each a case), closed windows
are compacted into N shards: files are counted after the stop.
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
sys.path.insert(0, HERE)

from tools import emulators  # noqa: E402
from tools import publish_signins  # noqa: E402
from tools import status as status_file  # noqa: E402

PROJECT = 'bench-project'


def run_format(fmt, num_shards, args, tmp):
  topic, sub = 'arch-%s' % uuid.uuid4().hex[:8], 'arch-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(PROJECT, topic, 0, subscription=sub)
  status = os.path.join(tmp, sub + '.json')
  directory = os.path.join(tmp, sub)
  proc = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'main.py'), 'pubsub_to_gcs',
       '--input_subscription', 'projects/%s/subscriptions/%s' % (PROJECT, sub),
       '--output_directory', directory, '--format', fmt, '--warehouse',
       os.path.join(tmp, sub + '.duckdb'), '--status_file', status,
       '--progress_seconds', '0.5', '--num_shards', str(num_shards),
       '--window_seconds', str(args.window_seconds)], stdout=subprocess.DEVNULL,
      stderr=open(os.path.join(tmp, sub + '.log'), 'w'), cwd=ROOT)
  try:
    status_file.wait_for(status, lambda s: 'messages_in' in s,
                         lambda: proc.poll() is None, 120)
    published = []
    publisher = threading.Thread(target=lambda: published.append(
        publish_signins.publish(PROJECT, topic, int(args.rate * args.seconds),
                                bad_fraction=0.1, rate=args.rate,
                                max_message_bytes=4096)))
    started = time.monotonic()
    publisher.start()
    publisher.join()
    offered = published[0][0] / (time.monotonic() - started)
    last = time.monotonic()
    n = published[0][0]
    behind = n - status_file.read(status).get('stored_total', 0)
    _, ok = status_file.wait_for(status, lambda s: s.get('stored_total', 0) >= n,
                                 lambda: proc.poll() is None, 120, interval=0.1)
    catch_up = time.monotonic() - last if ok else None
  finally:
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
  payload = sum(len(d) for d, _ in publish_signins.messages(
      n, 0.1, None, 4096))
  size = sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(directory) for f in files)
  files = sum(len(f) for _, _, f in os.walk(directory))
  return {'format': fmt, 'num_shards': num_shards, 'offered': offered, 'n': n, 'behind': behind,
          'catch_up': catch_up, 'files': files,
          'bytes_per_message': size / max(n, 1),
          'payload_per_message': payload / max(n, 1)}


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--rate', type=float, default=5000)
  parser.add_argument('--seconds', type=float, default=60)
  parser.add_argument('--format', default='avro,parquet,jsonl')
  parser.add_argument('--num-shards', default='0')
  parser.add_argument('--window-seconds', type=int, default=300)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  tmp = tempfile.mkdtemp(prefix='archive-bench-')
  emulator = emulators.PubSubEmulator(log_path=os.path.join(tmp, 'pubsub.log'),
                                      project=PROJECT)
  emulator.start()
  os.environ.update(emulator.env(), NO_GCE_CHECK='true',
                    GCE_METADATA_HOST='127.0.0.1:9', GCE_METADATA_IP='127.0.0.1:9')
  try:
    results = [run_format(fmt, int(shards), args, tmp)
               for fmt in args.format.split(',')
               for shards in args.num_shards.split(',')]
  finally:
    emulator.stop()
  rows = ['| `--format` | `--num_shards` | offered msgs/s | behind at the last '
          'publish | all archived after | files | archive bytes / message | '
          'payload bytes / message |',
          '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |']
  for r in results:
    rows.append('| %s | %d | %.0f | %d | %s | %d | %.0f | %.0f |' % (
        r['format'], r['num_shards'], r['offered'], r['behind'],
        '%.1f s' % r['catch_up'] if r['catch_up'] is not None else 'not in 120 s',
        r['files'], r['bytes_per_message'], r['payload_per_message']))
  report = '\n'.join(rows)
  print(report)
  if args.write_readme:
    from results import replace_section
    replace_section('archive', 'Last run %s: `./run.sh bench archive --rate %g '
                    '--seconds %g --format %s --num-shards %s --window-seconds '
                    '%d --write-readme`\n\n%s\n' % (
                        time.strftime('%Y-%m-%d'), args.rate, args.seconds,
                        args.format, args.num_shards, args.window_seconds,
                        report))


if __name__ == '__main__':
  main()
