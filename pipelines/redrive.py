"""Redrive: stored dead letters through a pipeline's own graph again, as a
batch run through the same launcher.

    main.py redrive [--pipeline pubsub_to_bigquery|user_signin]
        [the pipeline's flags: --schema, --udf, --warehouse or
        --output_table, ...] [--where SQL] [--dry_run]

After a fix (a schema that now allows a field, a UDF that repairs it), the
dead letters still waiting that pass the parse as you give it now become
rows, with their original message id, through the pipeline's own parse,
sinks and counts; their dead letters are marked redriven (the history stays
queryable); the rest stay as they were. ``--where`` picks which
(``reason = 'bad_value'``); ``--dry_run`` says what would move, by reason,
and changes nothing. A second redrive moves nothing. Settings the stored
tables depend on (user_signin's window length) are read from the tables:
a flag that contradicts them is refused. ``too_large`` (a prefix) and
``sink_rejected`` (the refused row) are not redriven.

Marked: in DuckDB ``redriven_at`` is set in the transaction that stores the
rows. In BigQuery, rows streamed in the last 30 minutes cannot be updated
(https://cloud.google.com/bigquery/docs/data-manipulation-language#limitations),
so a redrive never UPDATEs the dead-letter table a stream writes: it records
the moved ids in ``<dead-letter table>_redriven`` (INSERTs, in batches), and
the view ``<dead-letter table>_waiting`` lists the dead letters still
waiting.
"""

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import checks
from pipelines import launcher
from pipelines import options as pipeline_options
from pipelines.errors import PipelineFailed
from pipelines.errors import UsageError
from pipelines.tables import Destinations
from transforms.redriven import NOT_REDRIVEN

PROG = 'main.py redrive'
PIPELINES = ('pubsub_to_bigquery', 'user_signin')
LEDGER_SUFFIX = '_redriven'
WAITING_SUFFIX = '_waiting'
LEDGER_BATCH = 10000  # ids per INSERT: well under BigQuery's request limits


class RedriveOptions(PipelineOptions):
  """Flags of the redrive itself (the pipeline's own flags come with it)."""
  TITLE = 'redrive'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--pipeline', dest='redrive_pipeline', default=None,
        choices=PIPELINES,
        help='The pipeline whose dead letters go through its graph again '
        '(default pubsub_to_bigquery).')
    parser.add_argument(
        '--where', dest='redrive_where', default=None, metavar='SQL',
        help='SQL condition on the dead-letter table, e.g. "reason = '
        '\'bad_value\'".')


def _pipeline_of(argv):
  pre = argparse.ArgumentParser(add_help=False)
  pre.add_argument('--pipeline', default='pubsub_to_bigquery')
  known, _ = pre.parse_known_args(argv)
  if known.pipeline not in PIPELINES:
    raise UsageError('--pipeline: choose from %s, not %r' % (
        ', '.join(PIPELINES), known.pipeline))
  from pipelines.registry import PIPELINES as ALL
  return ALL[known.pipeline].load()


def _flags(argv):
  """A bare ``--dry_run`` (what the redrive always took) is Beam's
  ``--dry_run=True``; any other value must say yes or no (Beam takes any
  text as true)."""
  out = []
  for a in argv:
    if a == '--dry_run':
      a = '--dry_run=True'
    elif a.startswith('--dry_run='):
      value = a.split('=', 1)[1].lower()
      if value not in ('true', 'false', '1', '0', 'yes', 'no'):
        raise UsageError('--dry_run: true or false, not %r' % value)
      a = '--dry_run=%s' % (value in ('true', '1', 'yes'))
    out.append(a)
  return out


def _given(argv, flag):
  return any(a == flag or a.startswith(flag + '=') for a in argv)


