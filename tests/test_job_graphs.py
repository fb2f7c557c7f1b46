"""Dataflow job graphs that can be updated: the step names of each pipeline,
built offline with --dry_run, against a committed golden file.

Dataflow matches a running streaming job's transforms by name on --update,
so a renamed step breaks updates. Accept an intended change with:

    UPDATE_GOLDEN=1 ./run.sh test tests/test_job_graphs.py
"""

import os
import re

import pytest

from tests.conftest import ROOT

GOLDEN = os.path.join(ROOT, 'tests', 'golden')
COMMON = ['--runner', 'DataflowRunner', '--dry_run=True', '--project',
          'demo-proj', '--region', 'europe-west1', '--temp_location',
          'gs://demo-bucket/tmp']
JOBS = {
    'wordcount': COMMON + [
        '--input', 'gs://demo-bucket/books/*.txt', '--output',
        'gs://demo-bucket/counts/out', '--output_table',
        'demo-proj:books.word_counts'],
    'user_signin': COMMON + [
        '--input_subscription', 'projects/demo-proj/subscriptions/signins',
        '--output_table', 'demo-proj:signins.signins'],
    'pubsub_to_bigquery': COMMON + [
        '--schema', os.path.join(ROOT, 'data', 'orders.json'),
        '--input_subscription', 'projects/demo-proj/subscriptions/orders',
        '--output_table', 'demo-proj:shop.orders'],
}
OUR_MODULES = re.compile(
    r'(wordcount|user_signin|pubsub_to_bigquery|message_pipeline|cli|text|'
    r'pubsub_message|json_messages|signin_counts|warehouse|message_files|'
    r'schemas)\.py:\d+')


def step_names(name):
  import importlib
  module = importlib.import_module('pipelines.' + name)
  result = module.run(JOBS[name])
  return sorted(t.unique_name for t in
                result.job.proto_pipeline.components.transforms.values())


@pytest.mark.parametrize('name', sorted(JOBS))
def test_step_names_match_the_golden_file(name):
  names = step_names(name)
  path = os.path.join(GOLDEN, '%s_dataflow_steps.txt' % name)
  text = '\n'.join(names) + '\n'
  if os.environ.get('UPDATE_GOLDEN'):
    with open(path, 'w') as f:
      f.write(text)
  with open(path) as f:
    golden = f.read()
  missing = sorted(set(golden.split('\n')) - set(names) - {''})
  added = sorted(set(names) - set(golden.split('\n')))
  assert text == golden, (
      'the %s job graph changed (a running streaming job could not be '
      '--update-d across it).\nmissing: %s\nadded: %s\nIf intended, accept '
      'with: UPDATE_GOLDEN=1 ./run.sh test tests/test_job_graphs.py'
      % (name, missing[:20], added[:20]))


@pytest.mark.parametrize('name', sorted(JOBS))
def test_our_labels_are_explicit_and_unique(name):
  names = step_names(name)
  assert len(names) == len(set(names))
  generated = [n for n in names if OUR_MODULES.search(n) or ' at 0x' in n]
  assert not generated, 'auto-generated labels: %s' % generated
  assert step_names(name) == names  # stable from one build to the next
