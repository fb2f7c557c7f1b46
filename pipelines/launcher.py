"""The one launcher: runs any of our pipelines, locally or on Dataflow.

A pipeline's ``run`` parses its flags, opens a ``Job``, checks its flags,
then starts the job with its tables and builds its graph on
``job.pipeline()``:

    job = launcher.Job('user_signin', options, argv, streaming=True,
                       reports_messages=True)
    check(options, opts)
    with job.start(Destinations.of(TABLES, opts)):
      pipeline = job.pipeline()
      build(pipeline, options, job.destinations)
      return job.run(pipeline)

The job does the set-up around it, in order. Before the checks, locally:
auth kept on loopback, and Beam's clients pointed at the emulators (an
explicit call, also made in local worker processes as a Beam plugin). At
the start: Dataflow packaging and its required flags, or the local runner;
``--render_output``; the BigQuery datasets checked and tables made (a local
run writing BigQuery); a replay into BigQuery staged (``bigquery_replay``);
the DuckDB tables made; the local run (``local_runner.stream.LocalRun``:
progress, stop). At the run, a local stream's own reader in place of the
graph's Pub/Sub read. After the run: the summary, the replay's merge and
the clean-up. The graph never learns where it runs.
"""

import logging
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.options.pipeline_options import SetupOptions
from apache_beam.options.pipeline_options import StandardOptions

from local_runner import beam_patches
from local_runner import stream as local_stream
from pipelines import bigquery_replay
from pipelines import bigquery_tables
from pipelines import checks
from pipelines import emulator_clients
from pipelines import schema_changes
from pipelines.errors import PipelineFailed
from pipelines.errors import UsageError
from storage import table_specs
from storage.duckdb_files import DuckDBFiles
from transforms import duckdb_sink

_LOG = logging.getLogger(__name__)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK_METADATA = '127.0.0.1:9'
LOCAL_TEMP_BUCKET = 'beam-temp'
EMULATOR_PLUGIN = 'local_runner.emulator_plugin'


