"""The local stack needs no Python one-liners (issue 29): a dataset made on
the BigQuery emulator by ./run.sh emulators dataset, a missing dataset's
error naming the command that works where the user is, and main.py query
on the emulator."""

import json
import os
import subprocess
import sys
import uuid

from tests.conftest import PROJECT
from tests.conftest import ROOT
from tests.conftest import run_main


def test_a_dataset_made_by_a_command_then_used_and_queried(
    bigquery_emulator, tmp_path):
  client = bigquery_emulator
  dataset = 'made_%s' % uuid.uuid4().hex[:8]
  lines = tmp_path / 's.jsonl'
  lines.write_text('{"userid": "u", "date": "2017-10-17T20:57:17Z"}\n')
  replay = ('user_signin', '--input_file', lines, '--output_table',
            '%s:%s.signins' % (PROJECT, dataset), '--bigquery_method',
            'streaming_inserts')
  missing = run_main(*replay)
  assert missing.returncode == 2, missing.stderr[-2000:]
  assert missing.stderr.count('\n') == 1, missing.stderr
  command = './run.sh emulators dataset %s:%s' % (PROJECT, dataset)
  assert command in missing.stderr and 'bq mk' not in missing.stderr
  # The state ./run.sh emulators start writes, naming this test's emulator.
  state = tmp_path / 'state'
  state.mkdir()
  (state / 'emulators.json').write_text(json.dumps({'bigquery': {
      'pids': [os.getpid()], 'log': '', 'env': {
          'BIGQUERY_EMULATOR_HOST': os.environ['BIGQUERY_EMULATOR_HOST']}}}))
  made = subprocess.run(  # as the error says, through run.sh
      [os.path.join(ROOT, 'run.sh'), 'emulators', 'dataset',
       '%s:%s' % (PROJECT, dataset)], cwd=ROOT, capture_output=True,
      text=True, timeout=300, env=dict(os.environ, EMULATOR_STATE=str(state),
                                       VENV=os.path.dirname(os.path.dirname(
                                           sys.executable))))
  assert made.returncode == 0, made.stderr
  assert dataset in [d.dataset_id for d in client.list_datasets()]
  stored = run_main(*replay)
  assert stored.returncode == 0, stored.stderr[-2000:]
  found = run_main('query', '--project', PROJECT, '--format', 'json',
                   'SELECT userid FROM %s.signins' % dataset)
  assert found.returncode == 0, found.stderr
  assert json.loads(found.stdout) == [{'userid': 'u'}]
  bad = run_main('query', '--project', PROJECT, 'SELECT * FROM nowhere.t')
  assert bad.returncode == 2 and bad.stderr.count('\n') == 1, bad.stderr
