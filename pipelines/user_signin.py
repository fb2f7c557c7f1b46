"""Streaming user sign-ins: JSON from Pub/Sub (or a JSON-lines replay) ->
validated rows, dead letters with a reason, and per-user event-time counts,
in BigQuery (``--output_table``) or a local DuckDB file (``--warehouse``).

Every message ends in exactly one place: the rows table or the dead-letter
table, each keyed by the message id.
"""

import logging

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import checks
from pipelines import launcher
from pipelines import options as pipeline_options
from pipelines.errors import PipelineFailed
from pipelines.errors import UsageError
from pipelines.tables import Destinations
from pipelines.tables import Layout
from pipelines.tables import Table
from pipelines.tables import bigquery_flags
from pipelines.tables import flag_layout
from storage import table_specs
from storage.duckdb_files import DuckDBFiles
from transforms import schemas
from transforms import signin_counts
from transforms import signin_messages
from transforms.read_messages import ReadMessages
from transforms.store import StoreRowsAndDeadLetters
from transforms.store import WriteTable

PROG = 'main.py user_signin'
TABLES = (
    Table('rows', '--output_table', schemas.SIGNINS,
          layout=Layout('date', 'DAY', ('userid',))),
    Table('dead_letters', '--dead_letter_table', schemas.SIGNIN_ERRORS,
          '_error_records', Layout('timestamp')),
    Table('counts', '--counts_table', schemas.SIGNIN_COUNTS, '_counts',
          Layout('window_start', 'DAY', ('userid',))),
)
# Panes only say when Beam fired: locally the counts are kept with the rows.
PANE_COLUMNS = ('window_end', 'pane_timing', 'pane_index')


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
        '--allowed_lateness_seconds', type=int, default=300,
        help='How long after a window closes late sign-ins still update its '
        'count (their rows are stored whatever their lateness); at most 366 '
        'days.')
    parser.add_argument(
        '--count_shards', type=int, default=signin_counts.DEFAULT_SHARDS,
        help='The windowed counts group users into this many keys per window '
        '(fewer keyed states: what limits the local runner with many users); '
        '0 keys by user; at most 10,000. Same rows and totals either way.')
    parser.add_argument(
        '--default_timezone', default='UTC',
        help='Time zone of dates without an offset (IANA name, e.g. '
        'Europe/Paris).')


OPTIONS = [SigninOptions, pipeline_options.WindowOptions,
           pipeline_options.MessageSourceOptions,
           pipeline_options.MessageKeyOptions,
           pipeline_options.BigQueryOutputOptions,
           pipeline_options.TableLayoutOptions]


def run(argv=None):
  """Parses flags and runs; a local stream runs until SIGINT or SIGTERM."""
  argv = list(argv or [])
  options = pipeline_options.parse_options(argv, OPTIONS, PROG, __doc__)
  pipeline_options.window_seconds(options, 'user_signin')
  opts = pipeline_options.flag_values(options)
  job = launcher.Job('user_signin', options, argv,
                     streaming=not opts.input_file, reports_messages=True)
  replayed = check(options, opts)
  destinations = Destinations.of(TABLES, opts)
  with job.start(destinations, input_files=replayed):
    if job.runs_locally and job.destinations.is_local:
      reconcile_local_counts(opts)
    if job.prepares_bigquery:
      make_exact_counts_view(job.bigquery_client(), opts.window_seconds,
                             destinations)  # the final tables, not staging
    pipeline = job.pipeline()
    build(pipeline, options, job.destinations)
    return job.run(pipeline)


def build(pipeline, options, destinations=None, source=None):
  """The graph on ``pipeline`` from ``options``: messages -> rows and dead
  letters stored, and per-user window counts; returns every dead letter.
  ``destinations``: where the tables are (default: as the flags name them);
  ``source``: what reads the messages (default: as the flags name it; a
  redrive's ``redriven.DeadLetterMessages``)."""
  opts = pipeline_options.flag_values(options)
  if destinations is None:
    destinations = Destinations.of(TABLES, opts)
  read = source or ReadMessages.from_flags(opts)
  messages = pipeline | 'ReadMessages' >> read
  parsed = parse(messages, options)
  # Locally the counts are kept with the rows, in the same transaction, so
  # they equal counting the stored rows whatever happens.
  dead = ((parsed.rows, parsed.dead_letters)
          | 'StoreRowsAndDeadLetters' >> StoreRowsAndDeadLetters(
              destinations['rows'], destinations['dead_letters'],
              opts.bigquery_method, write_time_column='ingested_at',
              dead_letter_topic=opts.dead_letter_topic,
              rows_duckdb_options={
                  'with_inserted': signin_counts.CountsWithTheRows(
                      opts.window_seconds, schemas.SIGNIN_COUNTS.name)},
              settles_dead_letters=getattr(read, 'message_ids', None)))
  counts = parsed.rows | 'CountPerWindow' >> (
      signin_counts.CountSigninsPerWindow(
          opts.window_seconds, opts.allowed_lateness_seconds,
          opts.count_shards, skip_unchanged=not checks.is_dataflow(options)))
  _ = counts | 'WriteCounts' >> WriteTable(
      destinations['counts'], opts.bigquery_method, replace=True,
      duckdb_options={'replace': False, 'update_only': PANE_COLUMNS,
                      'insert_constants': {'signins': 0}})
  return dead


