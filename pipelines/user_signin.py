"""Streaming user sign-ins: JSON from Pub/Sub (or a JSON-lines replay) ->
validated rows, dead letters with a reason, and per-user event-time counts,
in BigQuery (``--output_table``) or a local DuckDB file (``--warehouse``).

Every message ends in exactly one place: the rows table or the dead-letter
table, each keyed by the message id.
"""

import logging

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import cli
from pipelines import message_pipeline
from transforms import pubsub_message
from transforms import schemas
from transforms import signin_counts
from transforms import warehouse

PROG = 'main.py user_signin'
DESCRIPTION = __doc__
LOCAL_TABLES = {'rows': schemas.SIGNINS.name,
                'dead_letters': schemas.SIGNIN_ERRORS.name,
                'counts': schemas.SIGNIN_COUNTS.name}


class SigninOptions(PipelineOptions):
  """Flags of the user_signin pipeline."""
  TITLE = 'user_signin'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--counts_table', default=None,
        help='BigQuery table for windowed counts (default: --output_table '
        'with suffix _counts).')
    parser.add_argument(
        '--window_seconds', type=int, default=60,
        help='Length of the fixed event-time windows counted per user.')
    parser.add_argument(
        '--allowed_lateness_seconds', type=int, default=300,
        help='How long after a window closes late sign-ins still update its '
        'count (their rows are stored whatever their lateness).')
    parser.add_argument(
        '--count_shards', type=int, default=signin_counts.DEFAULT_SHARDS,
        help='The windowed counts group users into this many keys per window '
        '(fewer keyed states: what limits the local runner with many users); '
        '0 keys by user. Same rows and totals either way.')
    parser.add_argument(
        '--default_timezone', default='UTC',
        help='Time zone of dates without an offset (IANA name, e.g. '
        'Europe/Paris).')


OPTIONS = [SigninOptions, message_pipeline.MessageSourceOptions,
           cli.BigQueryOutputOptions]


PANE_COLUMNS = ('window_end', 'pane_timing', 'pane_index')


def table_specs(opts):
  """Where rows, dead letters and counts go: BigQuery tables or one DuckDB file."""
  if opts.output_table:
    return {
        'rows': opts.output_table,
        'dead_letters': opts.dead_letter_table or
                        opts.output_table + '_error_records',
        'counts': opts.counts_table or opts.output_table + '_counts',
    }
  return {'rows': opts.warehouse, 'dead_letters': opts.warehouse,
          'counts': opts.warehouse}


def build(pipeline, opts, messages=None, on_commit=None):
  """Adds the sign-in graph; ``messages`` replaces the flag-chosen source.

  ``on_commit`` is told of every row and dead letter once stored (the local
  ack-after-commit reader acknowledges messages then).
  """
  if messages is None:
    messages = message_pipeline.read_messages(pipeline, opts)
  parsed = messages | 'ParseSignins' >> pubsub_message.ParseSignins(
      opts.default_timezone, opts.max_message_bytes)
  rows = parsed.rows
  specs = table_specs(opts)
  # Locally the counts are kept with the rows, in the same transaction, so
  # they equal counting the stored rows whatever happens; the windowed
  # panes below then only record when Beam fired (pane_timing, pane_index).
  all_dead = message_pipeline.store(
      rows, parsed[pubsub_message.DEAD_LETTERS], specs,
      {'rows': schemas.SIGNINS, 'dead_letters': schemas.SIGNIN_ERRORS},
      opts.bigquery_method, on_commit, write_time_column='ingested_at',
      rows_duckdb_options={'with_inserted': signin_counts.CountsWithTheRows(
          opts.window_seconds, schemas.SIGNIN_COUNTS.name)})
  counts = rows | 'CountPerWindow' >> signin_counts.CountSigninsPerWindow(
      opts.window_seconds, opts.allowed_lateness_seconds, opts.count_shards,
      skip_unchanged=getattr(opts, 'runner', None) not in cli.DATAFLOW_RUNNERS)
  _ = counts | 'WriteCounts' >> message_pipeline.WriteTable(
      specs['counts'], schemas.SIGNIN_COUNTS, opts.bigquery_method,
      replace=True, duckdb_options={
          'replace': False, 'update_only': PANE_COLUMNS,
          'insert_constants': {'signins': 0}})
  return {'rows': rows, 'dead_letters': all_dead, 'counts': counts}


