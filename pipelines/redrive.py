"""Redrive: stored dead letters through the pipeline's current parse.

    main.py redrive [--pipeline pubsub_to_bigquery|user_signin] [--schema F]
        [--udf F:fn] (--warehouse W [--table T] | --output_table P:D.T)
        [--where SQL] [--dry_run]

After a fix (a schema that now allows a field, a UDF that repairs it), the
dead letters still waiting (``redriven_at`` null) that pass the parse you
give now become rows, with their original message id, and are marked
``redriven_at`` (their history stays queryable); the rest stay as they were.
``--where`` picks which (``reason = 'bad_value'``); ``--dry_run`` says what
would move, by reason, and changes nothing. A second redrive changes
nothing: moved dead letters are marked, and rows are keyed by message id.
Dead letters whose payload is not the whole message (``too_large``, a
prefix; ``sink_rejected``, the refused row) are not redriven.
"""

import argparse
import collections
import datetime
import os
import sys

from pipelines.errors import OneLineParser
from pipelines.errors import PipelineFailed
from pipelines.errors import UsageError

PROG = 'main.py redrive'
NOT_REDRIVEN = ('too_large', 'sink_rejected')


def parse_args(argv):
  parser = OneLineParser(prog=PROG, description=__doc__.split('\n\n')[0])
  parser.add_argument('--pipeline', default='pubsub_to_bigquery',
                      choices=['pubsub_to_bigquery', 'user_signin'])
  parser.add_argument('--schema', help='pubsub_to_bigquery: the table\'s '
                      'BigQuery JSON schema file (local or gs://), as now.')
  parser.add_argument('--table', help='Local table name (default: the '
                      'schema file\'s stem).')
  parser.add_argument('--udf', help='FILE.py:function applied first, as now.')
  parser.add_argument('--unknown_fields', default='ignore',
                      choices=['ignore', 'reject'])
  parser.add_argument('--event_time_field', default=None)
  parser.add_argument('--default_timezone', default='UTC',
                      help='user_signin: zone of dates without an offset.')
  parser.add_argument('--window_seconds', type=int, default=60,
                      help='user_signin: the counts\' window length.')
  parser.add_argument('--max_message_bytes', type=int, default=1 << 20)
  parser.add_argument('--warehouse', default=None, help='The DuckDB file.')
  parser.add_argument('--output_table', default=None,
                      help='Or the BigQuery rows table, PROJECT:DATASET.TABLE.')
  parser.add_argument('--dead_letter_table', default=None,
                      help='BigQuery: default <output_table>_error_records.')
  parser.add_argument('--where', default=None,
                      help='SQL condition on the dead-letter table, e.g. '
                      '"reason = \'bad_value\'".')
  parser.add_argument('--dry_run', action='store_true',
                      help='Say what would move; change nothing.')
  args = parser.parse_args(argv)
  if bool(args.warehouse) == bool(args.output_table):
    raise UsageError('give exactly one of --warehouse, --output_table')
  if args.pipeline == 'pubsub_to_bigquery' and not args.schema:
    raise UsageError('--schema is required for pubsub_to_bigquery')
  return args


def _parse_fn(args):
  """(the pipeline's parse DoFn as it is now, its tables)."""
  from apache_beam.options.pipeline_options import PipelineOptions

  from pipelines import pubsub_to_bigquery
  from pipelines import user_signin
  from transforms import json_messages
  from transforms import signin_messages
  if args.pipeline == 'user_signin':
    try:
      signin_messages.resolve_timezone(args.default_timezone)
    except ValueError as e:
      raise UsageError('--default_timezone: %s' % e)
    return (signin_messages.ParseSigninFn(args.default_timezone,
                                          args.max_message_bytes),
            user_signin.TABLES)
  opts = argparse.Namespace(schema=args.schema, table=args.table,
                            message_id_column=True, udf=args.udf)
  options = PipelineOptions([])
  schema = pubsub_to_bigquery.load_schema(opts, options)
  return (json_messages.ParseJsonMessageFn(
      schema, args.unknown_fields, args.event_time_field,
      args.max_message_bytes,
      udf=pubsub_to_bigquery.load_udf(opts, options)),
          pubsub_to_bigquery.tables_of(schema))


def message_of(letter):
  """A stored dead letter -> the message it was (payload, attributes, id)."""
  from apache_beam.io.gcp.pubsub import PubsubMessage
  return PubsubMessage(bytes(letter['payloadBytes'] or b''), {
      a['key']: a['value'] for a in (letter['attributes'] or [])},
                       message_id=letter['message_id'])


def reparse(fn, letters):
  """[dead letter] -> ({message id: rows (none: dropped)}, Counter of moved
  reasons, Counter of (old reason, new reason) that stay)."""
  from apache_beam.pvalue import TaggedOutput
  from apache_beam.utils.timestamp import Timestamp

  from transforms import json_messages
  fn.setup()
  fn.start_bundle()
  extra = ({'timestamp': Timestamp(0)}
           if isinstance(fn, json_messages.ParseJsonMessageFn) else {})
  passed, moved, stayed = {}, collections.Counter(), collections.Counter()
  for letter in letters:
    out = list(fn.process(message_of(letter), **extra))
    dead = [o for o in out if isinstance(o, TaggedOutput)]
    if dead:
      stayed[(letter['reason'], dead[0].value['reason'])] += 1
      continue
    passed[letter['message_id']] = [getattr(o, 'value', o) for o in out]
    moved[letter['reason']] += 1
  return passed, moved, stayed