def run(argv=None):
  argv = _flags(list(argv or []))
  module = _pipeline_of(argv)
  options = pipeline_options.parse_options(
      argv, [RedriveOptions] + list(module.OPTIONS), PROG, __doc__)
  options.view_as(RedriveOptions).redrive_pipeline = module.__name__.rsplit(
      '.', 1)[1]
  if module.__name__.endswith('user_signin'):
    pipeline_options.window_seconds(options, 'user_signin')
  opts = pipeline_options.flag_values(options)
  if checks.is_dataflow(options):
    raise UsageError('--runner: a redrive runs locally (it reads the dead '
                     'letters it moves before the run and marks them after)')
  if opts.dead_letter_topic:
    raise UsageError('--dead_letter_topic: a redrive publishes nothing (the '
                     'dead letters that stay were published when they came)')
  if _given(argv, '--warehouse') and opts.output_table:
    raise UsageError('give one of --warehouse, --output_table')
  if not opts.output_table and not os.path.isfile(opts.warehouse):
    raise UsageError('--warehouse: no DuckDB file at %r' % opts.warehouse)
  check_where(opts.redrive_where)
  job = launcher.Job('redrive', options, argv, streaming=False,
                     reports_messages=True)
  tables, function = _check(module, options, opts)
  destinations = Destinations.of(tables, opts)
  warehouse = destinations.warehouse
  if opts.redrive_pipeline == 'user_signin':
    _match_window(options, opts, argv, destinations)
  if checks.is_dry_run(options):  # reads only: nothing made, nothing moved
    letters = read_waiting(destinations, opts, job, create=False)
    print(report(opts, *_dry_run(module, options, letters, function)))
    return None
  with job.start(destinations):
    if warehouse and opts.redrive_pipeline == 'user_signin':
      module.reconcile_local_counts(opts)
    letters = read_waiting(destinations, opts, job)
    looked = len(letters)
    outcomes = _redrive(job, module, options, letters, function, destinations)
  moved, stayed, moved_ids = outcomes
  if moved_ids:
    mark(destinations, moved_ids, job)
  print(report(opts, looked, moved, stayed))
  sys.stdout.flush()
  return None


def _check(module, options, opts):
  """The pipeline's own checks (one line each); returns its tables and its
  UDF (or None)."""
  if opts.redrive_pipeline == 'user_signin':
    module.check(options, opts)
    return module.TABLES, None
  if not opts.message_id_column:
    raise UsageError('--message_id_column false: a redrive keys what it '
                     'moves by message id')
  schema, function, _ = module.check(options, opts)
  return module.tables_of(schema), function


def _match_window(options, opts, argv, destinations):
  """user_signin's counts are of one window length: the tables' own. Taken
  from them when --window_seconds is not given; refused when it differs."""
  stored = stored_window_seconds(destinations, opts)
  given = any(a.split('=')[0] == '--window_seconds' for a in argv)
  if stored is None or stored == opts.window_seconds:
    return
  if given:
    where = destinations.warehouse or destinations['counts'].spec
    raise UsageError(
        '--window_seconds %s: %s counts %g-second windows; give %g or leave '
        'the flag out' % (opts.window_seconds, where, stored, stored))
  checks.check_range('--window_seconds (as stored)', stored, 1,
                     checks.MAX_WINDOW_SECONDS)
  options.view_as(pipeline_options.WindowOptions).window_seconds = stored
  opts.window_seconds = stored


