"""Writes a benchmark's latest results into its section of benchmarks/README.md."""

import os

README = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'README.md')


def replace_section(name, body):
  """Replaces the text between <!-- NAME results --> and <!-- end NAME results -->."""
  start, end = '<!-- %s results -->' % name, '<!-- end %s results -->' % name
  with open(README, encoding='utf-8') as f:
    text = f.read()
  before, found, rest = text.partition(start)
  if not found:
    before, rest = text.rstrip('\n') + '\n\n', end
  after = rest.partition(end)[2]
  with open(README, 'w', encoding='utf-8') as f:
    f.write('%s%s\n%s\n%s%s' % (before, start, body.strip('\n'), end, after))
