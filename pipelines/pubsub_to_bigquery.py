"""Any JSON event from Pub/Sub (or a JSON-lines replay) -> rows of a table
whose BigQuery schema you give, and a dead letter naming the reason and the
field for every message that cannot be a row; in BigQuery
(``--output_table``) or a local DuckDB file (``--warehouse``, ``--table``).

    main.py pubsub_to_bigquery --schema orders.json --input_subscription S \\
        --output_table P:D.orders

Every message ends in exactly one place, keyed by its message id.
"""

import json
import os

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import checks
from pipelines import launcher
from pipelines import options as pipeline_options
from pipelines.errors import UsageError
from pipelines.tables import Destinations
from pipelines.tables import Layout
from pipelines.tables import Table
from pipelines.tables import bigquery_flags
from pipelines.tables import flag_layout
from storage import table_specs
from transforms import json_messages
from transforms import json_rows
from transforms import payload_schemas
from transforms import payloads
from transforms import schemas
from transforms import udf
from transforms.read_messages import ReadMessages
from transforms.store import StoreRowsAndDeadLetters

PROG = 'main.py pubsub_to_bigquery'


class PubsubToBigQueryOptions(PipelineOptions):
  """Flags of the pubsub_to_bigquery pipeline."""
  TITLE = 'pubsub_to_bigquery'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--schema', default=None,
        help='BigQuery JSON schema file of the table (local or gs://), as '
        '`bq show --schema --format=prettyjson` prints it.')
    parser.add_argument(
        '--table', default=None,
        help='Local table name in --warehouse (default: the schema file\'s '
        'stem); dead letters go to <table>_error_records.')
    parser.add_argument(
        '--unknown_fields', default='ignore', choices=['ignore', 'reject'],
        help='Fields the schema does not know: ignore them, or reject the '
        'message as an unknown_field dead letter.')
    parser.add_argument(
        '--event_time_field', default=None,
        help='A TIMESTAMP field of the schema that sets each row\'s event '
        'time (default: the publish time).')
    parser.add_argument(
        '--udf', default=None,
        help='FILE.py:function (local or gs://) applied to each message\'s '
        'JSON object before the schema check: it returns an object, a list '
        'of objects (several rows) or None (dropped, counted); an exception '
        'is a udf_error dead letter. Its source travels with the job.')
    parser.add_argument(
        '--udf_timeout_seconds', type=float,
        default=udf.DEFAULT_TIMEOUT_SECONDS,
        help='The longest one --udf call may run on one message: a call '
        'over it is ended (the UDF runs in a worker process, killed and '
        'restarted) and its message is a udf_timeout dead letter; the '
        'stream goes on.')
    parser.add_argument(
        '--message_id_column', default=True,
        type=lambda v: str(v).lower() not in ('false', '0', 'no'),
        help='Add a message_id column (the Pub/Sub id, or file:PATH:LINE): '
        'what makes redeliveries and replays idempotent. true or false.')
    parser.add_argument(
        '--nomessage_id_column', dest='message_id_column',
        action='store_false', help='The same as --message_id_column false.')
    parser.add_argument(
        '--payload_format', default='json', choices=payloads.FORMATS,
        help='What the payloads are: JSON, or Avro or Protocol Buffers under '
        'a Pub/Sub topic schema (--payload_schema). docs/payloads.md has the '
        'type mapping.')
    parser.add_argument(
        '--payload_schema', default=None,
        help='The topic schema of avro or protobuf payloads: an .avsc, a '
        '.proto with one top-level message, or a descriptor set (.pb, '
        '.desc); a local folder of them named by revision id; or '
        'projects/P/schemas/S in Pub/Sub\'s schema service (every revision, '
        'and one committed later when a message names it). Each message is '
        'decoded with the revision its googclient_schemarevisionid '
        'attribute names. Without --schema the table is derived from it.')
    parser.add_argument(
        '--payload_encoding', default='binary', choices=payloads.ENCODINGS,
        help='The encoding of messages without a googclient_schemaencoding '
        'attribute (Pub/Sub sets it on messages of a topic with a schema).')
    parser.add_argument(
        '--write_metadata', action='store_true', default=False,
        help='Add subscription_name, publish_time and attributes (JSON, with '
        'the ordering key) columns beside message_id, as a BigQuery '
        'subscription\'s write_metadata does.')


OPTIONS = [PubsubToBigQueryOptions, pipeline_options.MessageSourceOptions,
           pipeline_options.MessageKeyOptions,
           pipeline_options.BigQueryOutputOptions,
           pipeline_options.TableLayoutOptions]


def tables_of(schema):
  """The rows table of ``schema`` and its dead-letter table."""
  return (
      Table('rows', '--output_table', schema),
      Table('dead_letters', '--dead_letter_table',
            schemas.error_records(schema.name + '_error_records'),
            '_error_records', Layout('timestamp')))