def stored_window_seconds(destinations, opts):
  """The window length the stored counts have (None: no counts yet); a
  one-line UsageError when they hold several or cannot be read."""
  from transforms import signin_counts
  counts = destinations['counts']
  if destinations.is_local:
    import duckdb
    from storage.duckdb_files import DuckDBFiles
    try:
      with DuckDBFiles.use(destinations.warehouse, hold_seconds=0) as con:
        found = con.execute(
            'SELECT DISTINCT epoch_us(window_end) - epoch_us(window_start) '
            'FROM "%s" WHERE %s LIMIT 3' % (
                counts.schema.name, signin_counts.WHOLE_WINDOW)).fetchall()
    except duckdb.CatalogException:
      return None  # no counts table yet
  else:
    from google.api_core import exceptions
    from pipelines import emulator_clients
    from storage import table_specs
    client = emulator_clients.bigquery_client(_project(opts, counts.spec))
    try:
      found = [tuple(r.values()) for r in client.query(
          'SELECT DISTINCT TIMESTAMP_DIFF(window_end, window_start, '
          'MICROSECOND) FROM `%s` WHERE UNIX_MICROS(window_start) > %d AND '
          'UNIX_MICROS(window_end) < %d LIMIT 3' % ((table_specs.dotted(
              counts.spec, client.project),) + signin_counts.CALENDAR_MICROS)
      ).result()]
    except exceptions.NotFound:
      return None
    except Exception as e:  # pylint: disable=broad-except
      raise UsageError('%s: cannot read its window length: %s' % (
          counts.spec, str(e).splitlines()[0]))
  lengths = sorted(micros / 1e6 for (micros,) in found)
  if len(lengths) > 1:
    raise UsageError(
        '%s holds counts of %s-second windows: a redrive cannot keep them '
        'equal to the rows' % (destinations.warehouse or counts.spec,
                               ' and '.join('%g' % n for n in lengths)))
  if not lengths:
    return None
  return int(lengths[0]) if lengths[0] == int(lengths[0]) else lengths[0]


def _project(opts, spec):
  from storage import table_specs
  return getattr(opts, 'project', None) or table_specs.parse_table_spec(
      spec)[0]


WAITING = ('redriven_at IS NULL AND message_id IS NOT NULL AND reason NOT IN '
           '(%s)' % ', '.join("'%s'" % r for r in NOT_REDRIVEN))


def _select(table, opts, also=''):
  """The waiting dead letters of ``table`` that pass --where: the user's
  condition filters the waiting ones (a subquery), on lines of its own, so
  that nothing it holds (a parenthesis, a comment) reaches the rest."""
  inner = 'SELECT * FROM %s WHERE %s%s' % (table, WAITING, also)
  if not opts.redrive_where:
    return inner + ' ORDER BY message_id'
  return 'SELECT * FROM (%s) AS waiting WHERE (\n%s\n) ORDER BY message_id' % (
      inner, opts.redrive_where)


def check_where(where):
  """--where is one condition: a ';' outside its quotes would end the
  redrive's statement and start another (a DELETE, say)."""
  if not where:
    return
  text, i, quote = where, 0, None
  while i < len(text):
    c = text[i]
    if quote:
      if c == '\\':
        i += 1
      elif c == quote:
        quote = None
    elif c in '\'"`':
      quote = c
    elif c == ';':
      raise UsageError('--where: one condition, no ";"')
    elif text.startswith('/*', i):
      raise UsageError('--where: one condition, no comments')
    i += 1


def read_waiting(destinations, opts, job, create=True):
  """The waiting dead letters the redrive looks at, as dicts by column
  (``create``: BigQuery's ledger and view made if missing)."""
  dead = destinations['dead_letters']
  if destinations.is_local:
    import duckdb
    from storage.duckdb_files import DuckDBFiles
    with DuckDBFiles.use(destinations.warehouse, hold_seconds=0) as con:
      try:
        cursor = con.execute(_select('"%s"' % dead.schema.name, opts))
      except duckdb.Error as e:
        raise UsageError('--where: %s' % str(e).splitlines()[0])
      names = [d[0] for d in cursor.description]
      return [dict(zip(names, r)) for r in cursor.fetchall()]
  client = _client(job, dead.spec)
  ledger = _ensure_ledger(client, dead.spec, create)
  from storage import table_specs
  table = table_specs.dotted(dead.spec, client.project)
  not_moved = (' AND message_id NOT IN (SELECT message_id FROM `%s`)' % ledger
               if ledger else '')
  try:
    found = [dict(r.items()) for r in client.query(
        _select('`%s`' % table, opts, not_moved)).result()]
  except Exception as e:  # pylint: disable=broad-except
    raise UsageError('--where or --output_table: %s' % str(e).splitlines()[0])
  # Streaming inserts are at least once: a dead letter may be there twice.
  once = {}
  for letter in found:
    once.setdefault(letter['message_id'], letter)
  return list(once.values())


