"""Running a pipeline on the local runner: a stream until it is told to
stop, with progress every few seconds and a stop bounded in time whatever
Pub/Sub does; a batch to its end, with its summary.

- SIGTERM or Ctrl-C: stop pulling, let what is in flight be stored for at
  most ``drain_seconds``, acknowledge what was stored if Pub/Sub answers
  within a couple of seconds, hand the rest back, print the summary, exit 0.
  What is not acknowledged is redelivered to the next run and absorbed by
  the tables' message-id key, so a fast stop is always safe.
- A second signal exits at once (exit 128 + signal), as safe as the first.
- A watchdog ends the process if a stop takes more than ``drain_seconds`` +
  5 s in all (say a runner that does not cancel).

One ``LocalRun`` per run is the local runner's one entry: it runs the
pipeline (a stream until stopped, a batch to the end) with progress and a
summary, and closes it all. Asked to read a subscription itself
(``read_subscription``), it puts its ack-after-commit reader (pump and
channel) in place of the graph's ``ReadFromPubSub`` of that subscription (a
``PTransformOverride``, as Beam's DirectRunner replaces that read), and
settles each message by what the runner did with it (``delivery``): the
graph knows nothing of it. A stream's messages read are what its reader
served; a replay's (and its drops and files) what the graph counted in
Beam's metrics, read at its end. It knows nothing of sign-ins.
"""

import gc
import logging
import os
import signal
import sys
import threading
import time

from apache_beam.pipeline import PTransformOverride

from local_runner import beam_patches
from local_runner import channel
from local_runner import progress
from local_runner import pump as pump_lib
from local_runner.leases import DeliveryAttempts
from local_runner.leases import Leases
from storage.duckdb_files import DuckDBFiles

_LOG = logging.getLogger(__name__)

# Beam's local Pub/Sub read long-polls for up to 30 s, and cancel() waits for
# it; every bundle is committed to the sink as it finishes, so stop waiting.
CANCEL_WAIT_SECONDS = 3
STOP_MARGIN_SECONDS = 5  # a stop's bound: drain_seconds + this
PubSubUnavailable = pump_lib.PubSubUnavailable


class StreamFailed(Exception):
  """The stream stopped on an error (said on one line)."""


