"""Command-line plumbing shared by every pipeline: flags with one-line errors,
the local runner choice, and what Dataflow needs from us."""

import argparse
import logging
import os
import re
import sys

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.pipeline_options import TestOptions
from apache_beam.options.pipeline_options import _BeamArgumentParser

from pipelines.errors import PipelineFailed  # noqa: F401 (pipelines use cli.*)
from pipelines.errors import UsageError
from transforms import warehouse

_LOG = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_RUNNERS = ('DirectRunner', 'direct', 'Direct', 'directrunner')
DATAFLOW_RUNNERS = ('DataflowRunner', 'dataflow', 'Dataflow', 'dataflowrunner')
LOOPBACK_METADATA = '127.0.0.1:9'


class _OneLineParser(_BeamArgumentParser):
  def error(self, message):
    raise UsageError(message)


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
        choices=warehouse.BIGQUERY_METHODS,
        help='How rows reach BigQuery. default: file loads for batch, '
        'streaming inserts for streaming. storage_write_api needs a Java '
        'expansion service at pipeline construction.')


def _beam_option_classes(ours, argv):
  """Every registered PipelineOptions class except other pipelines' own."""
  if any(a.startswith(('--render', '-h', '--help')) for a in argv):
    # Registers --render_output; imported only when asked for (3 MB of RSS).
    import apache_beam.runners.render  # noqa: F401
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
  parser = _OneLineParser(
      prog=prog, description=description, allow_abbrev=False,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  ours = [CommonOptions] + list(option_classes)
  groups = []
  for cls in ours:
    group = parser.add_argument_group(getattr(cls, 'TITLE', cls.__name__))
    cls._add_argparse_args(group)  # pylint: disable=protected-access
    groups.append(group)
  beam_group = parser.add_argument_group('Beam and runner options')
  for cls in _beam_option_classes(ours, argv):
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
  # Show our flags first, Beam's after them.
  parser._action_groups = groups + [  # pylint: disable=protected-access
      g for g in parser._action_groups if g not in groups and g is not beam_group]
  _, unknown = parser.parse_known_args(argv)
  if unknown:
    raise UsageError('unrecognized argument: %s' % unknown[0])
  return PipelineOptions(argv)


def runner_name(options):
  runner = options.view_as(StandardOptions).runner
  return runner if isinstance(runner, str) or runner is None else type(
      runner).__name__


def is_dataflow(options):
  return runner_name(options) in DATAFLOW_RUNNERS


def is_dry_run(options):
  return str(options.view_as(TestOptions).dry_run).lower() in (
      'true', '1', 'yes')


def choose_local_runner(options, argv, streaming, parallel=False):
  """Plain DirectRunner tries to download Prism first; pick the local runner
  that behaves the same online and offline. ``parallel`` batch runs use one
  worker process per core (up to 4) unless --direct_num_workers says
  otherwise: worker processes cost ~2 s to start, so small inputs run faster
  in-process (see benchmarks/README.md)."""
  standard = options.view_as(StandardOptions)
  if standard.runner is None or runner_name(options) in LOCAL_RUNNERS:
    standard.runner = 'BundleBasedDirectRunner' if streaming else 'FnApiRunner'
  if (parallel and not streaming and runner_name(options) == 'FnApiRunner' and
      not any(a.startswith('--direct_num_workers') for a in argv)):
    direct = options.view_as(DirectOptions)
    direct.direct_num_workers = min(os.cpu_count() or 1, 4)
    if direct.direct_num_workers > 1:
      direct.direct_running_mode = 'multi_processing'


def prepare_for_dataflow(options):
  """Ships our packages to Dataflow workers: setup.py unless the user gave one."""
  setup = options.view_as(SetupOptions)
  if not setup.setup_file and os.path.exists(
      os.path.join(PROJECT_ROOT, 'setup.py')):
    setup.setup_file = os.path.join(PROJECT_ROOT, 'setup.py')
  cloud = options.view_as(GoogleCloudOptions)
  missing = [
      flag for flag, value in (
          ('--project', cloud.project), ('--region', cloud.region),
          ('--temp_location', cloud.temp_location)) if not value
  ]
  if missing:
    raise UsageError('DataflowRunner needs %s' % ', '.join(missing))
  for flag, value in (('--temp_location', cloud.temp_location),
                      ('--staging_location', cloud.staging_location)):
    if value:
      check_gcs_location(flag, value)


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


def keep_auth_on_loopback():
  """Google auth probes a link-local metadata server; send it to loopback
  instead when nothing says otherwise (local runs and tests)."""
  os.environ.setdefault('NO_GCE_CHECK', 'true')
  os.environ.setdefault('GCE_METADATA_HOST', LOOPBACK_METADATA)
  os.environ.setdefault('GCE_METADATA_IP', LOOPBACK_METADATA)


def match_input_files(flag, pattern, options):
  """The files ``pattern`` matches (local or gs://); a one-line UsageError
  naming ``flag`` when it matches nothing, a directory, or cannot be listed."""
  from apache_beam.io.filesystems import FileSystems
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
  from transforms import warehouse
  check_local_output(flag, path)
  problem = warehouse.duckdb_file_problem(path)
  if problem:
    raise UsageError('%s: %r: %s' % (flag, path, problem))


def prepare_local_tables(flag, path, tables, truncate=False):
  """Creates ``tables`` ([(TableSchema, name or None)]) in a local DuckDB
  file before a run; a full disk or an I/O error is one line (exit 1)."""
  from transforms import warehouse
  existed = os.path.exists(path)
  try:
    for schema, table in tables:
      warehouse.prepare_duckdb_table(path, schema, table, truncate=truncate)
  except Exception as e:  # pylint: disable=broad-except
    if not existed:  # a file this run began and could not finish
      warehouse.DuckDBFiles.close(path)
      for leftover in (path, path + '.wal'):
        if os.path.exists(leftover):
          os.remove(leftover)
    raise PipelineFailed('%s %s: cannot prepare it: %s' % (
        flag, path, str(e).splitlines()[0]))


LOCAL_TEMP_BUCKET = 'beam-temp'


def prepare_local_bigquery(options, tables, create=()):
  """A local run writing BigQuery ``tables`` ({flag: spec}): the datasets must
  exist (as on BigQuery; a one-line error says how to make one), tables in
  ``create`` ([(spec, TableSchema)]) are made now if missing, so that a person
  can query them from the start, and file loads get a gs:// temp location on
  the GCS emulator when none is given."""
  from google.api_core import exceptions
  from google.cloud import bigquery

  from transforms import emulators
  cloud = options.view_as(GoogleCloudOptions)
  specs = {flag: spec for flag, spec in tables.items() if spec}
  if not specs:
    return
  if not cloud.project:
    cloud.project = parse_table_spec(next(iter(specs.values())))[0]
  client = emulators.bigquery_client(cloud.project)
  for flag, spec in specs.items():
    project, dataset, _ = parse_table_spec(spec, client.project)
    try:
      client.get_dataset('%s.%s' % (project, dataset))
    except exceptions.NotFound:
      raise UsageError(
          '%s: dataset %s:%s does not exist; create it first (bq mk --dataset '
          '%s:%s, or the Python client\'s create_dataset on the emulator)' % (
              flag, project, dataset, project, dataset))
    except Exception as e:  # pylint: disable=broad-except
      raise UsageError('%s: cannot reach BigQuery: %s' % (
          flag, str(e).splitlines()[0]))
  for spec, schema in create:
    project, dataset, table = parse_table_spec(spec, client.project)
    client.create_table(bigquery.Table(
        '%s.%s.%s' % (project, dataset, table),
        schema=[bigquery.SchemaField.from_api_repr(f)
                for f in schema.bigquery_schema()['fields']]), exists_ok=True)
  if not cloud.temp_location and os.environ.get('STORAGE_EMULATOR_HOST'):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    gcs = storage.Client(project=cloud.project,
                         credentials=AnonymousCredentials())
    if gcs.lookup_bucket(LOCAL_TEMP_BUCKET) is None:
      gcs.create_bucket(LOCAL_TEMP_BUCKET)
    cloud.temp_location = 'gs://%s/tmp' % LOCAL_TEMP_BUCKET


def parse_table_spec(spec, default_project=None):
  """'P:D.T', 'P.D.T' or 'D.T' -> (project, dataset, table)."""
  if ':' in spec:
    project, rest = spec.split(':', 1)
    dataset, table = rest.split('.', 1)
  else:
    parts = spec.split('.')
    if len(parts) == 3:
      project, dataset, table = parts
    else:
      project, (dataset, table) = default_project, parts
  return project, dataset, table


def fail(prog, message):
  """Prints a one-line error and exits 2."""
  print('%s: error: %s' % (prog, message), file=sys.stderr)
  sys.exit(2)


def use_render_runner_if_asked(options):
  """--render_output FILE draws the graph with Beam's RenderRunner instead of running."""
  if not options.get_all_options(retain_unknown_options=True).get(
      'render_output'):
    return False
  import shutil
  if not shutil.which('dot'):
    raise UsageError(
        '--render_output needs graphviz (dot); ./run.sh installs it, or '
        'apt-get install graphviz')
  options.view_as(StandardOptions).runner = (
      'apache_beam.runners.render.RenderRunner')
  return True


def flag_values(options):
  """All flag values, ours and Beam's, as one namespace (``view_as`` shows one class at a time)."""
  return argparse.Namespace(**options.get_all_options())
