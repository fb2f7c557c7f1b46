"""One-line errors for flags that cannot work, found before any work: a
bad flag value, an input that matches nothing, an output that cannot be
written, a table spec that is neither BigQuery's nor a DuckDB file."""

import os
import re

from apache_beam.io.gcp import pubsub
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.pipeline_options import TestOptions

from pipelines.errors import UsageError
from storage import table_specs

LOCAL_RUNNERS = ('DirectRunner', 'direct', 'Direct', 'directrunner')
DATAFLOW_RUNNERS = ('DataflowRunner', 'dataflow', 'Dataflow', 'dataflowrunner')
SOURCE_FLAGS = ('--input_subscription', '--input_topic', '--input_file')


def runner_name(options):
  runner = options.view_as(StandardOptions).runner
  return runner if isinstance(runner, str) or runner is None else type(
      runner).__name__


def is_dataflow(options):
  return runner_name(options) in DATAFLOW_RUNNERS


def is_dry_run(options):
  return str(options.view_as(TestOptions).dry_run).lower() in (
      'true', '1', 'yes')


# GCS bucket names: 3-63 characters of a-z, 0-9, '-', '_' and '.', starting
# and ending with a letter or digit (dotted names up to 222).
_BUCKET = re.compile(r'[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]')


def check_gcs_location(flag, value):
  """A one-line UsageError unless ``value`` is gs://BUCKET[/PATH] with a
  bucket name GCS allows (else Beam spends 120 s on the network first)."""
  if not value.startswith('gs://'):
    raise UsageError('%s: %r is not a gs:// location (gs://BUCKET/PATH)' % (
        flag, value))
  bucket = value[len('gs://'):].split('/', 1)[0]
  if not _BUCKET.fullmatch(bucket) or (
      '.' not in bucket and len(bucket) > 63) or '..' in bucket:
    raise UsageError('%s: %r is not a valid bucket name (3-63 characters: '
                     'a-z, 0-9, -, _ and ., starting and ending with a letter '
                     'or digit)' % (flag, bucket))


def match_input_files(flag, pattern, options):
  """The files ``pattern`` matches (local or gs://); a one-line UsageError
  naming ``flag`` when it matches nothing, a directory, or cannot be listed."""
  from apache_beam.io.filesystems import FileSystems
  check_gcs_credentials(flag, pattern)
  FileSystems.set_options(options)
  try:
    matched = FileSystems.match([pattern])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError('%s: cannot list %r: %s' % (
        flag, pattern, str(e).splitlines()[0]))
  if not matched:
    raise UsageError('%s: no file matches %r' % (flag, pattern))
  for m in matched:
    if os.path.isdir(m.path):
      raise UsageError('%s: %r is a directory; give files or a glob such as '
                       '%r' % (flag, m.path, os.path.join(m.path, '*')))
  return matched


def check_local_output(flag, path, is_file=True):
  """A local output path must be creatable: its folder made now, and the
  path itself not a directory when it names a file (one-line UsageError)."""
  if path.startswith('gs://'):
    return
  if is_file and os.path.isdir(path):
    raise UsageError('%s: %r is a directory, not a file' % (flag, path))
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise UsageError('%s: cannot create the folder %r: %s' % (
        flag, folder, e.strerror or e))
  if not os.access(folder, os.W_OK):
    raise UsageError('%s: cannot write in %r' % (flag, folder))


def check_local_warehouse(flag, path):
  """A local DuckDB warehouse must be one this run can open and write: a
  one-line UsageError (exit 2) before anything is read or acknowledged."""
  check_local_output(flag, path)
  problem = table_specs.duckdb_file_problem(path)
  if problem:
    raise UsageError('%s: %r: %s' % (flag, path, problem))


def check_id_attribute(options, opts):
  """--id_attribute with --input_topic runs on Dataflow only: locally a
  topic is read by Beam's own read, which refuses an id_label."""
  if getattr(opts, 'id_attribute', None) is not None:
    if not opts.id_attribute.strip():
      raise UsageError('--id_attribute: give an attribute name')
    if opts.input_topic and not is_dataflow(options):
      raise UsageError('--id_attribute with --input_topic runs on Dataflow '
                       'only (locally Beam\'s topic read refuses an '
                       'id_label): read a subscription, --input_subscription')