def _client(job, spec):
  from pipelines import emulator_clients
  return emulator_clients.bigquery_client(
      job.project or _project(argparse.Namespace(), spec))


def _ensure_ledger(client, dead_spec, create=True):
  """``<dead>_redriven`` (the moved ids) and the view ``<dead>_waiting``,
  made if missing; returns the ledger's dotted name (None: missing, and
  not ``create``)."""
  from google.api_core import exceptions
  from google.cloud import bigquery
  from storage import table_specs
  dead = table_specs.dotted(dead_spec, client.project)
  ledger = table_specs.dotted(dead_spec + LEDGER_SUFFIX, client.project)
  try:
    client.get_table(ledger)
  except exceptions.NotFound:
    if not create:
      return None
    table = bigquery.Table(ledger, schema=[
        bigquery.SchemaField('message_id', 'STRING', 'REQUIRED'),
        bigquery.SchemaField('redriven_at', 'TIMESTAMP', 'REQUIRED')])
    table.description = ('Dead letters of %s that main.py redrive made rows '
                         '(or a UDF dropped): one row per message id.' % dead)
    client.create_table(table, exists_ok=True)
  if not create:
    return ledger
  view = bigquery.Table(table_specs.dotted(dead_spec + WAITING_SUFFIX,
                                           client.project))
  view.view_query = (
      'SELECT * FROM `%s` WHERE redriven_at IS NULL AND (message_id IS NULL '
      'OR message_id NOT IN (SELECT message_id FROM `%s`))' % (dead, ledger))
  view.description = ('Dead letters of %s not redriven (too_large and '
                      'sink_rejected included: they wait for a person).' % dead)
  client.delete_table(view, not_found_ok=True)
  client.create_table(view)
  return ledger


def _redrive(job, module, options, letters, function, destinations):
  """Runs the pipeline's graph on ``letters``; returns (Counter of moved by
  old reason, Counter of (old, new) reasons that stayed, moved ids)."""
  from transforms.redriven import DeadLetterMessages
  if not letters:
    return collections.Counter(), collections.Counter(), set()
  source = DeadLetterMessages(letters)
  folder = tempfile.mkdtemp(prefix='beam-redrive-')
  try:
    pipeline = job.pipeline()
    kwargs = {'function': function} if function is not None else {}
    dead = module.build(pipeline, options, job.destinations, source=source,
                        **kwargs)
    _record_stayed(dead, folder)
    job.run(pipeline)
    new_reasons = _read_stayed(folder)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  return _outcomes(letters, new_reasons)


def _dry_run(module, options, letters, function):
  """What would move: the parse alone, nothing stored."""
  from transforms.redriven import DeadLetterMessages
  looked = len(letters)
  if not letters:
    return looked, collections.Counter(), collections.Counter()
  import apache_beam as beam
  folder = tempfile.mkdtemp(prefix='beam-redrive-')
  try:
    pipeline = beam.Pipeline(options=PipelineOptions(['--runner',
                                                      'FnApiRunner']))
    messages = pipeline | 'ReadMessages' >> DeadLetterMessages(letters)
    parsed = module.parse(messages, options, function)
    _record_stayed(parsed.dead_letters, folder)
    pipeline.run().wait_until_finish()
    new_reasons = _read_stayed(folder)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  moved, stayed, _ = _outcomes(letters, new_reasons)
  return looked, moved, stayed


