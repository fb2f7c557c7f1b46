"""What every Pub/Sub-to-table pipeline of ours shares: the source flags and
their checks, the sources, the sinks with dead letters for refused rows, the
local ack-after-commit reader, progress and the local run until stopped.

A pipeline module (user_signin, pubsub_to_bigquery) adds its own flags and
parse step and builds its graph with these pieces, so the delivery
guarantees are the same for every message shape.
"""

import json
import logging
import os
import time

import apache_beam as beam
from apache_beam.io.gcp import pubsub
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions

from pipelines import bigquery_replay
from pipelines import cli
from pipelines import direct_runner_speedups
from pipelines import local_stream
from transforms import local_pubsub
from transforms import message_files
from transforms import outages
from transforms import pubsub_message
from transforms import tally
from transforms import warehouse
from transforms.duckdb_files import Busy

_LOG = logging.getLogger(__name__)

SOURCE_FLAGS = ('--input_subscription', '--input_topic', '--input_file')


class MessageSourceOptions(PipelineOptions):
  """Flags every message pipeline takes: sources, the local warehouse, dead
  letters and local runs (one class, so that pipelines imported together,
  as in tests, do not register them twice)."""
  TITLE = 'source and local run'

  @classmethod
  def _add_argparse_args(cls, parser):
    add_source_flags(parser)


def add_source_flags(parser):
  """The flags of sources, local warehouse, dead letters and local runs."""
  parser.add_argument(
      '--input_subscription', default=None,
      help='Read this Pub/Sub subscription, projects/P/subscriptions/S '
      '(streaming).')
  parser.add_argument(
      '--input_topic', default=None,
      help='Read this Pub/Sub topic, projects/P/topics/T, through a '
      'temporary subscription (streaming).')
  parser.add_argument(
      '--input_file', default=None,
      help='Replay JSON lines from files (glob, local or gs://), one message '
      'per line, through the same transforms (batch).')
  parser.add_argument(
      '--warehouse', default='output/warehouse.duckdb',
      help='Local DuckDB file for the tables (and, with the local reader, '
      'delivery counts), used when --output_table is not given.')
  parser.add_argument(
      '--dead_letter_table', default=None,
      help='BigQuery table for dead letters (default: --output_table with '
      'suffix _error_records, as Google\'s Pub/Sub-to-BigQuery template).')
  parser.add_argument(
      '--max_message_bytes', type=int,
      default=pubsub_message.MAX_MESSAGE_BYTES,
      help='Larger payloads become too_large dead letters (a prefix kept).')
  parser.add_argument(
      '--progress_seconds', type=float, default=5,
      help='Local streaming runs log progress this often.')
  parser.add_argument(
      '--local_pubsub_reader', default='ack_after_commit',
      choices=['ack_after_commit', 'beam'],
      help='Local runs reading --input_subscription: ack_after_commit '
      'acknowledges a message only once its row or dead letter is stored '
      '(committed to DuckDB, or accepted by BigQuery\'s streaming inserts) '
      'and pulls up to 2,000 at a time; beam is Beam\'s own local read (acks '
      'on pull, 10 per bundle). Dataflow always uses Beam\'s read.')
  parser.add_argument(
      '--timestamp_attribute', default=None,
      help='Pub/Sub attribute holding each message\'s event time '
      '(milliseconds since the epoch or RFC 3339) for the reader\'s '
      'watermark; a message whose attribute is not a timestamp becomes a '
      'bad_timestamp_attribute dead letter with the local reader.')
  parser.add_argument(
      '--max_delivery_attempts', type=int, default=5,
      help='Local ack-after-commit reader: a message pulled this many times '
      'without being stored (it crashed the pipeline each time) becomes a '
      'too_many_attempts dead letter.')
  parser.add_argument(
      '--max_in_flight', type=int, default=local_pubsub.MAX_IN_FLIGHT,
      help='Local ack-after-commit reader: at most this many messages '
      'pulled and not yet acknowledged; it pauses pulling at the bound.')
  parser.add_argument(
      '--max_in_flight_mb', type=int,
      default=local_pubsub.MAX_IN_FLIGHT_BYTES >> 20,
      help='The same bound in megabytes of payload.')
  parser.add_argument(
      '--drain_seconds', type=float, default=10,
      help='Local streaming stop (SIGTERM, Ctrl-C): how long messages in '
      'flight may take to be stored; the whole stop takes at most this + '
      '5 s whatever Pub/Sub does, and a second signal exits at once.')
  parser.add_argument(
      '--status_file', default=None,
      help='Local runs also write their progress here as JSON, each time '
      'they log it.')


