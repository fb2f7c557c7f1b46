"""Event-time counts with TestStream: on-time, late, and too-late sign-ins."""

import collections
import datetime

import apache_beam as beam
import duckdb
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms.window import TimestampedValue

from local_runner.stream import ReadSubscriptionWith
from pipelines import options as pipeline_options
from pipelines import user_signin
from transforms import signin_counts
from storage.duckdb_files import DuckDBFiles

UTC = datetime.timezone.utc


def at(seconds):
  return datetime.datetime.fromtimestamp(seconds, UTC)


def streaming_pipeline():
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True
  return TestPipeline(runner='BundleBasedDirectRunner', options=options)


def signin(userid, seconds):
  return TimestampedValue({'userid': userid, 'date': at(seconds)}, seconds)


@pytest.mark.parametrize('shards, skip_unchanged', [
    (0, False), (1, False), (1, True), (16, True)])
def test_on_time_late_and_too_late(shards, skip_unchanged):
  stream = (
      TestStream()
      .advance_watermark_to(0)
      .add_elements([signin('a', 10), signin('a', 20), signin('b', 30)])
      .advance_watermark_to(70)  # window [0, 60) fires on time
      .add_elements([signin('a', 50)])  # late, within the lateness: a LATE pane
      .advance_watermark_to(500)  # past 60 + 300 s: the window is closed
      .add_elements([signin('a', 40)])  # too late: does not change the count
      .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    counts = (
        p | stream
        | signin_counts.CountSigninsPerWindow(
            60, allowed_lateness_seconds=300, shards=shards,
            skip_unchanged=skip_unchanged)
        | beam.Map(lambda r: (r['window_start'], r['window_end'], r['userid'],
                              r['signins'], r['pane_timing'], r['pane_index'])))
    expected = [
        (at(0), at(60), 'a', 2, 'ON_TIME', 0),
        (at(0), at(60), 'b', 1, 'ON_TIME', 0),
        (at(0), at(60), 'a', 3, 'LATE', 1),
    ]
    if shards and not skip_unchanged and (
        signin_counts.user_shard('a', shards) ==
        signin_counts.user_shard('b', shards)):
      # a's late sign-in fires the shard's pane: b's total, unchanged, again
      # (locally, skip_unchanged leaves it out).
      expected.append((at(0), at(60), 'b', 1, 'LATE', 1))
    assert_that(counts, equal_to(expected))


@pytest.mark.parametrize('shards', [1, 3, 16])
def test_sharded_counts_equal_per_user_counts(shards):
  """Many users over several windows: the latest pane of every (user,
  window) is the same total with shards as with a key per user."""
  import random
  rng = random.Random(shards)
  signins = [signin('u%d' % rng.randrange(40), rng.randrange(0, 300))
             for _ in range(500)]
  expected = collections.Counter(
      (r.value['userid'], int(r.timestamp) // 60 * 60) for r in signins)

  def latest_equal_expected(rows):
    best = {}
    for r in rows:
      key = (r['userid'], int(r['window_start'].timestamp()))
      if key not in best or r['pane_index'] > best[key]['pane_index']:
        best[key] = r
    got = {k: v['signins'] for k, v in best.items()}
    if got != dict(expected):
      raise BeamAssertException('latest panes %s != %s' % (got, expected))
  with streaming_pipeline() as p:
    stream = (TestStream().advance_watermark_to(0).add_elements(signins[:250])
              .add_elements(signins[250:]).advance_watermark_to_infinity())
    counts = p | stream | signin_counts.CountSigninsPerWindow(
        60, allowed_lateness_seconds=0, shards=shards, skip_unchanged=True)
    assert_that(counts, latest_equal_expected)


def message(userid, seconds, message_id):
  data = ('{"userid": "%s", "date": "%s"}' % (userid, at(seconds).isoformat())
          ).encode()
  return TimestampedValue(
      PubsubMessage(data, {}, message_id=message_id, publish_time=at(seconds)),
      seconds)


def test_whole_graph_counts_equal_the_stored_rows_even_too_late_ones(tmp_path):
  """Locally the counts are kept with the rows: m5, past the allowed
  lateness, is stored and counted; the panes record Beam's firings."""
  db = str(tmp_path / 'wh.duckdb')
  subscription = 'projects/test-project/subscriptions/signins'
  options = pipeline_options.parse_options(
      ['--input_subscription', subscription, '--warehouse', db,
       '--max_message_bytes', '4096', '--window_seconds', '60'],
      user_signin.OPTIONS, 'test', '')
  stream = (
      TestStream()
      .advance_watermark_to(0)
      .add_elements([message('a', 10, 'm1'), message('a', 20, 'm2')])
      .add_elements([TimestampedValue(
          PubsubMessage(b'{oops', {'origin': 'test'}, message_id='m3'), 25)])
      .advance_watermark_to(70)
      .add_elements([message('a', 50, 'm4')])
      .advance_watermark_to(500)
      .add_elements([message('a', 40, 'm5'), message('a', 40, 'm5')])  # + redelivery
      .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    # The graph as run() builds it, its Pub/Sub read replaced as a local
    # run replaces it.
    user_signin.build(p, options)
    p.replace_all([ReadSubscriptionWith(subscription, stream)])
  DuckDBFiles.close_all()
  con = duckdb.connect(db, read_only=True)
  assert sorted(r[0] for r in con.execute(
      'SELECT message_id FROM signins').fetchall()) == ['m1', 'm2', 'm4', 'm5']
  assert con.execute(
      'SELECT message_id, reason, attributes FROM signin_errors').fetchall() == [
          ('m3', 'not_json', [{'key': 'origin', 'value': 'test'}])]
  assert con.execute(
      'SELECT userid, signins, pane_timing FROM signin_counts').fetchall() == [
          ('a', 4, 'LATE')]
