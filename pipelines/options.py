"""Every pipeline's flags, as PipelineOptions classes (so ``--help`` lists
them, grouped, and the Flex Template metadata is generated from them), and
the parse of a command line against ours and Beam's with one-line errors."""

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import _BeamArgumentParser

from local_runner import pump
from pipelines.errors import OneLineErrors
from pipelines.errors import UsageError
from pipelines.tables import GRANULARITIES
from transforms import bigquery_sink
from transforms import dead_letters


class CommonOptions(PipelineOptions):
  """Flags every pipeline of ours takes."""
  TITLE = 'logging'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--log_file', default=None,
        help='Also write DEBUG-level logs to this file (the console gets INFO).')


class BigQueryOutputOptions(PipelineOptions):
  """Flags shared by pipelines that can write to BigQuery."""
  TITLE = 'BigQuery output'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--output_table', default=None,
        help='Also write results to this BigQuery table, PROJECT:DATASET.TABLE '
        '(created from the schema in code if missing). wordcount also takes '
        'a local DuckDB file here (*.duckdb), table word_counts.')
    parser.add_argument(
        '--bigquery_method', default='default',
        choices=bigquery_sink.BIGQUERY_METHODS,
        help='How rows reach BigQuery. default: file loads for batch, '
        'streaming inserts for streaming. storage_write_api needs a Java '
        'expansion service at pipeline construction.')


class TableLayoutOptions(PipelineOptions):
  """How BigQuery lays out the rows table a pipeline creates."""
  TITLE = 'BigQuery table layout'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--partition_field', default=None,
        help='Partition the rows table this run creates by this TIMESTAMP, '
        'DATE or DATETIME field, or by ingestion time with _PARTITIONTIME; '
        '"" for none. Default: the pipeline\'s (user_signin: date). An '
        'existing table\'s partitioning is checked, not changed.')
    parser.add_argument(
        '--partition_granularity', default=None, choices=GRANULARITIES,
        type=str.upper, help='Partitions of an HOUR, DAY, MONTH or YEAR '
        '(default DAY).')
    parser.add_argument(
        '--cluster_fields', default=None,
        help='Cluster the rows table by these top-level fields, a,b (at most '
        '4); "" for none. Default: the pipeline\'s (user_signin: userid).')


class WindowOptions(PipelineOptions):
  """The event-time window of the pipelines that have one (one class: two
  pipelines imported together cannot both register the flag)."""
  TITLE = 'event-time windows'
  DEFAULTS = {'user_signin': 60, 'pubsub_to_gcs': 300}

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--window_seconds', type=int, default=None,
        help='Length of the fixed event-time windows: user_signin counts '
        'sign-ins per user in them (default 60), pubsub_to_gcs writes a '
        'file per window (default 300). 1 s to 366 days.')


class ShardOptions(PipelineOptions):
  """--num_shards of the pipelines that write files (one class: two
  pipelines imported together cannot both register the flag)."""
  TITLE = 'file shards'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--num_shards', type=int, default=0,
        help='wordcount: output text shards (1 writes a single file; 0, the '
        'default, lets the runner decide). pubsub_to_gcs: files per window '
        'once it has closed: its files (one per bundle, written as messages '
        'arrive) are merged into N shard files (<window>-SSSSS-of-NNNNN-<id>, '
        'a message to shard crc32(id) mod N); 0, the default, keeps the '
        'bundle files as written.')


def window_seconds(options, pipeline):
  """--window_seconds, or ``pipeline``'s default (set in ``options``) when
  not given."""
  view = options.view_as(WindowOptions)
  if view.window_seconds is None:
    view.window_seconds = WindowOptions.DEFAULTS[pipeline]
  return view.window_seconds


class MessageKeyOptions(PipelineOptions):
  """What keys a message in the pipelines that store rows (the archive
  keeps messages as published)."""
  TITLE = 'message key'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--id_attribute', default=None,
        help='An attribute holding the event\'s own id (a publisher that '
        'retries publishes one event under new message ids): rows, dead '
        'letters and counts are keyed by it (message_id NAME=VALUE), so a '
        'repeat is a no-op, live and in replays; on Dataflow it is also '
        'ReadFromPubSub\'s id_label. A message without it keeps its message '
        'id (said once in the log).')


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
      '--dead_letter_topic', default=None,
      help='Also publish every dead letter to this Pub/Sub topic, '
      'projects/P/topics/T (payload, and attributes dead_letter_reason, '
      'dead_letter_field, original_message_id, error_message), before its '
      'table has it: for alerting and other consumers.')
  parser.add_argument(
      '--max_message_bytes', type=int,
      default=dead_letters.MAX_MESSAGE_BYTES,
      help='Larger payloads become too_large dead letters (a prefix kept).')
  parser.add_argument(
      '--progress_seconds', type=float, default=5,
      help='Local streaming runs log progress this often.')
  parser.add_argument(
      '--local_pubsub_reader', default='ack_after_commit',
      choices=['ack_after_commit', 'beam'],
      help='Local runs reading --input_subscription: ack_after_commit '
      'acknowledges a message once the runner is done with whatever it '
      'became (rows and dead letters stored, or dropped by a UDF) and pulls '
      'up to 2,000 at a time; beam is Beam\'s own local read (acks on pull, '
      '10 per bundle). Dataflow always uses Beam\'s read.')
  parser.add_argument(
      '--timestamp_attribute', default=None,
      help='Pub/Sub attribute holding each message\'s event time '
      '(milliseconds since the epoch, or RFC 3339 with any number of '
      'fractional digits, those past microseconds dropped). With the local '
      'reader a value that is not a timestamp of years 1-9999 makes that '
      'message a bad_timestamp_attribute dead letter (pubsub_to_gcs archives '
      'it by its publish time).')
  parser.add_argument(
      '--max_delivery_attempts', type=int, default=5,
      help='Local ack-after-commit reader: a message pulled this many times '
      'without being stored (it crashed the pipeline each time) becomes a '
      'too_many_attempts dead letter.')
  parser.add_argument(
      '--max_in_flight', type=int, default=pump.MAX_IN_FLIGHT,
      help='Local ack-after-commit reader: at most this many messages '
      'pulled and not yet acknowledged; it pauses pulling at the bound.')
  parser.add_argument(
      '--max_in_flight_mb', type=int,
      default=pump.MAX_IN_FLIGHT_BYTES >> 20,
      help='The same bound in megabytes of messages (payload and '
      'attributes).')
  parser.add_argument(
      '--drain_seconds', type=float, default=10,
      help='Local streaming stop (SIGTERM, Ctrl-C): how long messages in '
      'flight may take to be stored; the whole stop takes at most this + '
      '5 s whatever Pub/Sub does, and a second signal exits at once.')
  parser.add_argument(
      '--status_file', default=None,
      help='Local runs also write their progress here as JSON, each time '
      'they log it.')


