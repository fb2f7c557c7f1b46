"""main.py wordcount as a user runs it: outputs, oracle, errors, sinks, GCS, Dataflow dry run."""

import glob
import gzip
import os
import subprocess
import sys

import duckdb
import pytest

from tests.conftest import GCS_BUCKET
from tests.conftest import ROOT
from tests.conftest import run_main

SAMPLE = os.path.join(ROOT, 'data', 'devils_dictionary.txt')
ONE_WORKER = '--direct_num_workers=1'


def read_counts(prefix):
  counts = {}
  for path in glob.glob(prefix + '*'):
    with open(path, encoding='utf-8') as f:
      for line in f:
        word, _, n = line.rstrip('\n').rpartition(': ')
        assert word not in counts, 'word %r twice in output' % word
        counts[word] = int(n)
  return counts


def test_counts_equal_beams_own_example(tmp_path):
  """The oracle: Beam's apache_beam.examples.wordcount on the bundled text."""
  ours = run_main('wordcount', '--input', SAMPLE, '--output', tmp_path / 'ours')
  assert ours.returncode == 0, ours.stderr
  theirs = subprocess.run(
      [sys.executable, '-m', 'apache_beam.examples.wordcount',
       '--input', SAMPLE, '--output', str(tmp_path / 'beam'),
       '--runner', 'FnApiRunner'],
      capture_output=True, text=True, timeout=300)
  assert theirs.returncode == 0, theirs.stderr
  expected = read_counts(str(tmp_path / 'beam'))
  assert len(expected) > 5000
  assert read_counts(str(tmp_path / 'ours')) == expected
  assert 'distinct words:    %d' % len(expected) in ours.stdout
  with open(SAMPLE, 'rb') as f:
    lines = f.read().count(b'\n')
  assert 'lines read:        %d' % lines in ours.stdout
  # Two worker processes, each reading its own byte ranges, agree too.
  parallel = run_main(
      'wordcount', '--input', SAMPLE, '--output', tmp_path / 'par',
      '--direct_num_workers=2', '--direct_running_mode=multi_processing')
  assert parallel.returncode == 0, parallel.stderr
  assert read_counts(str(tmp_path / 'par')) == expected


def test_compressed_glob_and_single_shard(tmp_path):
  (tmp_path / 'in').mkdir()
  with gzip.open(tmp_path / 'in' / 'a.txt.gz', 'wt', encoding='utf-8') as f:
    f.write('to be or not to be\n')
  (tmp_path / 'in' / 'b.txt').write_text('be quick\n')
  result = run_main('wordcount', '--input', tmp_path / 'in' / '*',
                    '--output', tmp_path / 'out' / 'counts', '--num_shards', 1,
                    ONE_WORKER)
  assert result.returncode == 0, result.stderr
  shards = glob.glob(str(tmp_path / 'out' / 'counts*'))
  assert [os.path.basename(s) for s in shards] == ['counts-00000-of-00001']
  assert read_counts(str(tmp_path / 'out' / 'counts')) == {
      'to': 2, 'be': 3, 'or': 1, 'not': 1, 'quick': 1}


def test_undecodable_lines_are_counted_not_fatal(tmp_path):
  (tmp_path / 'bad.txt').write_bytes(b'fine words\nbroken \xff\xfe bytes\n')
  result = run_main('wordcount', '--input', tmp_path / 'bad.txt',
                    '--output', tmp_path / 'out', ONE_WORKER)
  assert result.returncode == 0, result.stderr
  assert 'undecodable lines: 1' in result.stdout
  assert read_counts(str(tmp_path / 'out')) == {
      'fine': 1, 'words': 1, 'broken': 1, 'bytes': 1}


