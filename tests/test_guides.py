"""Every guide in the README marked <!-- guide: NAME --> runs as written
(issue 29), on the files the repository ships, from a fresh folder: each
`python main.py` line of its bash block exits 0, and what the text after
it promises is printed."""

import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT


def guides():
  with open(os.path.join(ROOT, 'README.md')) as f:
    text = f.read()
  return dict(re.findall(
      r'<!-- guide: ([a-z-]+)[^>]*-->\n```bash\n(.*?)```\n<!-- /guide -->',
      text, re.S))


def commands(block):
  for line in block.replace('\\\n', ' ').splitlines():
    line = line.strip()
    if line.startswith('python main.py '):
      yield shlex.split(line.split(' #')[0])[2:]


def test_the_dead_letter_guide_runs_as_written(tmp_path):
  block = guides()['dead-letters']
  os.symlink(os.path.join(ROOT, 'data'), tmp_path / 'data')
  out = []
  for args in commands(block):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py')] +
                          args, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    out.append(done.stdout)
  assert len(out) == 5
  assert '6 dead letters looked at; 1 would move' in out[2]
  assert "2 dead letters looked at (reason = 'bad_value'); 1 moved" in out[3]
  assert [l.strip() for l in out[4].splitlines()[2:6]] == [
      'A-1001', 'A-1002', 'A-1003', 'A-1004']