# The flags naming the tables, whatever the schema.
TABLE_FLAGS = bigquery_flags(tables_of(schemas.TableSchema('any', ())))


def run(argv=None):
  """Parses flags and runs; a local stream runs until SIGINT or SIGTERM."""
  argv = list(argv or [])
  options = pipeline_options.parse_options(argv, OPTIONS, PROG, __doc__)
  opts = pipeline_options.flag_values(options)
  job = launcher.Job('pubsub_to_bigquery', options, argv,
                     streaming=not opts.input_file, reports_messages=True)
  schema, function, replayed = check(options, opts)
  with job.start(Destinations.of(tables_of(schema), opts),
                 input_files=replayed):
    pipeline = job.pipeline()
    build(pipeline, options, job.destinations, function)
    return job.run(pipeline)


def build(pipeline, options, destinations=None, function=None, source=None):
  """The graph on ``pipeline`` from ``options``: messages -> rows of the
  schema (through the UDF first, if given) and dead letters, stored;
  returns every dead letter. ``destinations`` (with the schema) and
  ``function`` (the UDF) as ``run`` loaded them; by default read from the
  flags. ``source``: what reads the messages (default: as the flags name
  it; a redrive's ``redriven.DeadLetterMessages``)."""
  opts = pipeline_options.flag_values(options)
  if destinations is None:
    destinations = Destinations.of(tables_of(load_schema(opts, options)), opts)
  if function is None:
    function = load_udf(opts, options)
  # A replay reads in blocks: nothing here windows the rows.
  read = source or ReadMessages.from_flags(opts, blocks=True)
  messages = pipeline | 'ReadMessages' >> read
  # A replay into DuckDB stores Arrow: its blocks' rows come as columns.
  columns = read.blocks and source is None and table_specs.is_local_warehouse(
      destinations['rows'].spec)
  parsed = parse(messages, options, function, destinations['rows'].schema,
                 read.blocks, columns)
  return ((parsed.rows, parsed.dead_letters)
          | 'StoreRowsAndDeadLetters' >> StoreRowsAndDeadLetters(
              destinations['rows'], destinations['dead_letters'],
              opts.bigquery_method, dead_letter_topic=opts.dead_letter_topic,
              row_blocks=read.blocks,
              settles_dead_letters=getattr(read, 'message_ids', None)))


def parse(messages, options, function=None, schema=None, blocks=False,
          columns=False):
  """Messages (MessageBlocks with ``blocks``) -> the parse step's rows of
  ``schema`` (default: --schema's) and dead letters, through ``function``
  (the UDF) first when given; with ``columns``, a block's rows as one
  ColumnBlock where the step can (a sink that stores Arrow)."""
  opts = pipeline_options.flag_values(options)
  if schema is None:
    schema = load_schema(opts, options)
  return messages | 'ParseMessages' >> json_messages.ParseJsonMessages(
      schema, opts.unknown_fields, opts.event_time_field,
      opts.max_message_bytes, udf=function, blocks=blocks,
      udf_timeout_seconds=getattr(opts, 'udf_timeout_seconds', None),
      payloads=load_payloads(opts, options),
      metadata=(opts.input_subscription or '') if getattr(
          opts, 'write_metadata', False) else None, columns=columns)


def check(options, opts):
  """One-line errors, before any work; returns the table's schema, the UDF
  (or None) and the files a local replay matched."""
  checks.check_message_flags(opts, TABLE_FLAGS)
  checks.check_id_attribute(options, opts)
  if not 0 < opts.udf_timeout_seconds < float('inf'):
    raise UsageError('--udf_timeout_seconds: %g is not a positive number of '
                     'seconds' % opts.udf_timeout_seconds)
  schema = load_schema(opts, options)
  if (not opts.message_id_column and not opts.input_file and
      not checks.is_dataflow(options)):
    raise UsageError(
        '--message_id_column false: a local stream needs the message_id '
        'column to store a redelivered message once (Pub/Sub delivers at '
        'least once); keep it, or run on Dataflow, which drops redeliveries '
        'by message id')
  if opts.event_time_field:
    by_name = {f.name: f for f in schema.fields}
    field = by_name.get(opts.event_time_field)
    if field is None or field.type != 'TIMESTAMP' or field.mode == 'REPEATED':
      raise UsageError('--event_time_field: %r is not a TIMESTAMP field '
                       'of the schema' % opts.event_time_field)
  checks.check_layout(flag_layout(opts), schema)
  replayed = checks.check_message_locations(options, opts)
  return schema, load_udf(opts, options), replayed


def load_udf(opts, options):
  """--udf's source, read now (local or gs://): it travels with the job."""
  if not opts.udf:
    return None
  from apache_beam.io.filesystems import FileSystems
  checks.check_gcs_credentials('--udf', opts.udf)
  FileSystems.set_options(options)

  def read(path):
    with FileSystems.open(path) as f:
      return f.read()
  try:
    return udf.Udf.load(opts.udf, read)
  except ValueError as e:
    raise UsageError('--udf: %s' % e)


