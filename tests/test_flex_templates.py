"""Flex Templates: metadata generated from the options classes, a Dockerfile
whose Beam matches ours, and a launcher that maps template parameters."""

import json
import os
import re

import pytest

from pipelines import flex_template
from tests.conftest import ROOT


@pytest.mark.parametrize('name', sorted(flex_template.PIPELINES))
def test_committed_metadata_matches_the_options(name):
  path = flex_template.metadata_path(name)
  with open(path) as f:
    committed = f.read()
  assert committed == flex_template.rendered(name), (
      '%s is stale: the options of %s changed. Accept with: '
      'python -m pipelines.flex_template write' % (os.path.relpath(path, ROOT),
                                                   name))


@pytest.mark.parametrize('name', sorted(flex_template.PIPELINES))
def test_metadata_documents_every_template_flag(name):
  meta = json.loads(flex_template.rendered(name))
  assert meta['name'] == name and meta['description']
  params = {p['name']: p for p in meta['parameters']}
  flags = {a.dest for _, a in flex_template.template_actions(name)}
  assert set(params) == flags
  for p in params.values():
    assert p['helpText'].strip(), p['name']
    for regex in p.get('regexes', []):
      re.compile(regex)
  assert not flags & flex_template.LOCAL_ONLY


def test_regexes_accept_and_refuse_what_they_should():
  meta = {p['name']: p for p in json.loads(
      flex_template.rendered('user_signin'))['parameters']}

  def ok(name, value):
    return all(re.match(r, value) for r in meta[name]['regexes'])
  assert ok('input_subscription', 'projects/p/subscriptions/s')
  assert not ok('input_subscription', 'my-subscription')
  assert ok('output_table', 'proj:dataset.table')
  assert ok('window_seconds', '60') and not ok('window_seconds', 'sixty')
  assert ok('bigquery_method', 'storage_write_api')
  assert not ok('bigquery_method', 'carrier_pigeon')


def test_dockerfile_uses_our_beam_version():
  with open(os.path.join(ROOT, 'Dockerfile')) as f:
    dockerfile = f.read()
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    beam = re.search(r'^apache-beam\[gcp\]==(\S+)', f.read(), re.M).group(1)
  assert re.search(r'^ARG BEAM_VERSION=(\S+)$', dockerfile, re.M).group(1) == beam
  assert 'apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}' in dockerfile
  assert 'FLEX_TEMPLATE_PYTHON_PY_FILE=${WORKDIR}/templates/launch.py' in dockerfile


def test_launcher_turns_boolean_parameters_into_flags(monkeypatch):
  seen = {}
  monkeypatch.setenv('BEAM_PIPELINE', 'wordcount')
  monkeypatch.setattr('pipelines.main.main', lambda argv: seen.setdefault('argv', argv))
  flex_template.launch(['--input=gs://b/in*', '--lowercase=true',
                        '--output=gs://b/out'])
  assert seen['argv'] == ['wordcount', '--input=gs://b/in*', '--lowercase',
                          '--output=gs://b/out']
  seen.clear()
  flex_template.launch(['--lowercase=false'])
  assert seen['argv'] == ['wordcount']