def check_sources(options, opts, bigquery_flags=('--output_table',
                                                  '--dead_letter_table')):
  """One-line errors, before any work, for the shared flags."""
  given = [f for f in SOURCE_FLAGS if getattr(opts, f[2:])]
  if len(given) != 1:
    raise cli.UsageError('give exactly one of %s (got %s)' % (
        ', '.join(SOURCE_FLAGS), ', '.join(given) or 'none'))
  for flag, value, parse in (
      ('--input_subscription', opts.input_subscription,
       pubsub.parse_subscription),
      ('--input_topic', opts.input_topic, pubsub.parse_topic)):
    if value:
      try:
        parse(value)
      except ValueError as e:
        raise cli.UsageError('%s: %s' % (flag, e))
  for flag, value in (('--max_delivery_attempts', opts.max_delivery_attempts),
                      ('--max_message_bytes', opts.max_message_bytes),
                      ('--progress_seconds', opts.progress_seconds),
                      ('--max_in_flight', opts.max_in_flight),
                      ('--max_in_flight_mb', opts.max_in_flight_mb)):
    if value <= 0:
      raise cli.UsageError('%s must be positive, not %s' % (flag, value))
  if opts.drain_seconds < 0:
    raise cli.UsageError('--drain_seconds must be 0 or more')
  for flag in bigquery_flags:
    value = getattr(opts, flag[2:])
    if value:
      try:
        warehouse.check_table_spec(value, flag)
      except ValueError as e:
        raise cli.UsageError(str(e))
      if warehouse.is_local_warehouse(value):
        raise cli.UsageError('%s takes a BigQuery table; use --warehouse for '
                             'a local DuckDB file' % flag)
  extra = [f for f in bigquery_flags[1:] if getattr(opts, f[2:])]
  if extra and not opts.output_table:
    raise cli.UsageError('%s go%s with --output_table' % (
        ' and '.join(extra), '' if len(extra) > 1 else 'es'))


def check_locations(options, opts):
  """After the other checks: Dataflow needs BigQuery; local inputs must
  exist and the warehouse must be writable."""
  if cli.is_dataflow(options):
    if not opts.output_table:
      raise cli.UsageError('DataflowRunner needs --output_table (BigQuery); '
                           '--warehouse is a local file')
    return
  if cli.is_dry_run(options):
    return
  if opts.input_file:
    cli.match_input_files('--input_file', opts.input_file, options)
  if not opts.output_table or opts.input_subscription:
    # The local reader keeps delivery counts in the warehouse file too.
    cli.check_local_warehouse('--warehouse', opts.warehouse)


def read_messages(pipeline, opts):
  """The source named by the flags, as PubsubMessages."""
  if opts.input_file:
    return pipeline | 'ReadMessageFiles' >> message_files.ReadMessagesFromFiles(
        opts.input_file)
  return pipeline | 'ReadFromPubSub' >> beam.io.ReadFromPubSub(
      subscription=opts.input_subscription, topic=opts.input_topic,
      with_attributes=True, timestamp_attribute=opts.timestamp_attribute)


class WriteTable(beam.PTransform):
  """Rows -> the table named by ``spec`` (BigQuery or DuckDB); returns refused rows.

  ``on_commit`` hears of rows once they are stored (committed to DuckDB, or
  accepted by BigQuery's streaming inserts), in the process that wrote them.
  ``duckdb_options`` go to WriteToDuckDB when the table is local.
  """
  def __init__(self, spec, schema, bigquery_method='default', replace=False,
               on_commit=None, write_time_column=None, duckdb_options=None):
    super().__init__()
    self._duckdb_options = duckdb_options or {}
    self._spec = spec
    self._schema = schema
    self._method = bigquery_method
    self._replace = replace
    self._on_commit = on_commit
    self._write_time_column = write_time_column

  def expand(self, rows):
    if warehouse.is_local_warehouse(self._spec):
      options = dict({'replace': self._replace}, **self._duckdb_options)
      return rows | 'WriteToDuckDB' >> warehouse.WriteToDuckDB(
          self._spec, self._schema, hold_connection=True,
          on_commit=self._on_commit,
          write_time_column=self._write_time_column, **options)
    return rows | 'WriteToBigQuery' >> warehouse.WriteRowsToBigQuery(
        self._spec, self._schema, self._method,
        write_time_column=self._write_time_column, on_commit=self._on_commit)