def test_duckdb_table_has_schema_and_sums_to_word_total(tmp_path):
  db = tmp_path / 'wc.duckdb'
  for _ in range(2):  # truncate (the default) makes a rerun replace, not add
    result = run_main('wordcount', '--input', SAMPLE, '--output',
                      tmp_path / 'out', '--output_table', db, '--lowercase')
    assert result.returncode == 0, result.stderr
  words = int(result.stdout.split('words:')[1].split()[0])
  con = duckdb.connect(str(db), read_only=True)
  assert con.execute('DESCRIBE word_counts').fetchall()[:2] == [
      ('word', 'VARCHAR', 'NO', None, None, None),
      ('count', 'BIGINT', 'NO', None, None, None)]
  total, distinct, the = con.execute(
      "SELECT sum(count), count(*), max(count) FILTER (word = 'the') "
      'FROM word_counts').fetchone()
  assert total == words
  assert distinct == len(read_counts(str(tmp_path / 'out')))
  assert the == read_counts(str(tmp_path / 'out'))['the']


def test_empty_input_gives_empty_output(tmp_path):
  (tmp_path / 'empty.txt').write_bytes(b'')
  result = run_main('wordcount', '--input', tmp_path / 'empty.txt',
                    '--output', tmp_path / 'out', ONE_WORKER)
  assert result.returncode == 0, result.stderr
  assert read_counts(str(tmp_path / 'out')) == {}
  assert 'words:             0' in result.stdout


@pytest.mark.parametrize('args, message', [
    (['--input', '/nonexistent/dir/*.txt'], "--input: no file matches '/nonexistent/dir/*.txt'"),
    (['--pattern', '[unclosed'], '--pattern: invalid regex'),
    (['--no_such_flag'], 'unrecognized argument: --no_such_flag'),
    (['--num_shards', 'many'], "argument --num_shards: invalid int value: 'many'"),
    (['--output_table', 'not a table'], '--output_table:'),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, args, message):
  result = run_main('wordcount', '--output', tmp_path / 'out', *args)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert message in lines[0]
  assert 'Traceback' not in result.stderr
  assert not glob.glob(str(tmp_path / 'out*'))


def test_unusable_paths_give_one_line_naming_the_flag(tmp_path):
  (tmp_path / 'in.txt').write_text('a b\n')
  (tmp_path / 'a_file').write_text('x')
  (tmp_path / 'a_dir').mkdir()
  cases = [
      (['--input', tmp_path], '--input: %r is a directory' % str(tmp_path)),
      (['--output', tmp_path / 'a_file' / 'sub' / 'counts'],
       '--output: cannot create the folder'),
      (['--output_table', tmp_path / 'a_dir'], '--output_table: %r is a '
       'directory' % str(tmp_path / 'a_dir')),
  ]
  for args, message in cases:
    full = ['--input', tmp_path / 'in.txt', '--output', tmp_path / 'out'] + args
    result = run_main('wordcount', *full)
    assert result.returncode == 2, (args, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], (args, result.stderr)


def test_help_lists_pipelines_and_flags():
  top = run_main('--help')
  assert top.returncode == 0
  assert 'wordcount' in top.stdout and 'user_signin' in top.stdout
  unknown = run_main('nosuchpipeline')
  assert unknown.returncode == 2 and 'unknown pipeline' in unknown.stderr
  wc = run_main('wordcount', '--help')
  assert wc.returncode == 0
  for flag in ('--input', '--output', '--num_shards', '--pattern', '--lowercase',
               '--output_table', '--write_disposition', '--log_file',
               '--render_output', '--runner', '--project'):
    assert flag in wc.stdout
  # Our flags come before Beam's.
  assert wc.stdout.index('--pattern') < wc.stdout.index('--runner')


def test_log_file_gets_debug_lines(tmp_path):
  (tmp_path / 'in.txt').write_text('a b\n')
  log = tmp_path / 'debug.log'
  result = run_main('wordcount', '--input', tmp_path / 'in.txt', '--output',
                    tmp_path / 'out', '--log_file', log, ONE_WORKER)
  assert result.returncode == 0, result.stderr
  assert 'DEBUG' in log.read_text()


def test_render_output_draws_the_graph(tmp_path):
  svg = tmp_path / 'graph.svg'
  result = run_main('wordcount', '--output', tmp_path / 'out',
                    '--render_output', svg)
  assert result.returncode == 0, result.stderr
  content = svg.read_text()
  assert '<svg' in content and 'CountWords' in content
  assert not glob.glob(str(tmp_path / 'out*'))  # drawn, not run


def test_gcs_in_and_out_through_the_emulator(gcs_client, tmp_path):
  bucket = gcs_client.bucket(GCS_BUCKET)
  bucket.blob('books/part-1.txt').upload_from_string('the cat\nthe hat\n')
  bucket.blob('books/part-2.txt').upload_from_string('a cat\n')
  result = run_main('wordcount', '--input', 'gs://%s/books/*.txt' % GCS_BUCKET,
                    '--output', 'gs://%s/counts/out' % GCS_BUCKET, '--no_auth',
                    '--project', 'test', ONE_WORKER)
  assert result.returncode == 0, result.stderr
  counts = {}
  blobs = list(gcs_client.list_blobs(GCS_BUCKET, prefix='counts/out'))
  assert blobs
  for blob in blobs:
    for line in blob.download_as_text().splitlines():
      word, _, n = line.rpartition(': ')
      counts[word] = int(n)
  assert counts == {'the': 2, 'cat': 2, 'hat': 1, 'a': 1}


def test_missing_gcs_input_is_a_one_line_error(gcs_emulator, tmp_path):
  result = run_main('wordcount', '--input', 'gs://%s/nothing/*' % GCS_BUCKET,
                    '--output', tmp_path / 'out', '--no_auth')
  assert result.returncode == 2
  assert len(result.stderr.strip().splitlines()) == 1
  assert 'no file matches' in result.stderr


def test_dataflow_dry_run_builds_the_job_offline():
  from pipelines import wordcount
  result = wordcount.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--input', 'gs://demo-bucket/books/*.txt', '--output',
      'gs://demo-bucket/counts/out', '--output_table', 'demo-proj:books.counts'])
  job = result.job.proto
  assert job.type == job.type.JOB_TYPE_BATCH
  names = {t.unique_name for t in
           result.job.proto_pipeline.components.transforms.values()}
  for step in ('ReadText', 'CountWords', 'WriteCounts',
               'WriteTable/WriteToBigQuery'):
    assert step in names
  options = result.job.options.get_all_options()
  assert options['setup_file'] == os.path.join(ROOT, 'setup.py')
  assert not options['streaming']


