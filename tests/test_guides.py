"""Every guide in the README or docs/ marked <!-- guide: NAME --> runs as written
(issue 29), on the files the repository ships, from a fresh folder: each
`python main.py` line of its bash block exits 0, and what the text after
it promises is printed."""

import os
import re
import shlex
import subprocess
import sys

from tests.conftest import ROOT


DOCS = os.path.join(ROOT, 'docs')


def pages():
  """The README and every page of docs/, {path: text}."""
  found = {os.path.join(ROOT, 'README.md'): None}
  found.update({os.path.join(DOCS, n): None for n in sorted(os.listdir(DOCS))
                if n.endswith('.md')})
  for path in found:
    with open(path, encoding='utf-8') as f:
      found[path] = f.read()
  return found


def guides():
  text = '\n'.join(pages().values())
  return dict(re.findall(
      r'<!-- guide: ([a-z-]+)[^>]*-->\n```bash\n(.*?)```\n<!-- /guide -->',
      text, re.S))


def commands(block):
  for line in block.replace('\\\n', ' ').splitlines():
    line = line.strip()
    if line.startswith('python main.py '):
      yield shlex.split(line.split(' #')[0])[2:]


def run_guide(name, folder):
  """Each `python main.py` line of guide ``name``, in a fresh ``folder``
  holding the shipped data/; every one exits 0; returns their outputs."""
  os.symlink(os.path.join(ROOT, 'data'), folder / 'data')
  out = []
  for args in commands(guides()[name]):
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py')] +
                          args, cwd=folder, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (args, done.stderr[-2000:])
    out.append(done.stdout)
  return out


def test_the_dead_letter_guide_runs_as_written(tmp_path):
  out = run_guide('dead-letters', tmp_path)
  assert len(out) == 5
  assert '6 dead letters looked at; 1 would move' in out[2]
  assert "2 dead letters looked at (reason = 'bad_value'); 1 moved" in out[3]
  assert [l.strip() for l in out[4].splitlines()[2:6]] == [
      'A-1001', 'A-1002', 'A-1003', 'A-1004']


def test_every_page_is_linked_and_every_link_resolves():
  """The README links each page of docs/, and no relative link of the
  README or of a page points at nothing (the split into docs/ moved text
  whose links were relative to the top)."""
  found = pages()
  readme = found[os.path.join(ROOT, 'README.md')]
  for path in found:
    if path.startswith(DOCS):
      assert 'docs/%s' % os.path.basename(path) in readme, path
  for path, text in found.items():
    for target in re.findall(r'\]\(([^)#\s]+)[^)]*\)', text):
      if '://' in target or target.startswith('mailto:'):
        continue
      where = os.path.normpath(os.path.join(os.path.dirname(path), target))
      assert os.path.exists(where), (path, target)


def test_the_readme_first_screen_names_every_pipeline_and_command():
  from pipelines.registry import PIPELINES
  readme = pages()[os.path.join(ROOT, 'README.md')]
  first = readme.split('## Two commands')[0]
  for name in PIPELINES:
    assert '**%s**' % name in first, name
  assert len(readme.splitlines()) < 200


def test_the_flag_tables_are_not_stale():
  from tools import flag_tables
  with open(flag_tables.PATH, encoding='utf-8') as f:
    assert f.read() == flag_tables.document(), (
        'regenerate it: python -m tools.flag_tables')


def test_the_first_steps_guide_runs_as_written(tmp_path):
  out = run_guide('first-steps', tmp_path)
  assert len(out) == 6
  assert out[1].splitlines()[2].split()[0] == 'the'  # the commonest word
  reasons = [l.split()[0] for l in out[3].splitlines()[2:7]]
  assert reasons == ['bad_date', 'bad_userid', 'missing_date', 'not_json',
                     'not_object']
  assert [l.strip() for l in out[5].splitlines()[2:5]] == [
      'A-1001', 'A-1002', 'A-1003']


def test_the_local_stack_guide_runs_as_written(tmp_path):
  """The whole bash block, in one shell from the repository as a user types
  it (inside the venv), with emulators of its own: start, dataset, topic,
  a stream in the background, a publish, a query on the BigQuery emulator,
  the stream stopped, the emulators stopped."""
  state = tmp_path / 'state'
  env = dict(os.environ, EMULATOR_STATE=str(state),
             PATH=os.path.dirname(sys.executable) + os.pathsep +
             os.environ['PATH'],
             VENV=os.path.dirname(os.path.dirname(sys.executable)))
  for name in ('PUBSUB_EMULATOR_HOST', 'STORAGE_EMULATOR_HOST',
               'BIGQUERY_EMULATOR_HOST'):
    env.pop(name, None)  # the guide's own emulators, not the session's
  shell = subprocess.Popen(['bash', '-e', '-c', guides()['local-stack']],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
  try:
    out, _ = shell.communicate(timeout=300)
  finally:
    if shell.poll() is None:
      os.killpg(shell.pid, 9)
    subprocess.run([sys.executable, '-m', 'tools.emulators', 'stop',
                    '--state', str(state)], cwd=ROOT, capture_output=True)
  assert shell.returncode == 0, out[-3000:]
  assert re.search(r'^93234234 +2017-10-17 20:57:17\.338320\+00:00$', out,
                   re.M), out[-3000:]
  assert 'stored:       1' in out, out[-3000:]
  assert out.count('stopped ') == 3, out[-3000:]
