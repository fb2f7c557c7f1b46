"""Dataflow Flex Template support, derived from the pipelines' options classes.

    python -m pipelines.flex_template write     # templates/<pipeline>/metadata.json
    python -m pipelines.flex_template check     # exit 1 if a file is stale

``metadata.json`` (name, description, every parameter with its help text and
a validation regex where one fits) is generated from the same
``PipelineOptions`` classes that ``--help`` shows, never written by hand.
``launch(argv)`` is the launcher's entry point (``templates/launch.py``).
"""

import argparse
import json
import os
import sys

from pipelines import launcher
from pipelines.registry import TEMPLATES as PIPELINES
from storage import table_specs

TEMPLATES = os.path.join(launcher.PROJECT_ROOT, 'templates')
# Flags that make sense only on a laptop, left out of templates.
LOCAL_ONLY = {'log_file', 'warehouse', 'progress_seconds', 'status_file',
              'local_pubsub_reader', 'max_delivery_attempts', 'max_in_flight',
              'max_in_flight_mb', 'drain_seconds', 'table'}
# Validation for flags whose form is known (Dataflow checks them at launch);
# every *_table flag names a BigQuery table.
REGEXES = {
    'input_subscription': r'^projects/[^/]+/subscriptions/[^/]+$',
    'input_topic': r'^projects/[^/]+/topics/[^/]+$',
    'dead_letter_topic': r'^projects/[^/]+/topics/[^/]+$',
    'input': r'^gs://[^/]+/.+$',
    'input_file': r'^gs://[^/]+/.+$',
    'schema': r'^gs://[^/]+/.+$',
    'udf': r'^gs://[^/]+/.+:[A-Za-z_][A-Za-z0-9_]*$',
    'output': r'^gs://[^/]+/.+$',
    'output_directory': r'^gs://[^/]+(/.*)?$',
}


def template_actions(name):
  """(class, argparse action) for every flag a template of ``name`` takes."""
  for cls in PIPELINES[name].load().OPTIONS:
    parser = argparse.ArgumentParser(add_help=False)
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
    for action in parser._actions:  # pylint: disable=protected-access
      if action.dest not in LOCAL_ONLY:
        yield cls, action


def store_true_flags(name):
  return {a.dest for _, a in template_actions(name)
          if isinstance(a, argparse._StoreTrueAction)}  # pylint: disable=protected-access


def _regex(action):
  if action.dest in REGEXES:
    return REGEXES[action.dest]
  if action.dest.endswith('_table'):
    return table_specs.BIGQUERY_SPEC_REGEX
  if action.choices:
    return '^(%s)$' % '|'.join(action.choices)
  if isinstance(action, argparse._StoreTrueAction):  # pylint: disable=protected-access
    return '^(true|false)$'
  if action.type is int:
    return '^[0-9]+$'
  if action.type is float:
    return r'^[0-9]+(\.[0-9]+)?$'
  return None


def _help(action):
  text = (action.help or '').replace('%(default)r', repr(action.default))
  text = text.replace('%(default)s', str(action.default))
  if action.default not in (None, False) and 'default' not in text.lower():
    text += ' Default: %s.' % action.default
  return text


def metadata(name):
  """The Flex Template metadata dict for pipeline ``name``."""
  module = PIPELINES[name].load()
  description = ' '.join(module.__doc__.split('\n\n')[0].split())
  parameters = []
  for _, action in template_actions(name):
    param = {
        'name': action.dest,
        'label': action.dest.replace('_', ' ').capitalize(),
        'helpText': _help(action),
        'isOptional': action.dest not in PIPELINES[name].template_required,
    }
    regex = _regex(action)
    if regex:
      param['regexes'] = [regex]
    parameters.append(param)
  return {'name': name, 'description': description, 'parameters': parameters}


def metadata_path(name):
  return os.path.join(TEMPLATES, name, 'metadata.json')


def rendered(name):
  return json.dumps(metadata(name), indent=2, sort_keys=False) + '\n'


def launch(argv=None):
  """Flex Template launcher entry: pipeline from $BEAM_PIPELINE, flags from argv.

  The launcher passes every parameter as --name=value; boolean flags arrive
  as --flag=true/false and become argparse's presence or absence here.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  name = os.environ.get('BEAM_PIPELINE')
  if name not in PIPELINES:
    raise SystemExit('BEAM_PIPELINE must be one of %s' % ', '.join(PIPELINES))
  flags = store_true_flags(name)
  translated = []
  for arg in argv:
    key, sep, value = arg.partition('=')
    if sep and key.startswith('--') and key[2:] in flags:
      if value.lower() == 'true':
        translated.append(key)
      continue
    translated.append(arg)
  from pipelines.main import main
  return main([name] + translated)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('action', choices=['write', 'check'])
  args = parser.parse_args(argv)
  stale = []
  for name in PIPELINES:
    text = rendered(name)
    path = metadata_path(name)
    current = open(path).read() if os.path.exists(path) else None
    if current == text:
      continue
    if args.action == 'write':
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, 'w') as f:
        f.write(text)
      print('wrote %s' % os.path.relpath(path, launcher.PROJECT_ROOT))
    else:
      stale.append(os.path.relpath(path, launcher.PROJECT_ROOT))
  if stale:
    print('stale: %s (python -m pipelines.flex_template write)' % ', '.join(stale))
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