def test_help_is_for_people():
  """--help: the pipeline's own flags first, the Beam flags people use
  after them, Beam's other ~170 behind --help_beam; no markup shown."""
  short = run_main('pubsub_to_bigquery', '--help')
  assert short.returncode == 0, short.stderr
  text = short.stdout
  assert len(text.splitlines()) < 300, len(text.splitlines())
  assert text.startswith('usage: main.py pubsub_to_bigquery [flags] [Beam flags]')
  assert '``' not in text and ':class:' not in text
  assert text.index('--schema') < text.index('--help_beam') < text.index(
      '--runner')
  assert '--type_check_strictness' not in text
  assert 'S \\\n        --output_table' in text  # the example, as written
  every = run_main('pubsub_to_bigquery', '--help_beam')
  assert every.returncode == 0 and '--type_check_strictness' in every.stdout
  assert '``' not in every.stdout


def test_outside_the_virtualenv_is_one_line():
  import subprocess
  import sys
  from tests.conftest import ROOT
  script = ('import sys, runpy; sys.modules["apache_beam"] = None; '
            'sys.argv = ["main.py", "user_signin", "--help"]; '
            'runpy.run_path("main.py", run_name="__main__")')
  done = subprocess.run([sys.executable, '-c', script], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
  assert done.returncode == 2, done.stderr
  assert done.stderr.count('\n') == 1 and 'apache_beam' in done.stderr
  assert './run.sh demo' in done.stderr