def store(rows, dead, specs, schemas_, method, on_commit=None,
          write_time_column=None, rows_duckdb_options=None):
  """Rows -> specs['rows'], dead letters and the rows the warehouse refused
  (as sink_rejected) -> specs['dead_letters']; returns all dead letters."""
  refused_rows = rows | 'WriteRows' >> WriteTable(
      specs['rows'], schemas_['rows'], method, on_commit=on_commit,
      write_time_column=write_time_column,
      duckdb_options=rows_duckdb_options)
  refused_dead = (
      refused_rows
      | 'RefusedRowsToDeadLetters' >> beam.Map(
          pubsub_message.refused_row_dead_letter))
  all_dead = (dead, refused_dead) | 'AllDeadLetters' >> beam.Flatten()
  lost = all_dead | 'WriteDeadLetters' >> WriteTable(
      specs['dead_letters'], schemas_['dead_letters'], method,
      on_commit=on_commit)
  _ = lost | 'LogRefusedDeadLetters' >> beam.Map(_log_refused_dead_letter)
  return all_dead


def _log_refused_dead_letter(refused):
  row, error = refused
  _LOG.error('the dead-letter table refused message %s (%s): %s',
             row.get('message_id'), row.get('reason'), error)


class Progress(object):
  """Counts what the local run has stored, for the log and the status file.

  Reads the DuckDB tables (what is committed) through its own cursor, and
  the process-wide tally for messages read. ``tables`` names the local
  tables: rows, dead_letters and optionally counts.
  """
  def __init__(self, opts, tables, pump=None):
    self._opts = opts
    self._tables = tables
    self._pump = pump
    self._local = not opts.output_table
    self._started = time.monotonic()
    self._last = (self._started, 0)
    self._stored = None

  def stored(self, wait=False):
    """Counts in the warehouse; the last ones while another process holds
    the file (a progress line never waits for a reader)."""
    if not self._local or not os.path.exists(self._opts.warehouse):
      return None
    names = self._tables
    try:
      with warehouse.DuckDBFiles.use(self._opts.warehouse, wait=wait) as con:
        tables = {r[0] for r in con.execute('SHOW TABLES').fetchall()}

        def count(sql, table):
          return (con.execute(sql % table).fetchall()
                  if table and table in tables else [])
        rows = count('SELECT count(*) FROM "%s"', names['rows'])
        dead = count('SELECT reason, count(*) FROM "%s" GROUP BY 1 ORDER BY 1',
                     names['dead_letters'])
        windows = count('SELECT count(*) FROM "%s"', names.get('counts'))
    except Busy:
      return self._stored
    except Exception as e:  # pylint: disable=broad-except
      _LOG.debug('progress could not read the warehouse: %s', e)
      return self._stored  # an outage: the sinks say so and wait it out
    self._stored = {
        'rows': rows[0][0] if rows else 0,
        'dead_letters': dict(dead),
    }
    if names.get('counts'):
      self._stored['count_rows'] = windows[0][0] if windows else 0
    return self._stored

  def report(self, final=False):
    """Logs one progress line, writes the status file; returns the status."""
    now = time.monotonic()
    seen = tally.snapshot().get('messages_in', 0)
    last_time, last_seen = self._last
    rate = (seen - last_seen) / max(now - last_time, 1e-6)
    self._last = (now, seen)
    status = {'messages_in': seen, 'rate_per_s': round(rate, 1),
              'elapsed_s': round(now - self._started, 1), 'final': final}
    stored = self.stored()
    if stored is not None:
      status.update(stored)
      status['stored_total'] = stored['rows'] + sum(
          stored['dead_letters'].values())
    elif self._opts.input_subscription:
      # BigQuery: what the local reader heard BigQuery accept this run.
      status['stored_total'] = local_pubsub.LEASES.committed_total
    if self._pump is not None:
      status.update(self._pump.status())
    waiting = outages.snapshot()
    if waiting:
      status['outages'] = waiting
    _LOG.info('%s', local_stream.progress_line(status))
    if self._opts.status_file:
      tmp = self._opts.status_file + '.tmp'
      with open(tmp, 'w') as f:
        json.dump(status, f, sort_keys=True)
      os.replace(tmp, self._opts.status_file)
    return status


def summary(name, status, opts, tables):
  """The end-of-run lines."""
  lines = ['%s: %d messages read in %.1f s' % (
      name, status['messages_in'], status['elapsed_s'])]
  if 'rows' in status:
    lines.append('  rows:         %d  (%s, table %s)' % (
        status['rows'], opts.warehouse, tables['rows']))
    dead = status['dead_letters']
    lines.append('  dead letters: %d  %s' % (sum(dead.values()), ', '.join(
        '%s=%d' % kv for kv in sorted(dead.items()))))
    if 'count_rows' in status:
      lines.append('  count rows:   %d  (table %s)' % (
          status['count_rows'], tables['counts']))
  elif 'stored_total' in status:
    lines.append('  stored:       %d  (rows and dead letters BigQuery accepted '
                 'in %s)' % (status['stored_total'], opts.output_table))
  if status.get('in_flight'):
    lines.append('  not acknowledged: %d  (Pub/Sub redelivers them to the next '
                 'run, which stores each once)' % status['in_flight'])
  return '\n'.join(lines)