_REVISIONS = {}  # (format, path) -> revisions: a .proto compiles once


def load_revisions(opts, options):
  """--payload_schema -> {revision id or None: revision}; UsageError."""
  fmt = getattr(opts, 'payload_format', 'json')
  if fmt == 'json':
    if getattr(opts, 'payload_schema', None):
      raise UsageError('--payload_schema: JSON payloads take no payload '
                       'schema; give --payload_format avro or protobuf')
    return None
  if not opts.payload_schema:
    raise UsageError('--payload_format %s needs --payload_schema (the topic '
                     'schema: a file, or a folder of revisions)' % fmt)
  key = (fmt, opts.payload_schema)
  if key not in _REVISIONS:
    from apache_beam.io.filesystems import FileSystems
    checks.check_gcs_credentials('--payload_schema', opts.payload_schema)
    if payload_schemas.SERVICE_SCHEMA.fullmatch(opts.payload_schema) and (
        not os.environ.get('PUBSUB_EMULATOR_HOST')):
      checks.check_credentials('--payload_schema %s' % opts.payload_schema)
    FileSystems.set_options(options)

    def read(path):
      with FileSystems.open(path) as f:
        return f.read()
    try:
      _REVISIONS[key] = payload_schemas.load(opts.payload_schema, fmt, read)
    except (OSError, IOError) as e:
      raise UsageError('--payload_schema: cannot read %r: %s' % (
          opts.payload_schema, str(e).splitlines()[0]))
    except ValueError as e:
      raise UsageError('--payload_schema: %s' % str(e).splitlines()[0])
  return _REVISIONS[key]


def load_payloads(opts, options):
  """The payload decoder the flags ask for."""
  revisions = load_revisions(opts, options)
  if revisions is None:
    return payloads.JsonPayloads()
  service = payload_schemas.SchemaService(
      opts.payload_schema, opts.payload_format) if (
          payload_schemas.SERVICE_SCHEMA.fullmatch(opts.payload_schema)) else (
              None)
  return payloads.SchemaPayloads(opts.payload_format, revisions,
                                 opts.payload_encoding, service)


def _with_metadata(fields, opts):
  """The schema's fields with --write_metadata's columns."""
  if not getattr(opts, 'write_metadata', False):
    return fields
  if isinstance(fields, dict):
    fields = fields.get('fields') or []
  taken = {json_rows.fold(str(f.get('name', '')))
           for f in fields if isinstance(f, dict)}
  for name, _, _ in json_messages.METADATA_FIELDS:
    camel = name.split('_')[0] + ''.join(
        p.capitalize() for p in name.split('_')[1:])
    if {name, json_rows.fold(camel)} & taken:
      raise UsageError('--write_metadata: the schema has a field named %s '
                       '(or its camelCase), which the metadata columns take '
                       'as a BigQuery subscription does' % name)
  return list(fields) + [
      {'name': name, 'type': kind, 'mode': 'NULLABLE', 'description': text}
      for name, kind, text in json_messages.METADATA_FIELDS]


def load_schema(opts, options):
  """The --schema file -> TableSchema; one-line UsageError when it is wrong.
  Without --schema, avro and protobuf payloads' table is derived from
  --payload_schema."""
  from apache_beam.io.filesystems import FileSystems
  revisions = load_revisions(opts, options)
  if not opts.schema and revisions is not None:
    if getattr(opts, 'write_metadata', False) and not opts.message_id_column:
      raise UsageError('--write_metadata needs the message_id column')
    name = opts.table or os.path.splitext(os.path.basename(
        opts.payload_schema.rstrip('/')))[0]
    try:
      return schemas.table_from_bigquery_schema(
          _with_metadata(payload_schemas.merged_fields(revisions), opts),
          name, message_id_column=opts.message_id_column)
    except ValueError as e:
      raise UsageError('--payload_schema: %s' % e)
  if not opts.schema:
    raise UsageError('--schema is required (a BigQuery JSON schema file)')
  if getattr(opts, 'write_metadata', False) and not opts.message_id_column:
    raise UsageError('--write_metadata needs the message_id column')
  checks.check_gcs_credentials('--schema', opts.schema)
  FileSystems.set_options(options)
  try:
    with FileSystems.open(opts.schema) as f:
      fields = json.loads(f.read().decode('utf-8'))
  except (OSError, IOError, ValueError) as e:
    raise UsageError('--schema: cannot read %r: %s' % (
        opts.schema, str(e).splitlines()[0]))
  name = opts.table or os.path.splitext(os.path.basename(opts.schema))[0]
  try:
    return schemas.table_from_bigquery_schema(
        _with_metadata(fields, opts), name,
        message_id_column=opts.message_id_column)
  except ValueError as e:
    raise UsageError('--schema: %s' % e)