class Job(object):
  """One run of pipeline ``name`` with ``options`` (its command line
  ``argv``). Made before the flags are checked: locally it keeps auth on
  loopback and points Beam's clients at the emulators, so that checks
  reading gs:// already go there. ``reports_messages``: progress and the
  summary count messages, rows and dead letters (message pipelines)."""
  def __init__(self, name, options, argv, streaming=False,
               reports_messages=False):
    self.name = name
    self.options = options
    self.streaming = streaming
    self.destinations = None
    self._argv = argv
    self._reports = reports_messages
    self._parallel = self._truncate = False
    self._output = self._input_files = None
    self._staged = []
    self._local_run = None
    options.view_as(StandardOptions).streaming = streaming
    self.on_dataflow = checks.is_dataflow(options)
    self.dry_run = checks.is_dry_run(options)
    self.rendering = False
    if not self.on_dataflow:
      keep_auth_on_loopback()
      _use_emulator_clients(options)

  def start(self, destinations=None, parallel=False, truncate=False,
            output=None, input_files=None):
    """What the run writes (``tables.Destinations``, or None; ``output``
    names another kind of output for the summary) and how: ``parallel``, a
    large batch worth local worker processes; ``truncate``, tables emptied
    first; ``input_files``, a replay's files as the checks matched them (its
    progress). Use as ``with job.start(...):``."""
    self.destinations = destinations
    self._input_files = input_files
    self._output = output
    self._parallel = parallel
    self._truncate = truncate
    return self

  # -- set-up ----------------------------------------------------------------
  def __enter__(self):
    if self.on_dataflow:
      _prepare_for_dataflow(self.options)
    else:
      _choose_local_runner(self.options, self._argv, self.streaming,
                           self._parallel)
    self.rendering = _use_render_runner_if_asked(self.options)
    if not self.dry_run and not self.rendering:
      # After the flag checks, before any client.
      checks.check_credentials(
          checks.needs_credentials(self.options, self.on_dataflow))
    if self.prepares_bigquery:
      _prepare_local_bigquery(self.options, self.destinations)
    elif (self.on_dataflow and not self.dry_run and self.destinations
          is not None and not self.destinations.is_local):
      # Schema changes before the job's first write; Beam creates the
      # missing tables, with their layout.
      bigquery_tables.prepare(self.bigquery_client(), self.destinations,
                              create=False)
    if (self.destinations is not None and not self.destinations.is_local
        and not self.streaming and not self.rendering and not self.dry_run
        and self._reports):
      self.destinations, self._staged = bigquery_replay.stage(
          self.destinations)
    if self.runs_locally:
      if self.destinations is not None and self.destinations.is_local:
        flag = self.destinations.tables[0].flag if not self._reports else (
            '--warehouse')
        prepare_local_tables(flag, self.destinations.warehouse,
                             [t.schema for t in self.destinations.tables],
                             truncate=self._truncate)
      self._local_run = self._open_local_run().__enter__()
    return self

  def __exit__(self, *unused):
    try:
      if self._local_run is not None:
        self._local_run.__exit__()
    finally:
      if self._staged:
        bigquery_replay.drop(self.project, self._staged)

  @property
  def runs_locally(self):
    """A real local run (not Dataflow, not a render)."""
    return not self.on_dataflow and not self.rendering

  @property
  def prepares_bigquery(self):
    """A local run writing BigQuery: datasets checked, tables made first."""
    return (self.runs_locally and self.destinations is not None
            and not self.destinations.is_local)

  @property
  def project(self):
    return self.options.view_as(GoogleCloudOptions).project

  def _open_local_run(self):
    opts = self.options.get_all_options()
    local = self.destinations is not None and self.destinations.is_local
    return local_stream.LocalRun(
        self.name,
        warehouse=opts.get('warehouse') if self._reports else None,
        tables=self.destinations.local_names() if (
            local and self._reports) else None,
        output_table=self._output or opts.get('output_table'),
        status_file=opts.get('status_file'),
        progress_seconds=opts.get('progress_seconds') or 5,
        drain_seconds=opts.get('drain_seconds', 10),
        input_total=None if self.streaming or not self._input_files else (
            len(self._input_files),
            sum(m.size_in_bytes for m in self._input_files)))

  # -- what the graph takes from the job -------------------------------------
  def pipeline(self):
    return beam.Pipeline(options=self.options)

  def _read_with_local_reader(self):
    """A local stream of --input_subscription reads it with the local
    runner's ack-after-commit reader (started now) unless
    --local_pubsub_reader beam."""
    opts = self.options.get_all_options()
    if not (self.streaming and opts.get('input_subscription') and
            opts.get('local_pubsub_reader') == 'ack_after_commit'):
      return
    if opts.get('output_table') and opts.get('bigquery_method') not in (
        'default', 'streaming_inserts'):
      raise UsageError(
          '--local_pubsub_reader ack_after_commit acknowledges what BigQuery '
          'stored through streaming inserts; with --bigquery_method %s use '
          '--local_pubsub_reader beam' % opts.get('bigquery_method'))
    try:
      self._local_run.read_subscription(
          opts['input_subscription'], attempts_db=opts.get('warehouse'),
          max_attempts=opts['max_delivery_attempts'],
          timestamp_attribute=opts.get('timestamp_attribute'),
          max_in_flight=opts['max_in_flight'],
          max_in_flight_bytes=opts['max_in_flight_mb'] << 20)
    except local_stream.PubSubUnavailable as e:
      if e.missing:
        raise UsageError('--input_subscription: %s' % e)
      raise PipelineFailed(str(e))
    except RuntimeError as e:
      raise UsageError('--local_pubsub_reader ack_after_commit: %s; use '
                       '--local_pubsub_reader beam' % e)
    except OSError as e:
      raise PipelineFailed('the local reader cannot listen: %s' % e)

  # -- running ---------------------------------------------------------------
  def run(self, pipeline):
    """Runs the graph: on Dataflow (or a render) submitted; locally a stream
    until stopped, a batch to its end, with the summary. Returns the
    result."""
    if not self.runs_locally:
      result = pipeline.run()
      if self.dry_run and self.on_dataflow:
        print(dry_run_summary(self.name, self.options, result,
                              self.streaming))
      if not self.streaming and not self.dry_run:
        result.wait_until_finish()
        self._merge_replay()
      return result
    try:
      if self.streaming:
        self._read_with_local_reader()
        return self._local_run.run_stream(pipeline)
      if self._reports:
        result = self._local_run.run_batch(pipeline)
      else:
        result = pipeline.run()
        result.wait_until_finish()
      self._merge_replay()
      vanished = self._reports and self._local_run.vanished_files()
      if vanished:
        raise PipelineFailed(
            '%d input file%s vanished before this replay read %s (listed, '
            'then gone): what the others held is stored; replay again once '
            'the files are back' % (vanished, '' if vanished == 1 else 's',
                                    'it' if vanished == 1 else 'them'))
      return result
    except local_stream.StreamFailed as e:
      raise PipelineFailed(str(e))

  def _merge_replay(self):
    if not self._staged:
      return
    for table, added in bigquery_replay.merge(self.project, self._staged):
      print('  merged into %s: %d new (messages already there are not added '
            'again)' % (table, added))

  def bigquery_client(self):
    return emulator_clients.bigquery_client(self.project)