def check_message_flags(opts, bigquery_flags):
  """One-line errors, before any work, for the flags every message pipeline
  takes; ``bigquery_flags`` name its tables' flags, --output_table first."""
  given = [f for f in SOURCE_FLAGS if getattr(opts, f[2:])]
  if getattr(opts, 'redrive_pipeline', None):  # main.py redrive
    if given:
      raise UsageError('%s: a redrive reads the dead-letter table; it takes '
                       'no other source' % given[0])
  elif len(given) != 1:
    raise UsageError('give exactly one of %s (got %s)' % (
        ', '.join(SOURCE_FLAGS), ', '.join(given) or 'none'))
  for flag, value, parse in (
      ('--input_subscription', opts.input_subscription,
       pubsub.parse_subscription),
      ('--input_topic', opts.input_topic, pubsub.parse_topic),
      ('--dead_letter_topic', opts.dead_letter_topic, pubsub.parse_topic)):
    if value:
      try:
        parse(value)
      except ValueError as e:
        raise UsageError('%s: %s' % (flag, e))
  for flag, value in (('--max_delivery_attempts', opts.max_delivery_attempts),
                      ('--max_message_bytes', opts.max_message_bytes),
                      ('--progress_seconds', opts.progress_seconds),
                      ('--max_in_flight', opts.max_in_flight),
                      ('--max_in_flight_mb', opts.max_in_flight_mb)):
    if value <= 0:
      raise UsageError('%s must be positive, not %s' % (flag, value))
  if opts.drain_seconds < 0:
    raise UsageError('--drain_seconds must be 0 or more')
  check_range('--progress_seconds', opts.progress_seconds, 0, DAY_SECONDS)
  check_range('--drain_seconds', opts.drain_seconds, 0, DAY_SECONDS)
  for flag in bigquery_flags:
    value = getattr(opts, flag[2:])
    if value:
      try:
        table_specs.check_table_spec(value, flag)
      except ValueError as e:
        raise UsageError(str(e))
      if table_specs.is_local_warehouse(value):
        raise UsageError('%s takes a BigQuery table; use --warehouse for '
                             'a local DuckDB file' % flag)
  extra = [f for f in bigquery_flags[1:] if getattr(opts, f[2:])]
  if extra and not opts.output_table:
    raise UsageError('%s go%s with --output_table' % (
        ' and '.join(extra), '' if len(extra) > 1 else 'es'))


def check_message_locations(options, opts):
  """After the other checks: Dataflow needs BigQuery; local inputs must
  exist and the warehouse must be writable. Returns the files a local
  replay will read (for its progress), else None."""
  if is_dataflow(options):
    if not opts.output_table:
      raise UsageError('DataflowRunner needs --output_table (BigQuery); '
                           '--warehouse is a local file')
    return None
  if is_dry_run(options):
    return None
  matched = None
  if opts.input_file:
    matched = check_replay_files(
        '--input_file', opts.input_file,
        match_input_files('--input_file', opts.input_file, options))
  if not opts.output_table or opts.input_subscription:
    # The local reader keeps delivery counts in the warehouse file too.
    check_local_warehouse('--warehouse', opts.warehouse)
  return matched


def _named(paths, most=3):
  return ', '.join(paths[:most]) + (
      ' (and %d more)' % (len(paths) - most) if len(paths) > most else '')


def check_replay_files(flag, pattern, matched):
  """The files a replay reads, of those ``pattern`` matched
  (``message_files.classify``): the archiver's temporary files skipped
  with one warning line (none left: a one-line UsageError); a file that is
  not an archive file among archive files, a one-line UsageError naming it
  (exit 2, before anything is stored)."""
  import logging
  from transforms import message_files
  by_path = {m.path: m for m in matched}
  read, temp, foreign = message_files.classify(sorted(by_path))
  if temp and not read:
    raise UsageError('%s: %r matches only the archiver\'s temporary files '
                     '(writes a kill cut short), which a replay never '
                     'reads: %s' % (flag, pattern, _named(temp)))
  if foreign:
    path, why = foreign[0]
    more = len(foreign) - 1
    others = len(read) - len(foreign)
    raise UsageError('%s: %s is not an archive file (%s)%s%s: a replay of '
                     'an archive reads archive files only; give a glob that '
                     'matches them alone (e.g. DIR/**.avro)' % (
                         flag, path, why,
                         ', nor are %d more' % more if more else '',
                         ', unlike the %d other file%s matched' % (
                             others, '' if others == 1 else 's')
                         if others else ''))
  if temp:
    logging.getLogger(__name__).warning(
        '%s: skipping %d temporary file%s the archiver left (writes a kill '
        'cut short; never read): %s', flag, len(temp),
        '' if len(temp) == 1 else 's', _named(temp))
  return [by_path[p] for p in read]