def run(name, argv, options, opts, build, local_tables, bigquery_tables,
        prepare_bigquery=None):
  """Runs a message pipeline as the flags say; returns the result.

  ``build(pipeline, messages=None, on_commit=None)`` adds the graph;
  ``local_tables`` is [(TableSchema, table name)] made in the warehouse
  first and ``{'rows': .., 'dead_letters': .., 'counts': ..}`` names for
  progress; ``bigquery_tables`` is [(flag, spec, TableSchema)] checked (and
  made) first for a local run into BigQuery, and then
  ``prepare_bigquery(project)`` is called. Local streaming runs until
  SIGINT or SIGTERM.
  """
  streaming = not opts.input_file
  options.view_as(StandardOptions).streaming = streaming
  dataflow = cli.is_dataflow(options)
  if dataflow:
    cli.prepare_for_dataflow(options)
  else:
    cli.keep_auth_on_loopback()
    cli.choose_local_runner(options, argv, streaming=streaming)
  rendering = cli.use_render_runner_if_asked(options)
  if opts.output_table and not dataflow and not rendering:
    cli.prepare_local_bigquery(
        options, {flag: spec for flag, spec, _ in bigquery_tables},
        create=[(spec, schema) for _, spec, schema in bigquery_tables])
    if prepare_bigquery is not None:
      prepare_bigquery(_project(options))
  staged = []
  if (opts.input_file and opts.output_table and not rendering
      and not cli.is_dry_run(options)):
    staged = bigquery_replay.stage(opts, bigquery_tables)
  try:
    return _run(name, options, opts, build, local_tables, streaming, dataflow,
                rendering, staged)
  finally:
    if staged:
      bigquery_replay.drop(_project(options), staged)


def _project(options):
  from apache_beam.options.pipeline_options import GoogleCloudOptions
  return options.view_as(GoogleCloudOptions).project


def _merge_replay(options, staged):
  for table, added in bigquery_replay.merge(_project(options), staged):
    print('  merged into %s: %d new (messages already there are not added '
          'again)' % (table, added))


def _run(name, options, opts, build, local_tables, streaming, dataflow,
         rendering, staged):
  schemas_to_make, progress_tables = local_tables
  pipeline = beam.Pipeline(options=options)
  pump = controller = None
  if (streaming and not dataflow and not rendering and opts.input_subscription
      and opts.local_pubsub_reader == 'ack_after_commit'):
    if opts.output_table and opts.bigquery_method not in (
        'default', 'streaming_inserts'):
      raise cli.UsageError(
          '--local_pubsub_reader ack_after_commit acknowledges what BigQuery '
          'accepted through streaming inserts; with --bigquery_method %s use '
          '--local_pubsub_reader beam' % opts.bigquery_method)
    try:
      pump, controller = local_pubsub.serve(
          opts.input_subscription, attempts_db=opts.warehouse,
          max_attempts=opts.max_delivery_attempts,
          timestamp_attribute=opts.timestamp_attribute,
          max_in_flight=opts.max_in_flight,
          max_in_flight_bytes=opts.max_in_flight_mb << 20)
    except local_pubsub.PubSubUnavailable as e:
      if e.missing:
        raise cli.UsageError('--input_subscription: %s' % e)
      raise cli.PipelineFailed(str(e))
    messages = pipeline | 'ReadFromPubSubAckOnCommit' >> (
        local_pubsub.ReadFromPubSubAckOnCommit(controller.endpoint))
    build(pipeline, messages, on_commit=local_pubsub.AckOnCommit())
  else:
    build(pipeline)
  if dataflow or rendering:
    result = pipeline.run()
    if not streaming:
      result.wait_until_finish()
      if staged:
        _merge_replay(options, staged)
    return result
  tally.reset()
  if not opts.output_table:  # every table exists from the start
    cli.prepare_local_tables('--warehouse', opts.warehouse, schemas_to_make)
  try:
    progress = Progress(opts, progress_tables, pump)
    report = lambda status: summary(name, status, opts, progress_tables)  # noqa: E731
    if streaming:
      direct_runner_speedups.apply()
      return local_stream.run_until_stopped(
          pipeline, progress.report, report, pump, opts.progress_seconds,
          opts.drain_seconds)
    result = pipeline.run()
    result.wait_until_finish()
    print(report(progress.report(final=True)))
    if staged:
      _merge_replay(options, staged)
    return result
  finally:
    if controller is not None:
      pump.close(timeout=0.5)  # a no-op after a stop; bounded after a failure
      controller.stop()
    warehouse.DuckDBFiles.close_all()
