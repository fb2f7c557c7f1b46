"""What the local reader owes Pub/Sub: deliveries pulled and not yet
acknowledged (``Leases``, one per run, keyed by each delivery's ack id), and
how often each message was delivered to a subscription
(``DeliveryAttempts``, in the warehouse file so that it survives crashes)."""

import collections
import threading
import time

from storage.duckdb_files import DuckDBFiles


class Leases(object):
  """Deliveries pulled but not yet acknowledged, process-wide.

  ``add`` when pulled, ``settled`` once the runner is done with what they
  became (``local_runner.delivery``), ``take_acks`` for the lease thread
  (``requeue_acks`` what Pub/Sub did not take). Counts and bytes bound the
  read-ahead. Thread-safe.
  """
  def __init__(self):
    self._lock = threading.Condition()
    # ack id -> (subscription, message id, bytes, publish time in epoch s)
    self._in_flight = {}
    self._to_ack = collections.defaultdict(list)  # subscription -> ack ids
    self._to_ack_count = 0
    self._settled_ids = collections.defaultdict(list)  # subscription -> ids
    self._bytes = 0
    self.settled_total = 0  # deliveries settled (and so acknowledgeable)

  def add(self, subscription, ack_id, message_id, size=0, published=None):
    with self._lock:
      if ack_id not in self._in_flight:
        self._bytes += size
        self._in_flight[ack_id] = (
            subscription, message_id, size, published or time.time())

  def settled(self, ack_ids):
    with self._lock:
      for ack_id in ack_ids:
        lease = self._in_flight.pop(ack_id, None)
        if lease is not None:
          self._bytes -= lease[2]
          self._to_ack[lease[0]].append(ack_id)
          self._to_ack_count += 1
          self._settled_ids[lease[0]].append(lease[1])
          self.settled_total += 1
      self._lock.notify_all()

  def release(self, ack_ids):
    """Forgets deliveries that will not be served (neither settled nor
    acknowledged: Pub/Sub redelivers them at their deadline)."""
    with self._lock:
      for ack_id in ack_ids:
        lease = self._in_flight.pop(ack_id, None)
        if lease is not None:
          self._bytes -= lease[2]
      self._lock.notify_all()

  def take_acks(self):
    with self._lock:
      acks, self._to_ack = dict(self._to_ack), collections.defaultdict(list)
      self._to_ack_count = 0
      return acks

  def requeue_acks(self, subscription, ack_ids):
    """Acknowledgements Pub/Sub did not take, to be tried again."""
    with self._lock:
      self._to_ack[subscription].extend(ack_ids)
      self._to_ack_count += len(ack_ids)

  def take_settled_ids(self):
    """{subscription: message ids settled since the last call}."""
    with self._lock:
      ids, self._settled_ids = (dict(self._settled_ids),
                                collections.defaultdict(list))
      return ids

  def in_flight(self, subscription=None):
    """Ack ids pulled and not settled (of ``subscription``, or all)."""
    with self._lock:
      return [ack_id for ack_id, lease in self._in_flight.items()
              if subscription in (None, lease[0])]

  def count(self):
    """Pulled and not yet acknowledged (settled or not)."""
    with self._lock:
      return len(self._in_flight) + self._to_ack_count

  def unstored(self):
    with self._lock:
      return len(self._in_flight)

  def unstored_bytes(self):
    with self._lock:
      return self._bytes

  def lag_seconds(self):
    """Age (since publishing) of the oldest message pulled but not settled."""
    with self._lock:
      if not self._in_flight:
        return 0.0
      return max(0.0, time.time() - min(
          lease[3] for lease in self._in_flight.values()))

  def wait_until_empty(self, timeout):
    deadline = time.monotonic() + timeout
    with self._lock:
      while self._in_flight:
        left = deadline - time.monotonic()
        if left <= 0:
          return False
        self._lock.wait(min(left, 0.2))
    return True


class DeliveryAttempts(object):
  """How often each unacknowledged message was pulled from a subscription,
  kept in the warehouse file so that it survives crashes: a message that
  kills the pipeline every time is delivered at most max_delivery_attempts
  times, then dead-lettered. Keyed by (subscription, message id): two
  pipelines on one warehouse, each on its own subscription of one topic,
  never count each other's deliveries. Rows are forgotten once their
  message is acknowledged."""
  TABLE = 'pubsub_delivery_attempts'
  OLD_TABLE = 'pubsub_deliveries'  # keyed by message id alone (before)

  def __init__(self, path, subscription):
    self._path = path
    self._subscription = subscription
    self._created = False

  @property
  def path(self):
    return self._path

  def _execute(self, sql, message_ids):
    import pyarrow as pa
    with DuckDBFiles.use(self._path) as cursor:
      if not self._created:
        cursor.execute('DROP TABLE IF EXISTS %s' % self.OLD_TABLE)
        cursor.execute(
            'CREATE TABLE IF NOT EXISTS %s (subscription VARCHAR NOT NULL, '
            'message_id VARCHAR NOT NULL, attempts INTEGER NOT NULL, '
            'PRIMARY KEY (subscription, message_id))' % self.TABLE)
        self._created = True
      cursor.register('message_ids', pa.table({
          'subscription': [self._subscription] * len(message_ids),
          'message_id': list(message_ids)}))
      try:
        return cursor.execute(sql.format(t=self.TABLE)).fetchall()
      finally:
        cursor.unregister('message_ids')

  def record(self, message_ids):
    """Counts one more delivery of each; returns {message id: deliveries}."""
    if not message_ids:
      return {}
    return dict(self._execute(
        'INSERT INTO {t} SELECT DISTINCT subscription, message_id, 1 FROM '
        'message_ids ON CONFLICT (subscription, message_id) DO UPDATE SET '
        'attempts = {t}.attempts + 1 RETURNING message_id, attempts',
        message_ids))

  def forget(self, message_ids):
    if not message_ids:
      return
    self._execute(
        'DELETE FROM {t} WHERE subscription = (SELECT any_value(subscription) '
        'FROM message_ids) AND message_id IN (SELECT message_id FROM '
        'message_ids)', message_ids)