def _record_stayed(dead_letters, folder):
  import apache_beam as beam
  _ = (dead_letters
       | 'WhatStayed' >> beam.Map(lambda d: json.dumps(
           [d.get('message_id'), d.get('reason')]))
       | 'WriteWhatStayed' >> beam.io.WriteToText(
           os.path.join(folder, 'stayed'), file_name_suffix='.jsonl'))


def _read_stayed(folder):
  found = {}
  for name in os.listdir(folder):
    if name.startswith('stayed') and name.endswith('.jsonl'):
      with open(os.path.join(folder, name)) as f:
        for line in f:
          message_id, reason = json.loads(line)
          found[message_id] = reason
  return found


def _outcomes(letters, new_reasons):
  """(Counter of moved by old reason, Counter of (old, new) reasons that
  stayed, moved ids) from the run's dead letters ``new_reasons`` {id:
  reason}: a message stays when it, or any row it fanned out to, is a dead
  letter again."""
  from transforms.redriven import stayed_messages
  looked = {letter['message_id'] for letter in letters}
  stayed_ids = stayed_messages(new_reasons, looked)
  moved, stayed, moved_ids = collections.Counter(), collections.Counter(), set()
  for letter in letters:
    message_id = letter['message_id']
    if message_id in stayed_ids:
      new = new_reasons.get(message_id) or next(
          (r for d, r in sorted(new_reasons.items())
           if d and d.startswith(message_id + '#')), letter['reason'])
      stayed[(letter['reason'], new)] += 1
    else:
      moved[letter['reason']] += 1
      moved_ids.add(message_id)
  return moved, stayed, moved_ids


def mark(destinations, ids, job):
  """After the run: the moved dead letters marked (those whose rows the
  DuckDB sink marked already stay as marked; a UDF's drops get marked
  here). In BigQuery, the ledger takes their ids, in batches."""
  dead = destinations['dead_letters']
  if destinations.is_local:
    from storage.duckdb_files import DuckDBFiles
    from transforms import redriven
    with DuckDBFiles.use(destinations.warehouse, hold_seconds=0) as con:
      redriven.mark_duckdb(con, dead.schema.name, ids)
    return
  from google.cloud import bigquery
  client = _client(job, dead.spec)
  ledger = _ensure_ledger(client, dead.spec)
  ids = sorted(ids)
  for start in range(0, len(ids), LEDGER_BATCH):
    try:
      client.query(
          'INSERT INTO `%s` (message_id, redriven_at) SELECT id, '
          'CURRENT_TIMESTAMP() FROM UNNEST(@ids) AS id WHERE id NOT IN '
          '(SELECT message_id FROM `%s`)' % (ledger, ledger),
          job_config=bigquery.QueryJobConfig(query_parameters=[
              bigquery.ArrayQueryParameter(
                  'ids', 'STRING', ids[start:start + LEDGER_BATCH])])).result()
    except Exception as e:  # pylint: disable=broad-except
      raise PipelineFailed(
          'the rows are stored; marking their dead letters in %s failed '
          '(run the redrive again: it adds no row twice): %s' % (
              ledger, str(e).splitlines()[0]))


def report(opts, looked, moved, stayed):
  dry = checks_dry(opts)
  lines = ['redrive: %d dead letters looked at%s; %d %s' % (
      looked, ' (%s)' % opts.redrive_where if opts.redrive_where else '',
      sum(moved.values()),
      'would move (dry run: nothing changed)' if dry else 'moved')]
  if moved:
    lines.append('  moved:  %s' % ', '.join(
        '%s=%d' % kv for kv in sorted(moved.items())))
  if stayed:
    lines.append('  stayed: %s' % ', '.join(
        '%s=%d%s' % (old, n, '' if old == new else ' (now %s)' % new)
        for (old, new), n in sorted(stayed.items())))
  return '\n'.join(lines)


def checks_dry(opts):
  return str(getattr(opts, 'dry_run', False)).lower() in ('true', '1', 'yes')