def parse(messages, options, function=None):
  """Messages -> the parse step's rows and dead letters (``function``: no
  UDF here; the argument is for a redrive, which calls any pipeline's)."""
  del function
  opts = pipeline_options.flag_values(options)
  return messages | 'ParseSignins' >> signin_messages.ParseSignins(
      opts.default_timezone, opts.max_message_bytes)


def check(options, opts):
  """One-line errors, before any work, for flags that cannot work; returns
  the files a local replay matched."""
  checks.check_message_flags(opts, bigquery_flags(TABLES))
  checks.check_id_attribute(options, opts)
  checks.check_range('--window_seconds', opts.window_seconds, 1,
                     checks.MAX_WINDOW_SECONDS)
  checks.check_range('--allowed_lateness_seconds',
                     opts.allowed_lateness_seconds, 0,
                     checks.MAX_WINDOW_SECONDS)
  checks.check_range('--count_shards', opts.count_shards, 0,
                     signin_counts.MAX_SHARDS, 'keys per window')
  try:
    signin_messages.resolve_timezone(opts.default_timezone)
  except ValueError as e:
    raise UsageError('--default_timezone: %s' % e)
  checks.check_layout(flag_layout(opts, TABLES[0].layout), schemas.SIGNINS)
  return checks.check_message_locations(options, opts)


def reconcile_local_counts(opts):
  """The warehouse's counts must be of this run's windows and equal to
  counting its rows (recounted once if an earlier version left them not)."""
  try:
    with DuckDBFiles.use(opts.warehouse, hold_seconds=0) as con:
      if signin_counts.reconcile_counts(con, opts.window_seconds):
        logging.getLogger(__name__).warning(
            '%s: counts did not equal the stored rows; recounted',
            opts.warehouse)
  except signin_counts.WindowMismatch as e:
    raise UsageError('--window_seconds %s: %s: %s' % (
        opts.window_seconds, opts.warehouse, e))
  except Exception as e:  # pylint: disable=broad-except
    # Before anything is read: a full disk or an I/O error is one line.
    raise PipelineFailed('--warehouse %s: cannot check its counts: %s' % (
        opts.warehouse, str(e).splitlines()[0]))


EXACT_COUNTS_SQL = """SELECT
  TIMESTAMP_MICROS(GREATEST(start, -62135596800000000)) AS window_start,
  TIMESTAMP_MICROS(LEAST(start + {size}, 253402300799999999)) AS window_end,
  userid,
  COUNT(DISTINCT message_id) AS signins
FROM (SELECT UNIX_MICROS(date) - MOD(MOD(UNIX_MICROS(date), {size}) + {size},
                                     {size}) AS start, userid, message_id
      FROM `{rows}`)
GROUP BY start, userid"""


def make_exact_counts_view(client, window_seconds, destinations):
  """Makes (or replaces) the view ``<counts table>_exact``: each window's
  per-user count, counted from the stored rows (each message once). In
  BigQuery the panes append, and after a local restart a pane can carry a
  new process's partial count: the view is the true total."""
  from google.cloud import bigquery
  rows = table_specs.dotted(destinations['rows'].spec, client.project)
  view = bigquery.Table(table_specs.dotted(
      destinations['counts'].spec + '_exact', client.project))
  view.view_query = EXACT_COUNTS_SQL.format(
      size=int(window_seconds) * 10**6, rows=rows)
  view.description = ('Sign-ins per user per %d-second window, counted from '
                      '%s.' % (window_seconds, rows))
  client.delete_table(view, not_found_ok=True)
  client.create_table(view)
