"""docs/flags.md: every flag of every pipeline and command, one table each,
generated from the PipelineOptions classes that ``--help`` shows (as the
Flex Template metadata is), never written by hand.

    python -m tools.flag_tables            # rewrite docs/flags.md
    python -m tools.flag_tables --check    # exit 1 if it is stale
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, 'docs', 'flags.md')
PIPELINES = ('wordcount', 'user_signin', 'pubsub_to_bigquery',
             'pubsub_to_gcs', 'redrive')


def _classes(name):
  from pipelines.options import CommonOptions
  from pipelines.registry import PIPELINES as ALL
  module = ALL[name].load()
  if name == 'redrive':
    return [module.RedriveOptions]
  return [CommonOptions] + list(module.OPTIONS)


def _default(action):
  if isinstance(action, argparse._StoreTrueAction):  # pylint: disable=protected-access
    return 'off'
  if action.default in (None, ''):
    return '-'
  default = action.default
  if isinstance(default, str) and default.startswith(ROOT + os.sep):
    default = os.path.relpath(default, ROOT)  # the same in every checkout
  return '`%s`' % (default,)


def _cell(text):
  from pipelines.options import plain
  return plain(' '.join((text or '').split())).replace('|', '\\|')


def table(name):
  """The markdown of ``name``'s flags, grouped as --help groups them."""
  lines = ['## %s' % name, '']
  if name == 'redrive':
    lines += ['Its own flags; the pipeline\'s (`--pipeline`) come with it, '
              'as in that pipeline\'s table.', '']
  for cls in _classes(name):
    parser = argparse.ArgumentParser(add_help=False)
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
    actions = [a for a in parser._actions if a.option_strings]  # pylint: disable=protected-access
    if not actions:
      continue
    lines += ['%s:' % getattr(cls, 'TITLE', cls.__name__), '',
              '| flag | default | meaning |', '| --- | --- | --- |']
    for action in actions:
      flags = ', '.join('`%s`' % o for o in action.option_strings)
      if action.choices:
        flags += ' (%s)' % ', '.join(str(c) for c in action.choices)
      lines.append('| %s | %s | %s |' % (
          flags, _default(action), _cell(action.help % {
              'default': action.default} if action.help and '%(' in action.help
                                         else action.help)))
    lines.append('')
  return '\n'.join(lines)


def document():
  parts = ['# Flags', '',
           'Every flag of our pipelines and commands, generated from their '
           'option classes by `python -m tools.flag_tables` (a test fails '
           'when this page is stale). Beam\'s own flags: `python main.py '
           '<pipeline> --help_beam`.', '']
  parts += [table(name) for name in PIPELINES]
  return '\n'.join(parts).rstrip('\n') + '\n'


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m tools.flag_tables',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true')
  args = parser.parse_args(argv)
  text = document()
  if args.check:
    with open(PATH, encoding='utf-8') as f:
      stale = f.read() != text
    if stale:
      print('docs/flags.md is stale: python -m tools.flag_tables')
    return 1 if stale else 0
  with open(PATH, 'w', encoding='utf-8') as f:
    f.write(text)
  print(os.path.relpath(PATH, ROOT))
  return 0


if __name__ == '__main__':
  sys.exit(main())
