"""Pub/Sub to windowed files on GCS or a local folder, and replays from that
archive (issue 19): every message kept exactly, acknowledged only once its
file is whole, and read back with its own id so a replay adds nothing."""

import os
import signal
import uuid

import pytest

from tests.conftest import GCS_BUCKET
from tests.conftest import duckdb_dicts
from tests.conftest import run_main
from tests.test_user_signin_stream import start_pipeline
from tests.test_user_signin_stream import wait_for_status
from tools import publish_signins
from transforms import archive

PAYLOADS = [b'{"userid": "u1", "date": "2017-10-17T20:57:17Z"}',
            b'\xff\xfe not UTF-8 \x00 at all',
            b'',
            '{"userid": "\u00e9t\u00e9", "date": 1508273837}'.encode('utf-8'),
            b'{"oops']


def subscription(pubsub_emulator):
  project = pubsub_emulator.project
  topic, sub = 'arch-%s' % uuid.uuid4().hex[:8], 'arch-sub-%s' % uuid.uuid4().hex[:8]
  publish_signins.publish(project, topic, 0, subscription=sub)
  return topic, 'projects/%s/subscriptions/%s' % (project, sub)


def publish(pubsub_emulator, topic, payloads, attributes=None):
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient()
  path = publisher.topic_path(pubsub_emulator.project, topic)
  futures = [publisher.publish(path, p, **(attributes or {'n': str(i)}))
             for i, p in enumerate(payloads)]
  return [f.result() for f in futures]


def archived(directory):
  """{message id: (message, path)} of every archive file under it."""
  from apache_beam.io.filesystems import FileSystems
  out = {}
  pattern = directory.rstrip('/') + '/**'
  for m in FileSystems.match([pattern])[0].metadata_list:
    if not archive.is_archive(m.path):
      continue
    with FileSystems.open(m.path, compression_type='uncompressed') as f:
      for rec in archive.read_records(f, m.path):
        msg = archive.message(rec)
        out.setdefault(msg.message_id, (msg, m.path))
  return out


def archive_run(tmp_path, sub, directory, *flags):
  status = tmp_path / ('status-%s.json' % uuid.uuid4().hex[:6])
  return start_pipeline(
      tmp_path, '--input_subscription', sub, '--output_directory', directory,
      '--warehouse', tmp_path / 'deliveries.duckdb', '--progress_seconds', 0.3,
      '--status_file', status, *flags, name='pubsub_to_gcs'), status


@pytest.mark.parametrize('fmt', archive.FORMATS)
def test_every_message_is_kept_byte_exact_in_window_folders(
    pubsub_emulator, tmp_path, fmt):
  topic, sub = subscription(pubsub_emulator)
  directory = str(tmp_path / 'archive')
  proc, status = archive_run(tmp_path, sub, directory, '--format', fmt,
                             '--output_filename_prefix', 'signins-')
  wait_for_status(status, lambda s: 'messages_in' in s, proc)
  ids = publish(pubsub_emulator, topic, PAYLOADS)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids), proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  got = archived(directory)
  assert sorted(got) == sorted(ids)
  for i, message_id in enumerate(ids):
    msg, path = got[message_id]
    assert msg.data == PAYLOADS[i]
    assert msg.attributes == {'n': str(i)}
    assert msg.publish_time.tzinfo is not None
    folder = msg.publish_time.strftime('%Y/%m/%d/%H')
    assert '/%s/signins-' % folder in path, path
    start = msg.publish_time.replace(
        minute=msg.publish_time.minute - msg.publish_time.minute % 5,
        second=0, microsecond=0)
    assert start.strftime('%Y%m%dT%H%M%SZ--') in os.path.basename(path)
    assert path.endswith(archive.EXTENSIONS[fmt])
  assert not [f for _, _, files in os.walk(directory) for f in files
              if f.endswith('.tmp')]


