"""The runner settles each served batch exactly when what its messages became
is stored (issue 27): a property test over message outcomes (rows, fan-outs,
drops, dead letters) on Beam's own local runner and pubsub_to_bigquery's own
graph, its Pub/Sub read replaced by the local reader's channel as a local
run replaces it, served by a reader that checks the warehouse at each
settlement."""

import datetime
import json
import os
import shutil
import tempfile
import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from local_runner import beam_patches
from local_runner import channel
from local_runner import delivery
from local_runner.stream import ReadSubscriptionWith
from pipelines import options as pipeline_options
from pipelines import pubsub_to_bigquery
from storage.duckdb_files import DuckDBFiles
from tests.test_delivery import OUTCOMES
from tests.test_delivery import SCHEMA
from tests.test_delivery import UDF

SUBSCRIPTION = 'projects/test-project/subscriptions/orders'
PUBLISHED = datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc)


class CheckingReader(object):
  """Serves ``batches`` (lists of kinds) as the pump does, one element event
  and one ``delivery.Batch`` each, then ends the stream; at each settlement
  counts what the warehouse holds of the batch's messages."""
  def __init__(self, batches, warehouse):
    self.batches = batches
    self.warehouse = warehouse
    self.settled = []  # (batch index, rows, dead letters) at settlement
    self._lock = threading.Lock()

  def read_multiple(self, unused_keys):
    for index, kinds in enumerate(self.batches):
      batch = delivery.Batch(lambda index=index: self._settle(index))
      messages = [channel.DeliveredMessage(
          json.dumps({'order_id': 'o', 'qty': i, 'kind': kind}).encode(),
          {'n': str(i)}, message_id=message_id(index, i),
          publish_time=PUBLISHED, batch=batch)
                  for i, kind in enumerate(kinds)]
      micros = int(PUBLISHED.timestamp()) * 10**6
      yield channel.element_event(
          (token, micros) for token in channel.HandOffCoder.hand_off(messages))

  def _settle(self, index):
    ids = [message_id(index, i) for i in range(len(self.batches[index]))]
    with DuckDBFiles.use(self.warehouse) as con:
      tables = {r[0] for r in con.execute('SHOW TABLES').fetchall()}
      rows = dead = 0
      if 'orders' in tables:
        rows = con.execute(
            "SELECT count(*) FROM orders WHERE split_part(message_id, '#', 1) "
            "IN (SELECT unnest(?))", [ids]).fetchall()[0][0]
      if 'orders_error_records' in tables:
        dead = con.execute(
            'SELECT count(*) FROM orders_error_records WHERE message_id IN '
            '(SELECT unnest(?))', [ids]).fetchall()[0][0]
    with self._lock:
      self.settled.append((index, rows, dead))


def message_id(batch, i):
  return 'b%d-m%d' % (batch, i)


def run_graph(folder, batches):
  """pubsub_to_bigquery's graph on the BundleBasedDirectRunner, reading
  ``batches`` through the local reader's channel; the CheckingReader."""
  schema, udf = os.path.join(folder, 'orders.json'), os.path.join(
      folder, 'shape.py')
  with open(schema, 'w') as f:
    json.dump(SCHEMA, f)
  with open(udf, 'w') as f:
    f.write(UDF)
  warehouse = os.path.join(folder, 'wh.duckdb')
  options = pipeline_options.parse_options(
      ['--schema', schema, '--udf', '%s:shape' % udf, '--warehouse', warehouse,
       '--input_subscription', SUBSCRIPTION,
       '--runner', 'BundleBasedDirectRunner'],
      pubsub_to_bigquery.OPTIONS, 'test', '')
  options.view_as(StandardOptions).streaming = True
  assert beam_patches.settle_after_processing()
  reader = CheckingReader(batches, warehouse)
  service = channel.PrivateEventService(reader)
  service.start()
  try:
    pipeline = beam.Pipeline(options=options)
    pubsub_to_bigquery.build(pipeline, options)
    override = ReadSubscriptionWith(
        SUBSCRIPTION, channel.ReadFromPubSubAckOnCommit(service.endpoint))
    pipeline.replace_all([override])
    assert override.replaced
    pipeline.run().wait_until_finish()
  finally:
    service.stop()
    DuckDBFiles.close(warehouse)
  return reader


KINDS = st.sampled_from(sorted(OUTCOMES))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(KINDS, min_size=1, max_size=40), min_size=1,
                max_size=6))
def test_each_batch_is_settled_once_exactly_when_its_outcomes_are_stored(
    batches):
  folder = tempfile.mkdtemp()
  try:
    reader = run_graph(folder, batches)
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  assert sorted(i for i, _, _ in reader.settled) == list(range(len(batches)))
  for index, rows, dead in reader.settled:
    kinds = batches[index]
    assert (rows, dead) == (sum(OUTCOMES[k][0] for k in kinds),
                            sum(OUTCOMES[k][1] for k in kinds)), kinds
  assert delivery.tracked_bundles() == 0  # nothing followed once idle
