"""Batch wordcount: text (local or gs://, compressed or not) -> word counts in
text shards (local or gs://) and, optionally, a BigQuery table or DuckDB file.

Counts equal those of Beam's ``apache_beam.examples.wordcount`` on any UTF-8
input, several times faster: see ``transforms.text``.
"""

import logging
import os
import re
import time
from typing import Any, Dict, Tuple

import apache_beam as beam
from apache_beam.io import WriteToText
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import checks
from pipelines import launcher
from pipelines import options as pipeline_options
from pipelines.errors import UsageError
from pipelines.tables import Destinations
from pipelines.tables import Table
from storage import table_specs
from transforms import schemas
from transforms import text
from transforms.store import WriteTable

_LOG = logging.getLogger(__name__)

PROG = 'main.py wordcount'
# Below this much input, worker processes cost more than they save.
PARALLEL_INPUT_BYTES = 256 << 20
SAMPLE_INPUT = os.path.join(launcher.PROJECT_ROOT, 'data', 'devils_dictionary.txt')
TABLES = (Table('counts', '--output_table', schemas.WORD_COUNTS),)
DESCRIPTION = __doc__


class WordcountOptions(PipelineOptions):
  """Flags of the wordcount pipeline."""
  TITLE = 'wordcount'

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--input', default=SAMPLE_INPUT,
        help='File, glob or gs:// pattern to read; .gz/.bz2/.zst/.deflate '
        'files are decompressed. Default: the bundled sample text.')
    parser.add_argument(
        '--output', default='output/wordcount/counts',
        help='Prefix of the text shards to write, local or gs://.')
    parser.add_argument(
        '--pattern', default=text.DEFAULT_WORD_PATTERN,
        help='Regex that finds words in a line (default %(default)r, as in '
        "Beam's wordcount example).")
    parser.add_argument(
        '--lowercase', action='store_true', default=False,
        help='Fold case with str.casefold() before counting.')
    parser.add_argument(
        '--write_disposition', default='truncate',
        choices=['truncate', 'append'],
        help='What --output_table does with rows already there.')


def format_count(word_count):
  word, count = word_count
  return '%s: %d' % (word, count)


class FormatCounts(beam.DoFn):
  """(word, count) -> 'word: count' lines; counts distinct words on the way."""
  def __init__(self):
    self.distinct = Metrics.counter('wordcount', 'distinct_words')

  def process(self, word_count):
    self.distinct.inc()
    yield format_count(word_count)


OPTIONS = [WordcountOptions, pipeline_options.ShardOptions,
           pipeline_options.BigQueryOutputOptions]


def count_rows(word_count: Tuple[str, int]) -> Dict[str, Any]:
  return {'word': word_count[0], 'count': word_count[1]}


def run(argv=None):
  """Parses flags, runs the pipeline, prints a summary; returns the result."""
  argv = list(argv or [])
  options = pipeline_options.parse_options(argv, OPTIONS, PROG, __doc__)
  opts = pipeline_options.flag_values(options)
  job = launcher.Job('wordcount', options, argv)
  input_bytes = check(options, opts)
  destinations = Destinations.of(TABLES, opts) if opts.output_table else None
  started = time.monotonic()
  with job.start(destinations,
                 parallel=(input_bytes or 0) >= PARALLEL_INPUT_BYTES,
                 truncate=opts.write_disposition == 'truncate'):
    pipeline = job.pipeline()
    counts = (
        pipeline
        | 'ReadText' >> text.ReadLineBlocks(opts.input)
        | 'CountWords' >> text.CountWords(opts.pattern, opts.lowercase))
    _ = (
        counts
        | 'FormatCounts' >> beam.ParDo(FormatCounts())
        | 'WriteCounts' >> WriteToText(opts.output, num_shards=opts.num_shards))
    if job.destinations is not None:
      _ = (counts
           | 'ToTableRows' >> beam.Map(count_rows)
           | 'WriteTable' >> WriteTable(
               job.destinations['counts'], opts.bigquery_method,
               duckdb_options={'hold_connection': False},
               truncate=opts.write_disposition == 'truncate'))
    result = job.run(pipeline)
    if job.runs_locally:
      print(summarize(result, opts, time.monotonic() - started))
    return result


def check(options, opts):
  """Fails fast, before any work, on inputs and flags that cannot work.

  Returns the input's total size in bytes (None on a dry run)."""
  try:
    re.compile(opts.pattern)
  except re.error as e:
    raise UsageError('--pattern: invalid regex %r: %s' % (opts.pattern, e))
  if opts.num_shards < 0:
    raise UsageError('--num_shards must be 0 or more, not %d' %
                     opts.num_shards)
  if opts.output_table:
    try:
      table_specs.check_table_spec(opts.output_table, '--output_table')
    except ValueError as e:
      raise UsageError(str(e))
    if checks.is_dataflow(options) and table_specs.is_local_warehouse(
        opts.output_table):
      raise UsageError(
          '--output_table: a local DuckDB file cannot be written from '
          'Dataflow; give a BigQuery table')
  if checks.is_dry_run(options):
    return None  # a dry run must not touch gs:// (or the network)
  checks.check_local_output('--output', opts.output)
  if opts.output_table and table_specs.is_local_warehouse(opts.output_table):
    checks.check_local_warehouse('--output_table', opts.output_table)
  matched = checks.match_input_files('--input', opts.input, options)
  return sum(m.size_in_bytes for m in matched)


def summarize(result, opts, elapsed):
  """One short report from Beam's metrics after a local run."""
  counters = {
      r.key.metric.name: r.committed if r.committed is not None else r.attempted
      for r in result.metrics().query(
          MetricsFilter().with_namespace('wordcount'))['counters']
  }
  outputs = sorted(
      m.path for m in FileSystems.match([opts.output + '*'])[0].metadata_list)
  lines = [
      'wordcount finished in %.1f s' % elapsed,
      '  lines read:        %d' % counters.get('lines_read', 0),
      '  undecodable lines: %d' % counters.get('undecodable_lines', 0),
      '  words:             %d' % counters.get('words', 0),
      '  distinct words:    %d' % counters.get('distinct_words', 0),
      '  output:            %s' % (', '.join(outputs) or opts.output),
  ]
  if opts.output_table:
    lines.append('  table:             %s' % opts.output_table)
  return '\n'.join(lines)
