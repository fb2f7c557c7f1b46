"""Dataflow job graphs that can be updated: the step names and the coder of
every PCollection of each pipeline, built offline with --dry_run, against
committed golden files.

Dataflow matches a running streaming job's transforms by name on --update,
so a renamed step breaks updates unless --transform_name_mapping maps it
(``golden/transform_name_mapping.json``, in docs/dataflow.md), and a changed coder
breaks them for good. Accept an intended change with:

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
    'pubsub_to_gcs': COMMON + [
        '--input_subscription', 'projects/demo-proj/subscriptions/signins',
        '--output_directory', 'gs://demo-bucket/archive'],
    'pubsub_to_bigquery': COMMON + [
        '--schema', os.path.join(ROOT, 'data', 'orders.json'),
        '--input_subscription', 'projects/demo-proj/subscriptions/orders',
        '--output_table', 'demo-proj:shop.orders'],
}
OUR_MODULES = re.compile(
    r'(wordcount|user_signin|pubsub_to_bigquery|store|read_messages|text|'
    r'signin_messages|json_messages|signin_counts|bigquery_sink|message_files|'
    r'archive|pubsub_to_gcs|'
    r'schemas)\.py:\d+')


def job_graph(name):
  import importlib
  module = importlib.import_module('pipelines.' + name)
  return module.run(JOBS[name]).job.proto_pipeline.components


def step_names(name):
  return sorted(t.unique_name for t in job_graph(name).transforms.values())


def coder_text(components, coder_id):
  """A coder as its URN's short name with its components', e.g.
  kv[string_utf8, FastPrimitivesCoder]; Python coders by their class."""
  from apache_beam.coders.coders import Coder
  coder = components.coders[coder_id]
  if 'python' in coder.spec.urn:
    return repr(Coder.from_runner_api(coder, None))
  parts = [coder_text(components, c) for c in coder.component_coder_ids]
  return coder.spec.urn.split(':')[-2] + ('[%s]' % ', '.join(parts)
                                          if parts else '')


def pcollection_coders(name):
  components = job_graph(name)
  lines = []
  for t in components.transforms.values():
    for tag, pcoll in t.outputs.items():
      label = t.unique_name + ('' if tag in ('None', 'out') else '.' + tag)
      lines.append('%s\t%s' % (label, coder_text(
          components, components.pcollections[pcoll].coder_id)))
  return sorted(lines)


def check_golden(path, lines, what):
  text = '\n'.join(lines) + '\n'
  if os.environ.get('UPDATE_GOLDEN'):
    with open(path, 'w') as f:
      f.write(text)
  with open(path) as f:
    golden = f.read()
  missing = sorted(set(golden.split('\n')) - set(lines) - {''})
  added = sorted(set(lines) - set(golden.split('\n')))
  assert text == golden, (
      'the %s changed (a running streaming job could not be --update-d '
      'across it).\nmissing: %s\nadded: %s\nIf intended, accept with: '
      'UPDATE_GOLDEN=1 ./run.sh test tests/test_job_graphs.py'
      % (what, missing[:20], added[:20]))


@pytest.mark.parametrize('name', sorted(JOBS))
def test_step_names_match_the_golden_file(name):
  check_golden(os.path.join(GOLDEN, '%s_dataflow_steps.txt' % name),
               step_names(name), '%s job graph' % name)


@pytest.mark.parametrize('name', sorted(JOBS))
def test_every_coder_matches_the_golden_file(name):
  """Typed transforms pick their coders at construction: these are them."""
  check_golden(os.path.join(GOLDEN, '%s_dataflow_coders.txt' % name),
               pcollection_coders(name), '%s coders' % name)


@pytest.mark.parametrize('name', ['pubsub_to_bigquery', 'user_signin',
                                  'wordcount'])
def test_the_name_mapping_updates_a_job_of_the_earlier_graph(name):
  """Each step renamed since the earlier graph maps onto a step of this one
  (Dataflow maps a composite's inner steps with it)."""
  import json
  with open(os.path.join(GOLDEN, 'transform_name_mapping.json')) as f:
    mapping = json.load(f)[name]
  names = set(step_names(name))
  assert mapping, 'no renamed steps listed for %s' % name
  for old, new in mapping.items():
    assert old not in names and new in names, (old, new)


@pytest.mark.parametrize('name', sorted(JOBS))
def test_our_labels_are_explicit_and_unique(name):
  names = step_names(name)
  assert len(names) == len(set(names))
  generated = [n for n in names if OUR_MODULES.search(n) or ' at 0x' in n]
  assert not generated, 'auto-generated labels: %s' % generated
  assert step_names(name) == names  # stable from one build to the next
