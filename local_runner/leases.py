"""What the local reader owes Pub/Sub: messages pulled and not yet
acknowledged (``Leases``, one per run), and how often each was delivered
(``DeliveryAttempts``, in the warehouse file so that it survives crashes)."""

import collections
import threading
import time

from storage.duckdb_files import DuckDBFiles


class Leases(object):
  """Messages pulled but not yet acknowledged, process-wide.

  ``add`` when pulled, ``committed`` when a sink has stored the row or dead
  letter, ``take_acks`` for the lease thread (``requeue_acks`` what Pub/Sub
  did not take). Counts and bytes bound the read-ahead. Thread-safe.
  """
  def __init__(self):
    self._lock = threading.Condition()
    # message id -> (subscription, ack id, bytes, publish time in epoch s)
    self._in_flight = {}
    self._to_ack = collections.defaultdict(list)  # subscription -> ack ids
    self._to_ack_count = 0
    self._committed_ids = []
    self._bytes = 0
    self.committed_total = 0  # messages stored (and so acknowledgeable)

  def add(self, subscription, message_id, ack_id, size=0, published=None):
    with self._lock:
      if message_id not in self._in_flight:
        self._bytes += size
      else:
        self._bytes += size - self._in_flight[message_id][2]
      self._in_flight[message_id] = (
          subscription, ack_id, size, published or time.time())

  def committed(self, message_ids):
    with self._lock:
      for message_id in message_ids:
        lease = self._in_flight.pop(message_id, None)
        if lease is not None:
          self._bytes -= lease[2]
          self._to_ack[lease[0]].append(lease[1])
          self._to_ack_count += 1
          self._committed_ids.append(message_id)
          self.committed_total += 1
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

  def take_committed_ids(self):
    with self._lock:
      ids, self._committed_ids = self._committed_ids, []
      return ids

  def in_flight(self, subscription=None):
    with self._lock:
      return [(mid, lease[1]) for mid, lease in self._in_flight.items()
              if subscription in (None, lease[0])]

  def count(self):
    """Pulled and not yet acknowledged (stored or not)."""
    with self._lock:
      return len(self._in_flight) + self._to_ack_count

  def unstored(self):
    with self._lock:
      return len(self._in_flight)

  def unstored_bytes(self):
    with self._lock:
      return self._bytes

  def lag_seconds(self):
    """Age (since publishing) of the oldest message pulled but not stored."""
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
  """How often each unacknowledged message was pulled, kept in the warehouse
  file so that it survives crashes: a message that kills the pipeline every
  time is delivered at most max_delivery_attempts times, then dead-lettered.
  Rows are forgotten once their message is acknowledged."""
  TABLE = 'pubsub_deliveries'

  def __init__(self, path):
    self._path = path
    self._created = False

  @property
  def path(self):
    return self._path

  def _execute(self, sql, table):
    with DuckDBFiles.use(self._path) as cursor:
      if not self._created:
        cursor.execute(
            'CREATE TABLE IF NOT EXISTS %s (message_id VARCHAR PRIMARY KEY, '
            'attempts INTEGER NOT NULL)' % self.TABLE)
        self._created = True
      cursor.register('message_ids', table)
      try:
        return cursor.execute(sql.format(t=self.TABLE)).fetchall()
      finally:
        cursor.unregister('message_ids')

  def record(self, message_ids):
    """Counts one more delivery of each; returns {message id: deliveries}."""
    if not message_ids:
      return {}
    import pyarrow as pa
    return dict(self._execute(
        'INSERT INTO {t} SELECT DISTINCT message_id, 1 FROM message_ids '
        'ON CONFLICT (message_id) DO UPDATE SET attempts = {t}.attempts + 1 '
        'RETURNING message_id, attempts',
        pa.table({'message_id': list(message_ids)})))

  def forget(self, message_ids):
    if not message_ids:
      return
    import pyarrow as pa
    self._execute(
        'DELETE FROM {t} WHERE message_id IN (SELECT message_id FROM '
        'message_ids)', pa.table({'message_id': list(message_ids)}))
