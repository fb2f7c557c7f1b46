"""Packaging proven the way Dataflow workers use it: our sdist and wheel,
installed into fresh virtual environments, run both pipelines from an empty
directory where the source tree is not importable."""

import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import duckdb
import pytest

from tests.conftest import ROOT

SOURCES = ('pipelines', 'transforms', 'storage', 'local_runner', 'setup.py',
           'MANIFEST.in', 'requirements.txt', 'main.py')


def pinned_beam():
  with open(os.path.join(ROOT, 'requirements.txt')) as f:
    return next(line.split('#')[0].strip() for line in f
                if line.startswith('apache-beam'))


@pytest.fixture(scope='module')
def dists(tmp_path_factory):
  """Our sdist and wheel, built from a copy of the sources."""
  src = tmp_path_factory.mktemp('src')
  for name in SOURCES:
    path = os.path.join(ROOT, name)
    if os.path.isdir(path):
      shutil.copytree(path, src / name,
                      ignore=shutil.ignore_patterns('__pycache__'))
    else:
      shutil.copy(path, src / name)
  out = tmp_path_factory.mktemp('dist')
  subprocess.run(
      [sys.executable, '-m', 'build', '--no-isolation', '--sdist', '--wheel',
       '--outdir', str(out), str(src)],
      check=True, capture_output=True, cwd=str(src))
  return {'sdist': glob.glob(str(out / '*.tar.gz'))[0],
          'wheel': glob.glob(str(out / '*.whl'))[0]}


def fresh_venv(path, dist):
  """A new venv that reuses our third-party packages (a .pth to this
  interpreter's site-packages) and has only ``dist`` of ours, installed."""
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)],
                 check=True)
  python = str(path / 'bin' / 'python')
  site = subprocess.run(
      [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
      check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, 'third_party.pth'), 'w') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  subprocess.run(
      [sys.executable, '-m', 'pip', '--python', python, 'install', '--quiet',
       '--no-deps', '--no-build-isolation', '--disable-pip-version-check', dist],
      check=True, capture_output=True, env=clean_env())
  return path


def clean_env():
  env = dict(os.environ)
  env.pop('PYTHONPATH', None)  # the source tree must not be importable
  return env


@pytest.mark.parametrize('kind', ['wheel', 'sdist'])
def test_installed_package_runs_both_pipelines(dists, tmp_path, kind):
  venv = fresh_venv(tmp_path / 'venv', dists[kind])
  work = tmp_path / 'empty'
  work.mkdir()
  env = clean_env()
  where = subprocess.run(
      [str(venv / 'bin' / 'python'), '-c',
       'import pipelines, transforms, storage, local_runner; print(pipelines.__file__, '
       'transforms.__file__, storage.__file__, local_runner.__file__)'],
      capture_output=True, text=True, cwd=str(work), env=env)
  assert where.returncode == 0, where.stderr
  assert str(venv) in where.stdout and ROOT not in where.stdout

  (work / 'in.txt').write_text('to be or not to be\n')
  wordcount = subprocess.run(
      [str(venv / 'bin' / 'beam-pipelines'), 'wordcount', '--input', 'in.txt',
       '--output', 'out/counts', '--num_shards', '1'],
      capture_output=True, text=True, cwd=str(work), env=env, timeout=300)
  assert wordcount.returncode == 0, wordcount.stderr
  assert sorted((work / 'out' / 'counts-00000-of-00001').read_text().split('\n')) == [
      '', 'be: 2', 'not: 1', 'or: 1', 'to: 2']

  (work / 'signins.jsonl').write_text(
      '{"userid": "93234234", "date": "2017-10-17T20:57:17.338320"}\n'
      'not json\n')
  signin = subprocess.run(
      [str(venv / 'bin' / 'python'), '-m', 'pipelines', 'user_signin',
       '--input_file', 'signins.jsonl', '--warehouse', 'wh.duckdb'],
      capture_output=True, text=True, cwd=str(work), env=env, timeout=300)
  assert signin.returncode == 0, signin.stderr
  con = duckdb.connect(str(work / 'wh.duckdb'), read_only=True)
  assert con.execute('SELECT userid FROM signins').fetchall() == [('93234234',)]
  assert con.execute('SELECT reason FROM signin_errors').fetchall() == [
      ('not_json',)]


def test_setup_pins_the_same_beam_as_requirements(dists):
  with zipfile.ZipFile(dists['wheel']) as whl:
    metadata = next(whl.read(n).decode() for n in whl.namelist()
                    if n.endswith('/METADATA'))
  requires = re.findall(r'^Requires-Dist: (.*)$', metadata, re.M)
  assert pinned_beam().replace(' ', '') in [r.replace(' ', '') for r in requires]
  import apache_beam
  assert pinned_beam().endswith('==' + apache_beam.__version__)


def test_no_save_main_session_anywhere():
  """Every DoFn lives in an importable module; pickling __main__ is never needed."""
  needle = 'save_main' + '_session'
  offenders = []
  for folder in ('pipelines', 'transforms', 'storage', 'local_runner', 'tools',
                 'benchmarks'):
    for path in glob.glob(os.path.join(ROOT, folder, '**', '*.py'), recursive=True):
      with open(path) as f:
        if needle in f.read():
          offenders.append(path)
  assert not offenders