class _OneLineBeamParser(OneLineErrors, _BeamArgumentParser):
  """Beam's argument parser with one-line errors."""


# The Beam flags a person running our pipelines reaches for; ``--help``
# shows these after our own, ``--help_beam`` every one of Beam's.
BEAM_FLAGS_SHOWN = (
    '--runner', '--project', '--region', '--temp_location',
    '--staging_location', '--job_name', '--streaming', '--num_workers',
    '--max_num_workers', '--machine_type', '--service_account_email',
    '--setup_file', '--update', '--dry_run', '--render_output',
    '--direct_num_workers')
_MARKUP = (
    (re.compile(r':[a-z]+:`~?([^`]*)`'), r'\1'),  # :class:`x`
    (re.compile(r'``([^`]*)``'), r'\1'),
    (re.compile(r'`([^`]*)`_?'), r'\1'))


def plain(text):
  """Help text without the reStructuredText markup Beam's help is written
  in (``x``, :class:`x`), which argparse would show literally."""
  for pattern, replacement in _MARKUP:
    text = pattern.sub(replacement, text)
  return text


class _PlainHelp(argparse.RawDescriptionHelpFormatter):
  def _expand_help(self, action):
    return plain(super()._expand_help(action))


def _for_people(parser, beam_group, every_beam_flag):
  """--help: our flags, grouped, then BEAM_FLAGS_SHOWN in a group of their
  own; Beam's others hidden unless ``every_beam_flag`` (--help_beam)."""
  parser.usage = '%(prog)s [flags] [Beam flags]'
  shown = set(BEAM_FLAGS_SHOWN)
  for group in list(parser._action_groups):  # pylint: disable=protected-access
    if group is beam_group or getattr(group, 'ours', False):
      continue
    for action in list(group._group_actions):  # pylint: disable=protected-access
      if action.dest == 'help':
        continue
      if any(o in shown for o in action.option_strings):
        group._group_actions.remove(action)  # pylint: disable=protected-access
        beam_group._group_actions.append(action)  # pylint: disable=protected-access
      elif not every_beam_flag:
        action.help = argparse.SUPPRESS
  if every_beam_flag:
    beam_group.title = 'Beam and runner options (the most used)'
  else:
    beam_group.description = (
        'The most used of Beam\'s; every one of them: --help_beam.')


def _beam_option_classes(ours, argv):
  """Every registered PipelineOptions class except other pipelines' own."""
  if any(a.startswith(('--render', '-h', '--help')) for a in argv):
    # Registers --render_output; imported only when asked for (3 MB of RSS).
    import apache_beam.runners.render  # noqa: F401  pylint: disable=unused-import
  seen = {}
  for cls in PipelineOptions.__subclasses__():
    if cls in ours or cls.__module__.startswith('pipelines.'):
      continue
    seen.setdefault(str(cls), cls)
  return list(seen.values())


def parse_options(argv, option_classes, prog, description):
  """Checks argv against our flags and Beam's; returns PipelineOptions.

  Unknown or malformed flags raise UsageError with argparse's one-line
  message (Beam itself would only warn and drop them).
  """
  every_beam_flag = '--help_beam' in argv
  if every_beam_flag:
    argv = [a for a in argv if a != '--help_beam'] + ['--help']
  parser = _OneLineBeamParser(
      prog=prog, description=plain(description or ""), allow_abbrev=False,
      formatter_class=_PlainHelp)
  ours = [CommonOptions] + list(option_classes)
  groups = []
  for cls in ours:
    group = parser.add_argument_group(getattr(cls, 'TITLE', cls.__name__))
    group.ours = True
    cls._add_argparse_args(group)  # pylint: disable=protected-access
    groups.append(group)
  beam_group = parser.add_argument_group('Beam and runner options')
  for cls in _beam_option_classes(ours, argv):
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  if any(a in ('-h', '--help') for a in argv):
    _for_people(parser, beam_group, every_beam_flag)
  # Show our flags first, Beam's after them.
  parser._action_groups = groups + [beam_group] + [  # pylint: disable=protected-access
      g for g in parser._action_groups if g not in groups and g is not beam_group]
  _, unknown = parser.parse_known_args(argv)
  if unknown:
    raise UsageError('unrecognized argument: %s' % unknown[0])
  return PipelineOptions(argv)


def flag_values(options):
  """All flag values, ours and Beam's, as one namespace (``view_as`` shows
  one class at a time)."""
  return argparse.Namespace(**options.get_all_options())