def _condition(args):
  base = 'redriven_at IS NULL AND message_id IS NOT NULL AND reason NOT IN (%s)' % (
      ', '.join("'%s'" % r for r in NOT_REDRIVEN))
  return base + (' AND (%s)' % args.where if args.where else '')


def redrive_duckdb(args, fn, tables):
  import duckdb

  from pipelines import launcher
  from storage.duckdb_files import DuckDBFiles
  from transforms import duckdb_sink
  from transforms import signin_counts
  if not os.path.isfile(args.warehouse):
    raise UsageError('--warehouse: no DuckDB file at %r' % args.warehouse)
  rows_table, dead_table = tables[0].schema, tables[1].schema
  if not args.dry_run:  # the schema as now, applied first (schema_changes)
    launcher.prepare_local_tables('--warehouse', args.warehouse,
                                  [t.schema for t in tables])
  with DuckDBFiles.use(args.warehouse, hold_seconds=0) as con:
    try:
      cursor = con.execute('SELECT * FROM "%s" WHERE %s' % (
          dead_table.name, _condition(args)))
    except duckdb.Error as e:
      raise UsageError('--where: %s' % str(e).splitlines()[0])
    names = [d[0] for d in cursor.description]
    letters = [dict(zip(names, r)) for r in cursor.fetchall()]
    passed, moved, stayed = reparse(fn, letters)
    if args.dry_run or not passed:
      return len(letters), moved, stayed
    now = datetime.datetime.now(datetime.timezone.utc)
    counts = (signin_counts.CountsWithTheRows(args.window_seconds)
              if args.pipeline == 'user_signin' else None)

    def mark(cursor, new_rows):
      if counts is not None:
        counts(cursor, new_rows)
      cursor.execute('UPDATE "%s" SET redriven_at = ? WHERE message_id IN '
                     '(SELECT unnest(?))' % dead_table.name,
                     [now, list(passed)])
    rows = [r for found in passed.values() for r in found]
    constants = {'ingested_at': now} if 'ingested_at' in (
        rows_table.column_names) else None
    duckdb_sink.insert_rows(con, rows_table.name, rows_table, rows,
                            constants=constants, with_inserted=mark)
  return len(letters), moved, stayed


def redrive_bigquery(args, fn, tables):
  import uuid

  from pipelines import bigquery_replay
  from pipelines import emulator_clients
  from pipelines.tables import Destinations
  from storage import table_specs
  client = emulator_clients.bigquery_client(
      table_specs.parse_table_spec(args.output_table)[0])
  destinations = Destinations.of(tables, args)
  dead = table_specs.dotted(destinations['dead_letters'].spec, client.project)
  try:
    letters = [dict(r.items()) for r in client.query(
        'SELECT * FROM `%s` WHERE %s' % (dead, _condition(args))).result()]
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError('--where or --output_table: %s' % str(e).splitlines()[0])
  passed, moved, stayed = reparse(fn, letters)
  if args.dry_run or not passed:
    return len(letters), moved, stayed
  rows_to = destinations['rows']
  staging = rows_to.spec + '_redrive_%s' % uuid.uuid4().hex[:8]
  from pipelines import bigquery_tables
  client.create_table(bigquery_tables.new_table(
      table_specs.dotted(staging, client.project), rows_to))
  staged = [(rows_to.spec, staging, rows_to.schema)]
  try:
    now = datetime.datetime.now(datetime.timezone.utc)
    rows = [dict(r, ingested_at=now) if 'ingested_at' in (
        rows_to.schema.column_names) else r
            for found in passed.values() for r in found]
    errors = client.insert_rows_json(
        table_specs.dotted(staging, client.project),
        [rows_to.schema.to_bigquery_json(r) for r in rows])
    if errors:
      raise PipelineFailed('BigQuery refused redriven rows: %s' % str(
          errors)[:300])
    bigquery_replay.merge(client.project, staged)
  finally:
    bigquery_replay.drop(client.project, staged)
  from google.cloud import bigquery
  client.query(
      'UPDATE `%s` SET redriven_at = CURRENT_TIMESTAMP() WHERE message_id IN '
      'UNNEST(@ids)' % dead, job_config=bigquery.QueryJobConfig(
          query_parameters=[bigquery.ArrayQueryParameter(
              'ids', 'STRING', list(passed))])).result()
  return len(letters), moved, stayed


def report(args, looked, moved, stayed):
  lines = ['redrive: %d dead letters looked at%s; %d %s' % (
      looked, ' (%s)' % args.where if args.where else '', sum(moved.values()),
      'would move (dry run: nothing changed)' if args.dry_run else 'moved')]
  if moved:
    lines.append('  moved:  %s' % ', '.join(
        '%s=%d' % kv for kv in sorted(moved.items())))
  if stayed:
    lines.append('  stayed: %s' % ', '.join(
        '%s=%d%s' % (old, n, '' if old == new else ' (now %s)' % new)
        for (old, new), n in sorted(stayed.items())))
  return '\n'.join(lines)


def run(argv=None):
  args = parse_args(list(argv or []))
  from local_runner import beam_patches
  from pipelines import launcher
  launcher.keep_auth_on_loopback()
  beam_patches.use_emulator_clients()
  fn, tables = _parse_fn(args)
  if args.warehouse:
    looked, moved, stayed = redrive_duckdb(args, fn, tables)
  else:
    looked, moved, stayed = redrive_bigquery(args, fn, tables)
  print(report(args, looked, moved, stayed))
  sys.stdout.flush()