class LocalRun(object):
  """One local run of pipeline ``name``. ``warehouse`` and ``tables`` name
  its local tables for progress ({'rows', 'dead_letters'[, 'counts']}; no
  warehouse when they are in BigQuery, then ``output_table`` names it)."""
  def __init__(self, name, warehouse=None, tables=None, output_table=None,
               status_file=None, progress_seconds=5, drain_seconds=10,
               input_total=None):
    self._input_total = input_total  # a replay's (files, bytes)
    self._name = name
    self._warehouse = warehouse
    self._tables = tables or {}
    self._output_table = output_table
    self._status_file = status_file
    self._progress_seconds = progress_seconds
    self._drain_seconds = drain_seconds
    self.leases = Leases()
    self._pump = self._service = self._override = None
    self._progress = None

  def __enter__(self):
    return self

  def __exit__(self, *unused):
    if self._service is not None:
      self._pump.close(timeout=0.5)  # a no-op after a stop; bounded after a failure
      self._service.stop()
    if self._warehouse:
      DuckDBFiles.close(self._warehouse)

  # -- the ack-after-commit reader -------------------------------------------
  def read_subscription(self, subscription, attempts_db=None, max_attempts=5,
                        timestamp_attribute=None,
                        max_in_flight=pump_lib.MAX_IN_FLIGHT,
                        max_in_flight_bytes=pump_lib.MAX_IN_FLIGHT_BYTES,
                        max_messages=2000):
    """Starts the reader of ``subscription`` and its private channel; the
    graph's ``ReadFromPubSub`` of it reads from them when the stream runs.
    ``attempts_db`` (the DuckDB warehouse) keeps delivery counts across
    crashes. Raises PubSubUnavailable if Pub/Sub does not show the
    subscription within START_SECONDS, OSError (one line) if the channel
    cannot listen, RuntimeError if this Beam cannot settle deliveries."""
    if not beam_patches.settle_after_processing():
      raise RuntimeError(
          'the local reader settles messages through a change to Beam\'s '
          'internals, off on this Beam (%s)' % beam_patches.apache_beam.__version__)
    pump = pump_lib.PubSubPump(
        subscription, self.leases, max_messages=max_messages,
        attempts=DeliveryAttempts(attempts_db, subscription) if attempts_db
        else None,
        max_attempts=max_attempts, timestamp_attribute=timestamp_attribute,
        max_in_flight=max_in_flight, max_in_flight_bytes=max_in_flight_bytes)
    pump.start()
    try:
      pump_lib.check_subscription(pump.client, subscription)
    except PubSubUnavailable:
      pump.close(timeout=0.5)
      raise
    try:
      self._service = channel.PrivateEventService(pump)
    except OSError:
      pump.close(timeout=0.5)
      raise
    self._pump = pump
    self._service.start()
    self._override = ReadSubscriptionWith(
        subscription, channel.ReadFromPubSubAckOnCommit(self._service.endpoint))

  # -- running ---------------------------------------------------------------
  def summary(self, status):
    return progress.summary(self._name, status, self._warehouse, self._tables,
                            self._output_table)

  def _start_progress(self):
    self._progress = progress.Progress(
        self.leases, self._warehouse if self._tables else None, self._tables,
        self._status_file, self._pump, self._input_total, name=self._name)

  def run_batch(self, pipeline):
    """Runs a bounded pipeline to its end, with progress lines while it
    runs (a replay of days of archive is long); prints its summary."""
    self._start_progress()
    done = threading.Event()

    def report_while_running():
      while not done.wait(self._progress_seconds):
        self._progress.report(False)
    reporter = threading.Thread(target=report_while_running, daemon=True,
                                name='replay-progress')
    reporter.start()
    # A replay allocates millions of short-lived objects, and each of
    # CPython's full collections walks every object alive: the million made
    # at start-up (Beam's modules, the pipeline) cost a replay 15% of its
    # time. Frozen (gc.freeze), they are not walked; unfrozen at the end.
    gc.freeze()
    try:
      result = pipeline.run()
      result.wait_until_finish()
    finally:
      gc.unfreeze()
      done.set()
      reporter.join()
    self._progress.counted = progress.graph_counts(result)
    print(self.summary(self._progress.report(final=True)))
    return result

  def vanished_files(self):
    """How many input files a finished replay listed and then found gone
    (each named in the log as it was found)."""
    counted = self._progress.counted if self._progress else None
    return (counted or {}).get('files_vanished', 0)

  def run_stream(self, pipeline):
    """Runs ``pipeline`` until SIGINT/SIGTERM (or failure); returns the
    result. With the reader, a stop first stops pulling and drains what is
    in flight."""
    beam_patches.speed_up_local_streams()
    self._start_progress()
    stop = threading.Event()
    failure = []
    signals = []

    def on_signal(signum, _):
      signals.append(signum)
      if len(signals) > 1:
        _exit_now('second signal (%d): exiting now; messages not acknowledged '
                  'are redelivered to the next run' % signum, 128 + signum)
      stop.set()
    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
      if self._override is not None:
        pipeline.replace_all([self._override])
        if not self._override.replaced:
          raise StreamFailed('the pipeline does not read %s with Beam\'s '
                             'ReadFromPubSub' % self._override.subscription)
      result = pipeline.run()

      def wait():
        try:
          result.wait_until_finish()
          if not stop.is_set():  # a stream does not end by itself
            failure.append(RuntimeError('the stream ended unexpectedly'))
        except Exception as e:  # pylint: disable=broad-except
          failure.append(e)
        stop.set()
      threading.Thread(target=wait, daemon=True, name='wait-pipeline').start()

      def report_until_stopped():
        while not stop.wait(self._progress_seconds):
          self._progress.report(False)
      # Progress reads the warehouse, which another process may hold: on a
      # thread of its own, so that the main thread only waits for a stop and
      # a signal always begins one (bounded by the watchdog below).
      threading.Thread(target=report_until_stopped, daemon=True,
                       name='stream-progress').start()
      while not stop.wait(0.5):
        pass
      bound = self._drain_seconds + STOP_MARGIN_SECONDS
      watchdog = threading.Timer(bound, _exit_now, (
          'stopping took more than %d s: exiting; messages not acknowledged are '
          'redelivered to the next run' % bound, 1))
      watchdog.daemon = True
      watchdog.start()
      started = time.monotonic()
      if self._pump is not None and not failure:
        self._pump.stop_pulling()
        _LOG.info('stopping: pulling stopped; storing the %d messages in flight '
                  '(at most %d s)', self._pump.leases.unstored(), self._drain_seconds)
        if not self._pump.leases.wait_until_empty(self._drain_seconds):
          _LOG.warning('%d messages not stored within %d s; Pub/Sub will '
                       'redeliver them', self._pump.leases.unstored(), self._drain_seconds)
        left = self._pump.close()
        if left:
          _LOG.warning('%d messages left unacknowledged: Pub/Sub redelivers them '
                       'to the next run, which stores each once', left)
      if not failure:
        _LOG.info('stopping: no new bundles start; what is committed stays')
        cancel_within(result, min(CANCEL_WAIT_SECONDS, max(
            0.5, bound - (time.monotonic() - started) - 1)))
      print(self.summary(self._progress.report(True)), flush=True)
      watchdog.cancel()
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    if failure:
      raise StreamFailed('the pipeline failed: %s' % str(
          failure[0]).splitlines()[0])
    return result


def cancel_within(result, seconds):
  """Asks the runner to stop; returns after ``seconds`` even if it has not."""
  def cancel():
    try:
      result.cancel()
    except Exception as e:  # pylint: disable=broad-except
      _LOG.debug('cancel: %s', e)
  worker = threading.Thread(target=cancel, daemon=True, name='cancel-pipeline')
  worker.start()
  worker.join(seconds)
  if worker.is_alive():
    _LOG.info('runner still waiting on a Pub/Sub pull; leaving it behind')


def _exit_now(message, code):
  """Leaves at once, from a signal handler or a watchdog thread."""
  try:
    sys.stderr.write(message + '\n')
    sys.stderr.flush()
  finally:
    os._exit(code)  # pylint: disable=protected-access


class ReadSubscriptionWith(PTransformOverride):
  """Beam's ``ReadFromPubSub`` of ``subscription`` -> ``read`` (the local
  reader's channel)."""
  def __init__(self, subscription, read):
    self.subscription = subscription
    self._read = read
    self.replaced = False

  def matches(self, applied_ptransform):
    from apache_beam.io.gcp.pubsub import ReadFromPubSub
    transform = applied_ptransform.transform
    return (isinstance(transform, ReadFromPubSub) and
            transform._source.full_subscription == self.subscription)  # pylint: disable=protected-access

  def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
    self.replaced = True
    return self._read