CLUSTER_TYPES = ('STRING', 'INTEGER', 'INT64', 'NUMERIC', 'BIGNUMERIC', 'BOOLEAN',
                 'BOOL', 'DATE', 'DATETIME', 'TIMESTAMP', 'GEOGRAPHY')


def check_layout(layout, schema):
  """One-line errors for a rows table layout its schema cannot have."""
  by_name = {f.name.lower(): f for f in schema.fields}
  field = layout.partition_field
  if field and field != '_PARTITIONTIME':
    f = by_name.get(field.lower())
    if f is None or f.type not in ('TIMESTAMP', 'DATE', 'DATETIME') or (
        f.mode == 'REPEATED'):
      raise UsageError('--partition_field: %r is not a TIMESTAMP, DATE or '
                       'DATETIME field of the table (or _PARTITIONTIME)' % field)
    if f.type == 'DATE' and layout.granularity == 'HOUR':
      raise UsageError('--partition_granularity: a DATE field has no hours')
  if len(layout.cluster_fields) > 4:
    raise UsageError('--cluster_fields: at most 4 fields, not %d' %
                     len(layout.cluster_fields))
  for name in layout.cluster_fields:
    f = by_name.get(name.lower())
    if f is None or f.mode == 'REPEATED' or f.type not in CLUSTER_TYPES:
      raise UsageError('--cluster_fields: %r is not a top-level, non-repeated '
                       'field of a type BigQuery clusters by' % name)


# What a window, a lateness or a local wait may be: a day for waits, 366
# days for windows and lateness (a window is a TIMESTAMP range, and state
# kept for a year of lateness is what a stream can hold).
DAY_SECONDS = 86400
MAX_WINDOW_SECONDS = 366 * DAY_SECONDS


def check_range(flag, value, low, high, what='seconds'):
  """A one-line UsageError unless low <= value <= high (NaN included)."""
  if not low <= value <= high:
    raise UsageError('%s must be %s to %s %s, not %s' % (
        flag, '{:,}'.format(low), '{:,}'.format(high), what, value))


# Flags whose gs:// value reads or writes Cloud Storage.
GCS_FLAGS = ('schema', 'udf', 'input_file', 'output_directory', 'input',
             'output', 'temp_location', 'staging_location')
PUBSUB_FLAGS = ('input_subscription', 'input_topic', 'dead_letter_topic')


def needs_credentials(options, on_dataflow=False):
  """The first flag of this run that reaches Google Cloud without an
  emulator in its place (None: none does)."""
  opts = options.get_all_options()
  if on_dataflow:
    return '--runner DataflowRunner'
  if not os.environ.get('STORAGE_EMULATOR_HOST'):
    for name in GCS_FLAGS:
      if str(opts.get(name) or '').startswith('gs://'):
        return '--%s %s' % (name, opts[name])
  output = opts.get('output_table')
  if (output and not os.environ.get('BIGQUERY_EMULATOR_HOST') and
      not table_specs.is_local_warehouse(output)):
    return '--output_table %s' % output
  if not os.environ.get('PUBSUB_EMULATOR_HOST'):
    for name in PUBSUB_FLAGS:
      if opts.get(name):
        return '--%s %s' % (name, opts[name])
  return None


def check_credentials(flag):
  """A run whose ``flag`` reaches Google Cloud with no credentials to do it
  says so in one line, with what provides them, before any client retries
  (None: nothing to check)."""
  if flag is None:
    return
  import logging
  import google.auth
  from google.auth import exceptions
  quiet = logging.getLogger('google.auth._default')
  level = quiet.level
  quiet.setLevel(logging.ERROR)  # its warning would say the same, worse
  try:
    google.auth.default()
  except exceptions.DefaultCredentialsError:
    raise UsageError(
        '%s reaches Google Cloud and there are no Google credentials here: '
        'run `gcloud auth application-default login` (or set '
        'GOOGLE_APPLICATION_CREDENTIALS), or for the local emulators `eval '
        '"$(./run.sh emulators env)"`' % flag)
  finally:
    quiet.setLevel(level)


def check_gcs_credentials(flag, path):
  """Before reading ``path`` at launch: gs:// without an emulator needs
  credentials (else Google's client retries for 25 s, then a traceback)."""
  if str(path).startswith('gs://') and not os.environ.get(
      'STORAGE_EMULATOR_HOST'):
    check_credentials('%s %s' % (flag, path))
