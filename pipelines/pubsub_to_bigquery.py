"""Any JSON event from Pub/Sub (or a JSON-lines replay) -> rows of a table
whose BigQuery schema you give, and a dead letter naming the reason and the
field for every message that cannot be a row; in BigQuery
(``--output_table``) or a local DuckDB file (``--warehouse``, ``--table``).

    main.py pubsub_to_bigquery --schema orders.json --input_subscription S \
        --output_table P:D.orders

Every message ends in exactly one place, keyed by its message id.
"""

import json
import os

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import cli
from pipelines import message_pipeline
from transforms import json_messages
from transforms import schemas

PROG = 'main.py pubsub_to_bigquery'
DESCRIPTION = __doc__


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
        '--message_id_column', default=True,
        type=lambda v: str(v).lower() not in ('false', '0', 'no'),
        help='Add a message_id column (the Pub/Sub id, or file:PATH:LINE): '
        'what makes redeliveries and replays idempotent. true or false.')


def load_schema(opts, options):
  """The --schema file -> TableSchema; one-line UsageError when it is wrong."""
  from apache_beam.io.filesystems import FileSystems
  if not opts.schema:
    raise cli.UsageError('--schema is required (a BigQuery JSON schema file)')
  FileSystems.set_options(options)
  try:
    with FileSystems.open(opts.schema) as f:
      fields = json.loads(f.read().decode('utf-8'))
  except (OSError, IOError, ValueError) as e:
    raise cli.UsageError('--schema: cannot read %r: %s' % (
        opts.schema, str(e).splitlines()[0]))
  name = opts.table or os.path.splitext(os.path.basename(opts.schema))[0]
  try:
    return schemas.table_from_bigquery_schema(
        fields, name, message_id_column=opts.message_id_column)
  except ValueError as e:
    raise cli.UsageError('--schema: %s' % e)


OPTIONS = [PubsubToBigQueryOptions, message_pipeline.MessageSourceOptions,
           cli.BigQueryOutputOptions]


def table_specs(opts):
  if opts.output_table:
    return {'rows': opts.output_table,
            'dead_letters': opts.dead_letter_table or
                            opts.output_table + '_error_records'}
  return {'rows': opts.warehouse, 'dead_letters': opts.warehouse}


def build(pipeline, opts, schema, messages=None, on_commit=None):
  """Adds the graph; ``messages`` replaces the flag-chosen source."""
  if messages is None:
    messages = message_pipeline.read_messages(pipeline, opts)
  parsed = messages | 'ParseMessages' >> json_messages.ParseJsonMessages(
      schema, opts.unknown_fields, opts.event_time_field,
      opts.max_message_bytes)
  errors = schemas.error_records(schema.name + '_error_records')
  all_dead = message_pipeline.store(
      parsed.rows, parsed[json_messages.DEAD_LETTERS],
      table_specs(opts), {'rows': schema, 'dead_letters': errors},
      opts.bigquery_method, on_commit)
  return {'rows': parsed.rows, 'dead_letters': all_dead}


def check(options, opts):
  message_pipeline.check_sources(options, opts)
  schema = load_schema(opts, options)
  if opts.event_time_field:
    by_name = {f.name: f for f in schema.fields}
    field = by_name.get(opts.event_time_field)
    if field is None or field.type != 'TIMESTAMP' or field.mode == 'REPEATED':
      raise cli.UsageError('--event_time_field: %r is not a TIMESTAMP field '
                           'of the schema' % opts.event_time_field)
  message_pipeline.check_locations(options, opts)
  return schema


def run(argv=None):
  """Parses flags and runs; local streaming runs until SIGINT or SIGTERM."""
  argv = list(argv or [])
  options = cli.parse_options(
      argv, OPTIONS, PROG,
      DESCRIPTION)
  opts = cli.flag_values(options)
  schema = check(options, opts)
  errors = schemas.error_records(schema.name + '_error_records')
  specs = table_specs(opts)
  return message_pipeline.run(
      'pubsub_to_bigquery', argv, options, opts,
      lambda pipeline, messages=None, on_commit=None: build(
          pipeline, opts, schema, messages, on_commit),
      ([(schema, None), (errors, None)],
       {'rows': schema.name, 'dead_letters': errors.name}),
      [('--output_table', specs['rows'], schema),
       ('--dead_letter_table', specs['dead_letters'], errors)])