def dry_run_summary(name, options, result, streaming=False):
  """What a Dataflow dry run built and would submit, in a few lines."""
  cloud = options.view_as(GoogleCloudOptions)
  job = getattr(result, 'job', None)
  proto = getattr(job, 'proto', None)
  lines = ['%s: dry run: the Dataflow job was built and not submitted' % name]
  if proto is not None:
    lines.append('  job:     %s (%s) in %s, project %s' % (
        proto.name, 'streaming' if streaming else 'batch', cloud.region,
        cloud.project))
  try:
    components = job.proto_pipeline.components
    root = components.transforms[job.proto_pipeline.root_transform_ids[0]]
    top = [components.transforms[t].unique_name for t in root.subtransforms]
    lines.append('  steps:   %d in all; top level: %s' % (
        len(components.transforms), ', '.join(top)))
  except Exception:  # pylint: disable=broad-except
    pass
  setup = options.view_as(SetupOptions)
  lines.append('  staging: %s%s' % (
      cloud.staging_location or cloud.temp_location,
      ' (our packages from %s)' % setup.setup_file if setup.setup_file else ''))
  lines.append('  submit it: the same command without --dry_run=True')
  return '\n'.join(lines)


def _use_emulator_clients(options):
  """Local runs against emulators: Beam's clients anonymous and pointed at
  them, here and (as a Beam plugin) in local worker processes."""
  if beam_patches.use_emulator_clients():
    setup = options.view_as(SetupOptions)
    plugins = list(setup.beam_plugins or [])
    if EMULATOR_PLUGIN not in plugins:
      setup.beam_plugins = plugins + [EMULATOR_PLUGIN]


def _choose_local_runner(options, argv, streaming, parallel=False):
  """Plain DirectRunner tries to download Prism first; pick the local runner
  that behaves the same online and offline. ``parallel`` batch runs use one
  worker process per core (up to 4) unless --direct_num_workers says
  otherwise: worker processes cost ~2 s to start, so small inputs run faster
  in-process (see benchmarks/README.md)."""
  standard = options.view_as(StandardOptions)
  if standard.runner is None or checks.runner_name(options) in checks.LOCAL_RUNNERS:
    standard.runner = 'BundleBasedDirectRunner' if streaming else 'FnApiRunner'
  if (parallel and not streaming and checks.runner_name(options) == 'FnApiRunner' and
      not any(a.startswith('--direct_num_workers') for a in argv)):
    direct = options.view_as(DirectOptions)
    direct.direct_num_workers = min(os.cpu_count() or 1, 4)
    if direct.direct_num_workers > 1:
      direct.direct_running_mode = 'multi_processing'


def _prepare_for_dataflow(options):
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
      checks.check_gcs_location(flag, value)


def keep_auth_on_loopback():
  """Google auth probes a link-local metadata server; send it to loopback
  instead when nothing says otherwise (local runs and tests)."""
  os.environ.setdefault('NO_GCE_CHECK', 'true')
  os.environ.setdefault('GCE_METADATA_HOST', LOOPBACK_METADATA)
  os.environ.setdefault('GCE_METADATA_IP', LOOPBACK_METADATA)


def prepare_local_tables(flag, path, schemas, truncate=False):
  """Creates the tables of ``schemas`` in a local DuckDB file before a run,
  or brings those there up to them (``schema_changes``: a change BigQuery
  could not make is a one-line UsageError); a full disk or an I/O error is
  one line (exit 1)."""
  existed = os.path.exists(path)
  try:
    with DuckDBFiles.use(path, hold_seconds=0) as con:  # one open, one close
      for schema in schemas:
        schema_changes.evolve_duckdb_table(con, path, schema)
        duckdb_sink.prepare_duckdb_table(con, schema, truncate=truncate)
  except UsageError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not existed:  # a file this run began and could not finish
      DuckDBFiles.close(path)
      for leftover in (path, path + '.wal'):
        if os.path.exists(leftover):
          os.remove(leftover)
    raise PipelineFailed('%s %s: cannot prepare it: %s' % (
        flag, path, str(e).splitlines()[0]))


def _prepare_local_bigquery(options, destinations):
  """A local run writing BigQuery ``destinations``: the tables made now if
  missing (``bigquery_tables``), so that a person can query them from the
  start, and file loads given a gs:// temp location on the GCS emulator when
  none is given."""
  cloud = options.view_as(GoogleCloudOptions)
  if not cloud.project:
    cloud.project = table_specs.parse_table_spec(
        next(iter(destinations)).spec)[0]
  bigquery_tables.prepare(emulator_clients.bigquery_client(cloud.project),
                          destinations)
  if not cloud.temp_location and os.environ.get('STORAGE_EMULATOR_HOST'):
    gcs = emulator_clients.storage_client(cloud.project)
    if gcs.lookup_bucket(LOCAL_TEMP_BUCKET) is None:
      gcs.create_bucket(LOCAL_TEMP_BUCKET)
    cloud.temp_location = 'gs://%s/tmp' % LOCAL_TEMP_BUCKET


def _use_render_runner_if_asked(options):
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