def test_archive_on_gcs_then_replay_equals_the_live_table(
    pubsub_emulator, gcs_emulator, tmp_path):
  """Live: the stream into a warehouse, and the same subscription's twin
  into the archive on the GCS emulator (compacted into one shard per
  window at the stop, --num_shards 1); then the archive replayed into a
  fresh warehouse has the same rows and dead letters, with the same ids, and
  a second replay adds nothing."""
  project = pubsub_emulator.project
  topic = 'twin-%s' % uuid.uuid4().hex[:8]
  live_sub, archive_sub = topic + '-live', topic + '-archive'
  publish_signins.publish(project, topic, 0, subscription=live_sub)
  from google.cloud import pubsub_v1
  subscriber = pubsub_v1.SubscriberClient()
  subscriber.create_subscription(
      name=subscriber.subscription_path(project, archive_sub),
      topic=pubsub_v1.PublisherClient().topic_path(project, topic))
  path = lambda s: 'projects/%s/subscriptions/%s' % (project, s)  # noqa: E731
  directory = 'gs://%s/archive-%s' % (GCS_BUCKET, uuid.uuid4().hex[:6])
  (tmp_path / 'a').mkdir()
  (tmp_path / 'l').mkdir()
  arch, arch_status = archive_run(tmp_path / 'a', path(archive_sub), directory,
                                  '--num_shards', 1)
  live_db = tmp_path / 'live.duckdb'
  live_status = tmp_path / 'live.json'
  live = start_pipeline(tmp_path / 'l', '--input_subscription', path(live_sub),
                        '--warehouse', live_db, '--progress_seconds', 0.3,
                        '--status_file', live_status)
  wait_for_status(arch_status, lambda s: 'messages_in' in s, arch)
  wait_for_status(live_status, lambda s: 'messages_in' in s, live)
  n, ids, _ = publish_signins.publish(project, topic, 300, bad_fraction=0.2,
                                      max_message_bytes=2048)
  for proc, status in ((arch, arch_status), (live, live_status)):
    wait_for_status(status, lambda s: s.get('stored_total', 0) >= n, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=60) and proc.returncode == 0
  # The stop closed the window: its files on GCS merged into one shard.
  from apache_beam.io.filesystems import FileSystems
  objects = [m.path for m in FileSystems.match(
      [directory + '/**'])[0].metadata_list]
  assert objects and all('-00000-of-00001-' in o for o in objects), objects
  replay_db = tmp_path / 'replay.duckdb'
  for _ in range(2):
    result = run_main('user_signin', '--input_file', directory + '/**',
                      '--warehouse', replay_db)
    assert result.returncode == 0, result.stderr
  sql = ('SELECT message_id, userid, date, publish_time FROM signins '
         'ORDER BY message_id')
  dead = 'SELECT message_id, reason FROM signin_errors ORDER BY message_id'
  assert duckdb_dicts(replay_db, sql) == duckdb_dicts(live_db, sql)
  assert duckdb_dicts(replay_db, dead) == duckdb_dicts(live_db, dead)
  stored = duckdb_dicts(replay_db, 'SELECT message_id FROM signins UNION ALL '
                        'SELECT message_id FROM signin_errors')
  assert sorted(r['message_id'] for r in stored) == sorted(ids)


def test_kill_9_mid_stream_then_restart_loses_nothing(pubsub_emulator, tmp_path):
  topic, sub = subscription(pubsub_emulator)
  directory = str(tmp_path / 'archive')
  proc, status = archive_run(tmp_path, sub, directory)
  wait_for_status(status, lambda s: 'messages_in' in s, proc)
  n, ids, _ = publish_signins.publish(pubsub_emulator.project, topic, 20000,
                                      max_message_bytes=2048)
  seen = wait_for_status(status, lambda s: s.get('stored_total', 0) >= 1, proc)
  proc.send_signal(signal.SIGKILL)  # mid-stream: files half written, leases out
  proc.communicate(timeout=30)
  assert seen['stored_total'] < n
  again, status2 = archive_run(tmp_path, sub, directory)
  wait_for_status(status2, lambda s: len(archived(directory)) >= n or False,
                  again, timeout=180)
  again.send_signal(signal.SIGTERM)
  again.communicate(timeout=60)
  assert sorted(archived(directory)) == sorted(ids)  # each at least once


