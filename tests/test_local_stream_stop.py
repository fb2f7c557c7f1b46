"""A local stream stops in bounded time whatever Pub/Sub does, never pulls
far ahead of what is stored, and loses nothing: on the official emulator,
frozen with SIGSTOP where a test needs Pub/Sub not to answer."""

import contextlib
import os
import signal
import time
import uuid

import pytest

from tests.conftest import run_main
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import stored
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins
from tools import status as status_file

pytestmark = pytest.mark.emulator
FIXED_DATE = '2017-10-17T20:57:17Z'


@contextlib.contextmanager
def frozen(emulator):
  """The emulator's processes stopped (SIGSTOP): Pub/Sub does not answer."""
  for pid in emulator.pids:
    os.kill(pid, signal.SIGSTOP)
  try:
    yield
  finally:
    for pid in emulator.pids:
      os.kill(pid, signal.SIGCONT)


def new_subscription(emulator, count):
  topic, sub = 'stop-%s' % uuid.uuid4().hex[:8], 'stop-sub-%s' % uuid.uuid4().hex[:8]
  _, ids, _ = publish_signins.publish(
      emulator.project, topic, count, bad_fraction=0.1, date=FIXED_DATE,
      subscription=sub, max_message_bytes=2048)
  return 'projects/%s/subscriptions/%s' % (emulator.project, sub), ids


def start_and_wait(tmp_path, subscription, stored_at_least, *extra):
  """The pipeline on ``subscription``, once it has stored that many."""
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--input_subscription', subscription, '--warehouse', db,
      '--max_message_bytes', 2048, '--progress_seconds', 0.3,
      '--status_file', status, *extra)
  wait_for_status(
      status, lambda s: s.get('stored_total', 0) >= stored_at_least, proc)
  return proc, db


def run_to_completion(tmp_path, subscription, db, count, *extra):
  status = tmp_path / ('status-%s.json' % uuid.uuid4().hex[:6])
  proc = start_pipeline(
      tmp_path, '--input_subscription', subscription, '--warehouse', db,
      '--max_message_bytes', 2048, '--progress_seconds', 0.3,
      '--status_file', status, *extra)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= count, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  return out, err


def assert_stored_exactly_once(db, ids):
  rows, dead = stored(db)
  got = [r[0] for r in rows] + [d[0] for d in dead]
  assert len(got) == len(set(got)), 'a message stored twice'
  assert set(got) == set(ids), 'lost %d' % len(set(ids) - set(got))


def test_stop_while_pubsub_does_not_answer(pubsub_emulator, tmp_path):
  subscription, ids = new_subscription(pubsub_emulator, 3000)
  proc, db = start_and_wait(tmp_path, subscription, 500, '--drain_seconds', 2)
  with frozen(pubsub_emulator):
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - started
  assert proc.returncode == 0, err
  assert took <= 2 + 5, 'the stop took %.1f s' % took
  assert 'Traceback' not in err and 'user_signin:' in out
  # Pub/Sub is back: a new run on the same subscription gets the rest, and
  # what the first run stored but could not acknowledge is absorbed.
  run_to_completion(tmp_path, subscription, db, len(ids))
  assert_stored_exactly_once(db, ids)


def test_second_signal_exits_at_once(pubsub_emulator, tmp_path):
  # A backlog the stream is still reading when Pub/Sub freezes, so that
  # acknowledgements are pending and the first stop is slow (2,000 messages
  # were all stored and acknowledged before the signal on a busy machine,
  # the stop took 0.3 s, and the second signal met the default handler).
  subscription, ids = new_subscription(pubsub_emulator, 20000)
  proc, db = start_and_wait(tmp_path, subscription, 200, '--drain_seconds', 60)
  with frozen(pubsub_emulator):  # so that the first stop is slow
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert proc.poll() is None, 'the first stop was not slow: no test'
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - started
  assert took < 2, 'the second signal took %.1f s' % took
  assert proc.returncode == 128 + signal.SIGTERM, err
  assert 'second signal' in err
  run_to_completion(tmp_path, subscription, db, len(ids))
  assert_stored_exactly_once(db, ids)


def test_read_ahead_is_bounded_on_a_large_backlog(pubsub_emulator, tmp_path):
  subscription, ids = new_subscription(pubsub_emulator, 50000)
  db, status = tmp_path / 'wh.duckdb', tmp_path / 'status.json'
  proc = start_pipeline(
      tmp_path, '--input_subscription', subscription, '--warehouse', db,
      '--max_message_bytes', 2048, '--progress_seconds', 0.2,
      '--status_file', status, '--max_in_flight', 1000)
  seen = []
  deadline = time.monotonic() + 180
  while time.monotonic() < deadline and proc.poll() is None:
    s = status_file.read(status)
    if 'in_flight' in s:
      seen.append(s['in_flight'])
    if s.get('stored_total', 0) >= len(ids):
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert len(seen) > 10 and max(seen) > 0
  assert max(seen) <= 1000, max(seen)
  assert_stored_exactly_once(db, ids)


def test_pubsub_unreachable_or_missing_at_start(pubsub_emulator, tmp_path):
  from tools.emulators import free_port
  started = time.monotonic()
  result = run_main(
      'user_signin', '--input_subscription',
      'projects/my-project/subscriptions/my-sub', '--warehouse',
      tmp_path / 'w.duckdb',
      env={'PUBSUB_EMULATOR_HOST': '127.0.0.1:%d' % free_port()}, timeout=60)
  assert result.returncode == 1, result.stderr
  lines = result.stderr.strip().splitlines()
  assert 'did not answer within' in lines[-1], result.stderr
  assert 'Traceback' not in result.stderr
  assert time.monotonic() - started < 30

  result = run_main(
      'user_signin', '--input_subscription', 'projects/%s/subscriptions/'
      'no-such-sub' % pubsub_emulator.project, '--warehouse',
      tmp_path / 'w.duckdb', timeout=60)
  assert result.returncode == 2, result.stderr
  assert ('--input_subscription: subscription projects/%s/subscriptions/'
          'no-such-sub does not exist' % pubsub_emulator.project
          ) in result.stderr.strip().splitlines()[-1]
