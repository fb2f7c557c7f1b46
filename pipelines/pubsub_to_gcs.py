"""Pub/Sub -> an archive of windowed files on GCS (or a local folder): every
message kept exactly (payload bytes, attributes, id, publish time, ordering
key), in ``YYYY/MM/DD/HH/`` folders by event-time window, for backfills
after a fix, audits and recovery. Replay it with ``--input_file
'gs://B/archive/**'`` into user_signin or pubsub_to_bigquery: the messages
come back with their original ids, so a replay adds only what a table lacks.

    main.py pubsub_to_gcs --input_subscription S --output_directory gs://B/archive
"""

import os

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import checks
from pipelines import launcher
from pipelines import options as pipeline_options
from pipelines.errors import UsageError
from transforms import archive
from transforms import archive_compaction
from transforms.read_messages import ReadMessages

PROG = 'main.py pubsub_to_gcs'
MAX_SHARDS = 10000  # five digits in a shard's name


class ArchiveOptions(PipelineOptions):
  """Flags of the pubsub_to_gcs pipeline."""
  TITLE = 'pubsub_to_gcs'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--output_directory', default='output/archive',
        help='Where the archive goes: gs://BUCKET/PATH or a local folder.')
    parser.add_argument(
        '--format', default='avro', choices=archive.FORMATS,
        help='avro (BigQuery loads it; Google\'s template writes it), '
        'parquet (DuckDB and analysts read it best) or jsonl (gzipped JSON '
        'lines, payload in base64).')
    parser.add_argument(
        '--output_filename_prefix', default='',
        help='Put before every file name.')


OPTIONS = [ArchiveOptions, pipeline_options.WindowOptions,
           pipeline_options.ShardOptions, pipeline_options.MessageSourceOptions]


def run(argv=None):
  """Parses flags and runs; a local stream runs until SIGINT or SIGTERM."""
  argv = list(argv or [])
  options = pipeline_options.parse_options(argv, OPTIONS, PROG, __doc__)
  pipeline_options.window_seconds(options, 'pubsub_to_gcs')
  opts = pipeline_options.flag_values(options)
  job = launcher.Job('pubsub_to_gcs', options, argv, streaming=True,
                     reports_messages=True)
  check(options, opts)
  with job.start(output=opts.output_directory):
    pipeline = job.pipeline()
    build(pipeline, options)
    result = job.run(pipeline)
  if opts.num_shards and job.runs_locally:  # the windows a stop left open
    archive_compaction.compact_recent(
        opts.output_directory, opts.format, opts.window_seconds,
        opts.output_filename_prefix, opts.num_shards)
  return result


def build(pipeline, options):
  """The graph on ``pipeline`` from ``options``: messages -> archive files,
  each window's compacted into shards once it closes (--num_shards)."""
  opts = pipeline_options.flag_values(options)
  messages = pipeline | 'ReadMessages' >> ReadMessages.from_flags(opts)
  files = messages | 'ArchiveMessages' >> archive.ArchiveMessages(
      opts.output_directory, opts.format, opts.window_seconds,
      opts.output_filename_prefix)
  if opts.num_shards:
    _ = files | 'CompactClosedWindows' >> (
        archive_compaction.CompactClosedWindows(
            opts.output_directory, opts.format, opts.window_seconds,
            opts.output_filename_prefix, opts.num_shards))


def check(options, opts):
  """One-line errors, before any work."""
  if opts.input_file:
    raise UsageError('--input_file: pubsub_to_gcs archives Pub/Sub; give '
                     '--input_subscription or --input_topic')
  checks.check_message_flags(opts, ())
  checks.check_range('--window_seconds', opts.window_seconds, 1,
                     checks.MAX_WINDOW_SECONDS)
  if not 0 <= opts.num_shards <= MAX_SHARDS:
    raise UsageError('--num_shards must be 0 (keep the bundle files) to %d, '
                     'not %s' % (MAX_SHARDS, opts.num_shards))
  if '/' in opts.output_filename_prefix:
    raise UsageError('--output_filename_prefix: no "/" in a file name prefix')
  check_name_lengths(opts)
  if opts.output_directory.startswith('gs://'):
    checks.check_gcs_location('--output_directory', opts.output_directory)
  elif checks.is_dataflow(options):
    raise UsageError('--output_directory: Dataflow workers write gs://, not '
                     'a local folder')
  elif not checks.is_dry_run(options):
    checks.check_local_output('--output_directory', opts.output_directory,
                              is_file=False)
  if not checks.is_dataflow(options) and not checks.is_dry_run(options):
    checks.check_local_warehouse('--warehouse', opts.warehouse)  # deliveries


GCS_OBJECT_NAME_BYTES = 1024  # https://cloud.google.com/storage/docs/objects#naming
TEMP_SUFFIX_BYTES = len('.0123abcd.tmp')  # a local file's temp name adds


def check_name_lengths(opts):
  """The longest name the archive writes (a bundle file, a shard file, and
  the temp file each is written as first) must fit the file system: a name
  too long is ``ENAMETOOLONG`` on every write, which no waiting fixes."""
  directory = opts.output_directory.rstrip('/')
  longest = max(
      archive.file_path(directory, opts.output_filename_prefix, 0,
                        opts.window_seconds, 'f' * 12, opts.format),
      archive_compaction.shard_path(
          directory, opts.output_filename_prefix, 0, opts.window_seconds,
          MAX_SHARDS - 1, MAX_SHARDS - 1, 'f' * 8, opts.format),
      key=len)
  name = os.path.basename(longest).encode('utf-8', 'surrogateescape')
  if directory.startswith('gs://'):
    object_name = longest[len('gs://'):].partition('/')[2]
    size, limit = len(object_name.encode('utf-8', 'surrogateescape')), (
        GCS_OBJECT_NAME_BYTES)
    what = 'GCS object names are at most'
  else:
    size, limit = len(name) + TEMP_SUFFIX_BYTES, _name_max(directory)
    what = 'this file system\'s file names are at most'
  if size > limit:
    raise UsageError(
        '--output_filename_prefix: archive file names would be %d bytes; %s '
        '%d (a prefix of at most %d bytes fits)' % (
            size, what, limit, max(0, limit - (size - len(
                opts.output_filename_prefix.encode('utf-8',
                                                   'surrogateescape'))))))


def _name_max(directory):
  """NAME_MAX of the file system that holds ``directory`` (its nearest
  existing folder), 255 when the system does not say."""
  folder = os.path.abspath(directory or '.')
  while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
    folder = os.path.dirname(folder)
  try:
    return os.pathconf(folder, 'PC_NAME_MAX')
  except (OSError, ValueError):
    return 255