def test_flags_that_cannot_work_are_one_line(tmp_path):
  for flags, says in (
      (['--input_file', 'x.jsonl'], '--input_file'),
      (['--input_subscription', 'projects/demo-proj/subscriptions/s',
        '--window_seconds', '0'], '--window_seconds'),
      (['--input_subscription', 'projects/demo-proj/subscriptions/s',
        '--output_directory', 'gs://b/x'], '--output_directory'),
      (['--input_subscription', 'projects/demo-proj/subscriptions/s', '--format',
        'csv'], '--format'),
      (['--input_subscription', 'projects/demo-proj/subscriptions/s',
        '--num_shards', '-1'], '--num_shards'),
      (['--input_subscription', 'projects/demo-proj/subscriptions/s',
        '--num_shards', 'two'], '--num_shards')):
    result = run_main('pubsub_to_gcs', *flags)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, (flags, result.stderr)
    assert says in lines[0]


def test_dataflow_dry_run_builds_the_archive_job():
  from pipelines import pubsub_to_gcs
  result = pubsub_to_gcs.run([
      '--runner', 'DataflowRunner', '--dry_run=True', '--project', 'demo-proj',
      '--region', 'europe-west1', '--temp_location', 'gs://demo-bucket/tmp',
      '--input_subscription', 'projects/demo-proj/subscriptions/signins',
      '--output_directory', 'gs://demo-bucket/archive', '--num_shards', '4'])
  names = {t.unique_name for t in
           result.job.proto_pipeline.components.transforms.values()}
  assert 'ArchiveMessages/WriteArchiveFiles' in names
  assert 'ReadMessages/ReadFromPubSub' in names
  assert 'CompactClosedWindows/MergeIntoShards' in names


# Compaction (--num_shards): a closed window's bundle files merged into N.

WINDOW_START = 1764321300 * 10**6  # 2025-11-28T09:15:00Z, a 5-minute boundary


def bundle_files(directory, fmt, messages_per_file, files, prefix=''):
  """Bundle files of one window as the archiver writes them; their ids."""
  import datetime
  from apache_beam.io.gcp.pubsub import PubsubMessage
  ids = []
  published = datetime.datetime.fromtimestamp(WINDOW_START / 1e6 + 7,
                                              tz=datetime.timezone.utc)
  for b in range(files):
    recs = []
    for i in range(messages_per_file):
      ids.append('m-%s%d-%d' % (prefix, b, i))
      recs.append(archive.record(PubsubMessage(
          b'\xff payload %d' % i, {'b': str(b)}, message_id=ids[-1],
          publish_time=published, ordering_key='k%d' % (i % 2))))
    archive._write(archive.file_path(directory, prefix, WINDOW_START, 300,  # pylint: disable=protected-access
                                     'bundle%d' % b, fmt),
                   archive.encode(recs, fmt))
  return ids


