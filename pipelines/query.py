"""SQL on the local DuckDB warehouse, also while a pipeline is writing it:
``main.py query [--warehouse FILE] [--format table|csv|json] "SQL"``.

The writer releases the file when a reader announces itself
(``storage.duckdb_files``), so this answers within a second or two
whatever the stream is doing; it sees what is committed.
"""

import csv
import datetime
import decimal
import json
import os
import sys

from pipelines.errors import OneLineParser
from pipelines.errors import PipelineFailed
from pipelines.errors import UsageError

PROG = 'main.py query'
FORMATS = ('table', 'csv', 'json')


def parse_args(argv):
  parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('sql', help='The query, e.g. "SELECT count(*) FROM signins".')
  parser.add_argument('--warehouse', default='output/warehouse.duckdb',
                      help='The DuckDB file (default: the pipelines\' default).')
  parser.add_argument('--format', default='table', choices=FORMATS,
                      help='table (aligned columns), csv or json (one object '
                      'per row, in a list).')
  parser.add_argument('--project', default=None,
                      help='Run the SQL on BigQuery in this project instead '
                      '(the emulator when BIGQUERY_EMULATOR_HOST is set: '
                      'eval "$(./run.sh emulators env)").')
  parser.add_argument('--timeout', type=float, default=10,
                      help='Seconds to wait for a writer to release the file.')
  return parser.parse_args(argv)


def _text(value):
  if value is None:
    return 'NULL'
  if isinstance(value, (bytes, bytearray)):
    return repr(bytes(value))
  return str(value)


def _json_value(value):
  if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
    return value.isoformat()
  if isinstance(value, decimal.Decimal):
    return str(value)
  if isinstance(value, (bytes, bytearray)):
    return bytes(value).decode('utf-8', 'replace')
  return str(value)


def render(names, rows, fmt, out):
  """Writes the result as an aligned table, CSV or JSON."""
  if fmt == 'json':
    json.dump([dict(zip(names, row)) for row in rows], out,
              default=_json_value, indent=1)
    out.write('\n')
    return
  if fmt == 'csv':
    writer = csv.writer(out, lineterminator='\n')
    writer.writerow(names)
    writer.writerows([['' if v is None else _text(v) for v in row]
                      for row in rows])
    return
  cells = [[_text(v) for v in row] for row in rows]
  widths = [max([len(n)] + [len(r[i]) for r in cells])
            for i, n in enumerate(names)]
  numeric = [all(isinstance(row[i], (int, float, decimal.Decimal))
                 or row[i] is None for row in rows) and rows
             for i in range(len(names))]

  def line(values):
    return '  '.join(v.rjust(w) if num else v.ljust(w)
                     for v, w, num in zip(values, widths, numeric)).rstrip()
  out.write(line(names) + '\n')
  out.write('  '.join('-' * w for w in widths) + '\n')
  for row in cells:
    out.write(line(row) + '\n')
  out.write('(%d row%s)\n' % (len(rows), '' if len(rows) == 1 else 's'))


def query_bigquery(args):
  """(column names, rows) of the SQL on BigQuery (or its emulator)."""
  from pipelines import checks
  from pipelines import emulator_clients
  from pipelines import launcher
  launcher.keep_auth_on_loopback()
  if not os.environ.get('BIGQUERY_EMULATOR_HOST'):
    checks.check_credentials('--project %s' % args.project)
  client = emulator_clients.bigquery_client(args.project)
  try:
    result = client.query(args.sql).result()
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__)
  names = [f.name for f in result.schema or []]
  return names, [tuple(r.values()) for r in result]


def run(argv=None):
  args = parse_args(list(argv or []))
  if args.project:
    names, rows = query_bigquery(args)
    render(names, rows, args.format, sys.stdout)
    return

  import duckdb

  from storage.duckdb_files import wait_to_read
  if not os.path.isfile(args.warehouse):
    raise UsageError('--warehouse: no DuckDB file at %r' % args.warehouse)
  try:
    with wait_to_read(args.warehouse, args.timeout) as con:
      cursor = con.execute(args.sql)
      names = [d[0] for d in cursor.description or []]
      rows = cursor.fetchall() if names else []
  except TimeoutError as e:
    raise PipelineFailed(str(e))
  except duckdb.Error as e:
    raise UsageError('%s' % str(e).splitlines()[0])
  render(names, rows, args.format, sys.stdout)
