"""The Dataflow guide (docs/dataflow.md), checked offline: every flag of every gcloud
command exists in that command's --help, and every flag given to main.py
exists in the pipeline's --help (Beam's flags included)."""

import functools
import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests.conftest import run_main


def guide_commands():
  with open(os.path.join(ROOT, 'docs', 'dataflow.md')) as f:
    guide = f.read()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', guide, re.S):
    for line in block.replace('\\\n', ' ').splitlines():
      line = line.strip()
      if line.startswith(('gcloud ', 'python main.py ')):
        commands.append(line.split('#')[0].split(' && ')[0].strip())
  return commands


def flags_of(command):
  return sorted(set(re.findall(r'(?<=\s)(--[a-z][a-z0-9_-]*)', ' ' + command)))


def gcloud_path(command):
  words = []
  for token in command.split()[1:]:
    if not re.fullmatch(r'[a-z][a-z-]*', token) or len(words) == 4:
      break
    words.append(token)
  return words


@functools.lru_cache(maxsize=None)
def gcloud_help(path):
  env = dict(os.environ, CLOUDSDK_CORE_DISABLE_PROMPTS='1')
  done = subprocess.run(['gcloud'] + list(path) + ['--help'],
                        capture_output=True, text=True, env=env, timeout=120)
  assert done.returncode == 0, (path, done.stderr)
  return done.stdout


@functools.lru_cache(maxsize=None)
def pipeline_help(name):
  done = run_main(name, '--help_beam')  # every flag, Beam's too
  assert done.returncode == 0, done.stderr
  return done.stdout


def test_guide_has_the_commands_it_promises():
  commands = guide_commands()
  joined = '\n'.join(commands)
  for needle in ('gcloud dataflow flex-template build',
                 'gcloud dataflow flex-template run', 'gcloud dataflow jobs drain',
                 'python main.py wordcount', 'python main.py user_signin',
                 '--update', 'gcloud pubsub subscriptions create'):
    assert needle in joined, needle


def test_gcloud_flags_exist():
  assert shutil.which('gcloud'), 'gcloud is needed (it ships the Pub/Sub emulator)'
  unknown = []
  for command in guide_commands():
    if not command.startswith('gcloud '):
      continue
    text = gcloud_help(tuple(gcloud_path(command)))
    unknown += ['%s: %s' % (' '.join(gcloud_path(command)), flag)
                for flag in flags_of(command) if flag not in text]
  assert not unknown


@pytest.mark.parametrize('name', ['wordcount', 'user_signin'])
def test_main_py_flags_exist(name):
  text = pipeline_help(name)
  unknown = [flag for command in guide_commands()
             if command.startswith('python main.py %s ' % name)
             for flag in flags_of(command) if flag not in text]
  assert not unknown