@pytest.mark.parametrize('fmt', archive.FORMATS)
def test_a_window_compacts_into_n_shards_every_record_kept(tmp_path, fmt):
  from transforms import archive_compaction
  directory = str(tmp_path / 'archive')
  ids = bundle_files(directory, fmt, 40, 5, prefix='p-')
  bundle_files(directory, fmt, 3, 1, prefix='other-')  # another prefix: kept
  before = archived(directory)
  written, removed = archive_compaction.compact(
      directory, 'p-', WINDOW_START, 300, 3, fmt)
  assert len(removed) == 5 and len(written) == 3
  after = archived(directory)
  assert sorted(after) == sorted(before)
  for message_id, (msg, path) in after.items():
    was, _ = before[message_id]
    assert (msg.data, msg.attributes, msg.publish_time, msg.ordering_key) == (
        was.data, was.attributes, was.publish_time, was.ordering_key)
    if message_id in ids:
      shard = archive_compaction.shard_of(message_id, 3)
      assert '-%05d-of-00003-' % shard in os.path.basename(path), path
  names = sorted(f for _, _, fs in os.walk(directory) for f in fs)
  assert len(names) == 4 and not [n for n in names if n.endswith('.tmp')]
  # Compacted already into 3: nothing to do.
  assert archive_compaction.compact(
      directory, 'p-', WINDOW_START, 300, 3, fmt) == ([], [])
  # Into 2 (a restart with another --num_shards): merges the shards.
  written2, removed2 = archive_compaction.compact(
      directory, 'p-', WINDOW_START, 300, 2, fmt)
  assert sorted(removed2) == sorted(written) and len(written2) == 2
  assert sorted(archived(directory)) == sorted(before)


def test_a_compaction_that_fails_keeps_every_file(tmp_path, monkeypatch):
  from transforms import archive_compaction
  directory = str(tmp_path / 'archive')
  bundle_files(directory, 'avro', 10, 3)
  before = sorted(f for _, _, fs in os.walk(directory) for f in fs)

  def full_disk(self):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(archive_compaction.ShardWriter, 'close', full_disk)
  fn = archive_compaction.CompactWindowFiles(directory, 'avro', 300, '', 2)

  class Window:
    start = __import__('apache_beam').utils.timestamp.Timestamp(
        micros=WINDOW_START)
  assert list(fn.process(('window', []), window=Window)) == []
  assert sorted(f for _, _, fs in os.walk(directory) for f in fs) == before


def test_num_shards_compacts_closed_windows_of_a_live_stream(
    pubsub_emulator, tmp_path):
  """Two-second windows, three bursts: after the stop every window's files
  are at most two shards, and every published id is in them."""
  import time
  topic, sub = subscription(pubsub_emulator)
  directory = str(tmp_path / 'archive')
  proc, status = archive_run(tmp_path, sub, directory, '--window_seconds', 2,
                             '--num_shards', 2)
  wait_for_status(status, lambda s: 'messages_in' in s, proc)
  ids = []
  for burst in range(3):
    ids += publish(pubsub_emulator, topic, [b'burst %d n %d' % (burst, i)
                                            for i in range(200)])
    time.sleep(2.5)
  wait_for_status(status, lambda s: s.get('stored_total', 0) >= len(ids), proc)
  time.sleep(3)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=60)
  assert proc.returncode == 0, err
  assert sorted(archived(directory)) == sorted(ids)
  names = [f for _, _, fs in os.walk(directory) for f in fs]
  per_window = {}
  for name in names:
    per_window.setdefault(name.split('Z-')[0], []).append(name)
  assert len(per_window) >= 2, names
  assert all(len(files) <= 2 for files in per_window.values()), per_window
  assert all('-of-00002-' in n for n in names), names


def test_two_compactions_at_once_lose_nothing(tmp_path):
  """Two writers compacting one window at the same moment (threads, many
  rounds): a record may be in two files afterwards, never in none."""
  import threading
  from transforms import archive_compaction
  for round_ in range(5):
    directory = str(tmp_path / ('archive-%d' % round_))
    ids = bundle_files(directory, 'avro', 30, 6)
    errors = []

    def compact(n):
      try:
        archive_compaction.compact(directory, '', WINDOW_START, 300, n, 'avro')
      except Exception as e:  # pylint: disable=broad-except
        errors.append(e)  # a source the other one deleted first: no loss
    threads = [threading.Thread(target=compact, args=(n,)) for n in (1, 2)]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    assert set(archived(directory)) == set(ids), (round_, errors)