def check(options, opts):
  """One-line errors, before any work, for flags that cannot work."""
  message_pipeline.check_sources(
      options, opts, ('--output_table', '--dead_letter_table', '--counts_table'))
  if opts.window_seconds <= 0:
    raise cli.UsageError('--window_seconds must be positive, not %s'
                         % opts.window_seconds)
  if opts.allowed_lateness_seconds < 0:
    raise cli.UsageError('--allowed_lateness_seconds must be 0 or more')
  if opts.count_shards < 0:
    raise cli.UsageError('--count_shards must be 0 or more')
  try:
    pubsub_message.resolve_timezone(opts.default_timezone)
  except ValueError as e:
    raise cli.UsageError('--default_timezone: %s' % e)
  message_pipeline.check_locations(options, opts)
  if (not opts.output_table and not cli.is_dataflow(options)
      and not cli.is_dry_run(options)):
    reconcile_local_counts(opts)


def reconcile_local_counts(opts):
  """The warehouse's counts must be of this run's windows and equal to
  counting its rows (recounted once if an earlier version left them not)."""
  cli.prepare_local_tables('--warehouse', opts.warehouse, [
      (schemas.SIGNINS, None), (schemas.SIGNIN_ERRORS, None),
      (schemas.SIGNIN_COUNTS, None)])
  try:
    with warehouse.DuckDBFiles.use(opts.warehouse, hold_seconds=0) as con:
      if signin_counts.reconcile_counts(con, opts.window_seconds):
        logging.getLogger(__name__).warning(
            '%s: counts did not equal the stored rows; recounted',
            opts.warehouse)
  except signin_counts.WindowMismatch as e:
    raise cli.UsageError('--window_seconds %s: %s: %s' % (
        opts.window_seconds, opts.warehouse, e))
  except Exception as e:  # pylint: disable=broad-except
    # Before anything is read: a full disk or an I/O error is one line.
    raise cli.PipelineFailed('--warehouse %s: cannot check its counts: %s' % (
        opts.warehouse, str(e).splitlines()[0]))


EXACT_COUNTS_SQL = """SELECT
  TIMESTAMP_MICROS(start) AS window_start,
  TIMESTAMP_MICROS(start + {size}) AS window_end,
  userid,
  COUNT(DISTINCT message_id) AS signins
FROM (SELECT UNIX_MICROS(date) - MOD(MOD(UNIX_MICROS(date), {size}) + {size},
                                     {size}) AS start, userid, message_id
      FROM `{rows}`)
GROUP BY start, userid"""


def exact_counts_view(project, opts, specs):
  """Makes (or replaces) the view ``<counts table>_exact``: each window's
  per-user count, counted from the stored rows (each message once). In
  BigQuery the panes append, and after a local restart a pane can carry a
  new process's partial count: the view is the true total."""
  from google.cloud import bigquery

  from transforms import emulators
  client = emulators.bigquery_client(project)
  rows = '.'.join(cli.parse_table_spec(specs['rows'], client.project))
  view = bigquery.Table('.'.join(cli.parse_table_spec(
      specs['counts'] + '_exact', client.project)))
  view.view_query = EXACT_COUNTS_SQL.format(
      size=int(opts.window_seconds) * 10**6, rows=rows)
  view.description = ('Sign-ins per user per %d-second window, counted from '
                      '%s.' % (opts.window_seconds, rows))
  client.delete_table(view, not_found_ok=True)
  client.create_table(view)


def run(argv=None):
  """Parses flags and runs; local streaming runs until SIGINT or SIGTERM."""
  argv = list(argv or [])
  options = cli.parse_options(
      argv, OPTIONS, PROG, DESCRIPTION)
  opts = cli.flag_values(options)
  check(options, opts)
  specs = table_specs(opts)
  return message_pipeline.run(
      'user_signin', argv, options, opts,
      lambda pipeline, messages=None, on_commit=None: build(
          pipeline, opts, messages, on_commit),
      ([(schemas.SIGNINS, None), (schemas.SIGNIN_ERRORS, None),
        (schemas.SIGNIN_COUNTS, None)], LOCAL_TABLES),
      [('--output_table', specs['rows'], schemas.SIGNINS),
       ('--dead_letter_table', specs['dead_letters'], schemas.SIGNIN_ERRORS),
       ('--counts_table', specs['counts'], schemas.SIGNIN_COUNTS)],
      prepare_bigquery=lambda project: exact_counts_view(project, opts, specs))
