"""Replay benchmark: what a backfill costs per message.

    ./run.sh bench replay [--messages 100000] [--rounds 3] [--write-readme]

Side by side in one run, rounds alternating, each a fresh process on the
same machine and runner (FnApiRunner, in-process): Beam's minimal JSON
pipeline on the same file (``ReadFromText | Map(json.loads) |
Map(json.dumps) | WriteToText``), the same with the collector threshold
main.py sets (to show the ratio is not that setting's), ``main.py
pubsub_to_bigquery`` replaying the JSON lines into a fresh DuckDB
warehouse, and the same replaying an Avro archive of the same messages (as
pubsub_to_gcs writes it), the same orders as Avro payloads under a topic
schema in an archive (``--payload_format avro``), and DuckDB's own JSON loader on the same file
(``CREATE TABLE AS SELECT * FROM read_json_auto(...)``, which checks no
value against a schema: issue 31's other reference). Ratios are to the
first. Wall-clock time of the whole command, start-up included (what a
user waits for), and the CPU time it used (user + system, its processes
included: what Dataflow bills per element).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

MINIMAL = '''
import json, sys
if len(sys.argv) > 3:  # the collector's threshold main.py sets, for fairness
  import gc
  gc.set_threshold(*json.loads(sys.argv[3]))
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
with beam.Pipeline(options=PipelineOptions(['--runner', 'FnApiRunner'])) as p:
  _ = (p | beam.io.ReadFromText(sys.argv[1]) | beam.Map(json.loads)
       | beam.Map(json.dumps) | beam.io.WriteToText(sys.argv[2]))
'''


DUCKDB_NATIVE = '''
import sys, duckdb
con = duckdb.connect(sys.argv[2])
con.execute("CREATE TABLE orders AS SELECT * FROM read_json_auto(?)", [sys.argv[1]])
assert con.execute("SELECT count(*) FROM orders").fetchone()[0] > 0
con.close()
'''


def timed(args, env):
  """(wall-clock seconds, CPU seconds) of one command."""
  import resource
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  started = time.monotonic()
  done = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
  took = time.monotonic() - started
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  if done.returncode != 0:
    raise SystemExit('failed: %s\n%s' % (' '.join(args), done.stderr[-2000:]))
  return took, (after.ru_utime - before.ru_utime +
                after.ru_stime - before.ru_stime)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--messages', type=int, default=100000)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  from parse_bench import TEN_FIELDS, order
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from transforms import archive
  from pipelines.main import GC_THRESHOLD
  tmp = tempfile.mkdtemp(prefix='replay-bench-')
  schema = os.path.join(tmp, 'orders.json')
  with open(schema, 'w') as f:
    json.dump(TEN_FIELDS, f)
  lines = os.path.join(tmp, 'orders.jsonl')
  payloads = [order(i) for i in range(args.messages)]  # bytes
  with open(lines, 'wb') as f:
    f.write(b'\n'.join(payloads) + b'\n')
  os.makedirs(os.path.join(tmp, 'archive'))
  import datetime
  published = datetime.datetime(2026, 11, 28, 9, 15, tzinfo=datetime.timezone.utc)
  with open(os.path.join(tmp, 'archive', 'orders.avro'), 'wb') as f:
    f.write(archive.encode([archive.record(PubsubMessage(
        p, {}, message_id='m-%d' % i, publish_time=published))
                            for i, p in enumerate(payloads)], 'avro'))
  # The same orders as Avro payloads under a topic schema (issue 30), in an
  # archive: what a replay of an Avro topic's archive costs.
  from payload_bench import ORDER_AVRO, avro_orders
  avsc = os.path.join(tmp, 'order.avsc')
  with open(avsc, 'w') as f:
    json.dump(ORDER_AVRO, f)
  os.makedirs(os.path.join(tmp, 'avro-archive'))
  with open(os.path.join(tmp, 'avro-archive', 'orders.avro'), 'wb') as f:
    f.write(archive.encode([archive.record(PubsubMessage(
        p, {}, message_id='m-%d' % i, publish_time=published))
                            for i, p in enumerate(avro_orders(args.messages))],
                           'avro'))
  env = dict(os.environ, NO_GCE_CHECK='true', GCE_METADATA_HOST='127.0.0.1:9',
             GCE_METADATA_IP='127.0.0.1:9')
  cases = {
      'beam_minimal': lambda r: [sys.executable, '-c', MINIMAL, lines,
                                 os.path.join(tmp, 'out-%d' % r, 'o')],
      'beam_minimal_gc': lambda r: [
          sys.executable, '-c', MINIMAL, lines,
          os.path.join(tmp, 'out-gc-%d' % r, 'o'), json.dumps(GC_THRESHOLD)],
      'replay_json_lines': lambda r: [
          sys.executable, 'main.py', 'pubsub_to_bigquery', '--schema', schema,
          '--input_file', lines, '--warehouse',
          os.path.join(tmp, 'j-%d.duckdb' % r)],
      'replay_archive': lambda r: [
          sys.executable, 'main.py', 'pubsub_to_bigquery', '--schema', schema,
          '--input_file', os.path.join(tmp, 'archive', '*.avro'), '--warehouse',
          os.path.join(tmp, 'a-%d.duckdb' % r)],
      'replay_avro_payloads': lambda r: [
          sys.executable, 'main.py', 'pubsub_to_bigquery', '--payload_format',
          'avro', '--payload_schema', avsc, '--input_file',
          os.path.join(tmp, 'avro-archive', '*.avro'), '--warehouse',
          os.path.join(tmp, 'p-%d.duckdb' % r)],
      'duckdb_native': lambda r: [
          sys.executable, '-c', DUCKDB_NATIVE, lines,
          os.path.join(tmp, 'native-%d.duckdb' % r)],
  }
  times = {name: [] for name in cases}
  for r in range(args.rounds):
    order_ = list(cases) if r % 2 == 0 else list(reversed(cases))
    for name in order_:
      times[name].append(timed(cases[name](r), env))
  shutil.rmtree(tmp, ignore_errors=True)
  best = {k: min(v) for k, v in times.items()}  # by wall-clock time
  n = args.messages
  rows = ['| command | best of %d | per message | vs Beam minimal | CPU per '
          'message | vs DuckDB\'s own load |' % args.rounds,
          '| --- | ---: | ---: | ---: | ---: | ---: |']
  for name, label in (('beam_minimal', "Beam's minimal JSON pipeline"),
                      ('beam_minimal_gc', "the same, with main.py's "
                       'collector threshold'),
                      ('replay_json_lines', 'replay of the JSON lines'),
                      ('replay_archive', 'replay of the Avro archive'),
                      ('replay_avro_payloads', 'replay of an archive of Avro '
                       'payloads (a topic schema, --payload_format avro)'),
                      ('duckdb_native', "DuckDB's read_json_auto (no schema "
                       'check)')):
    wall, cpu = best[name]
    rows.append('| %s | %.1f s | %.1f us | %.2fx | %.1f us | %.1fx |' % (
        label, wall, wall / n * 1e6, wall / best['beam_minimal'][0],
        cpu / n * 1e6, wall / best['duckdb_native'][0]))
  report = '\n'.join(rows)
  print(report)
  if args.write_readme:
    from results import replace_section
    replace_section('replay', 'Last run %s: `./run.sh bench replay --messages '
                    '%d --rounds %d --write-readme` (%d valid 10-field '
                    'orders)\n\n%s\n' % (time.strftime('%Y-%m-%d'), n,
                                          args.rounds, n, report))


if __name__ == '__main__':
  main()
