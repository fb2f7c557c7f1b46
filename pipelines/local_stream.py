"""Running a streaming pipeline on the local runner until it is told to stop:
progress every few seconds, and a stop bounded in time whatever Pub/Sub does.

- SIGTERM or Ctrl-C: stop pulling, let what is in flight be stored for at
  most ``drain_seconds``, acknowledge what was stored if Pub/Sub answers
  within a couple of seconds, hand the rest back, print the summary, exit 0.
  What is not acknowledged is redelivered to the next run and absorbed by
  the tables' message-id key, so a fast stop is always safe.
- A second signal exits at once (exit 128 + signal), as safe as the first.
- A watchdog ends the process if a stop takes more than ``drain_seconds`` +
  5 s in all (say a runner that does not cancel).

Any streaming pipeline of ours reuses this; it knows nothing of sign-ins.
"""

import logging
import os
import signal
import sys
import threading
import time

from pipelines.errors import PipelineFailed

_LOG = logging.getLogger(__name__)

# Beam's local Pub/Sub read long-polls for up to 30 s, and cancel() waits for
# it; every bundle is committed to the sink as it finishes, so stop waiting.
CANCEL_WAIT_SECONDS = 3
STOP_MARGIN_SECONDS = 5  # a stop's bound: drain_seconds + this


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


def run_until_stopped(pipeline, report, summary, pump=None, progress_seconds=5,
                      drain_seconds=10):
  """Runs ``pipeline`` until SIGINT/SIGTERM (or failure); returns the result.

  ``report(final)`` returns the progress as a dict (and logs or writes it);
  ``summary(status)`` is printed at the end. With the ack-after-commit
  ``pump``, a stop first stops pulling and drains what is in flight.
  """
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
    while not stop.wait(progress_seconds):
      report(False)
    bound = drain_seconds + STOP_MARGIN_SECONDS
    watchdog = threading.Timer(bound, _exit_now, (
        'stopping took more than %d s: exiting; messages not acknowledged are '
        'redelivered to the next run' % bound, 1))
    watchdog.daemon = True
    watchdog.start()
    started = time.monotonic()
    if pump is not None and not failure:
      pump.stop_pulling()
      _LOG.info('stopping: pulling stopped; storing the %d messages in flight '
                '(at most %d s)', pump.leases.unstored(), drain_seconds)
      if not pump.leases.wait_until_empty(drain_seconds):
        _LOG.warning('%d messages not stored within %d s; Pub/Sub will '
                     'redeliver them', pump.leases.unstored(), drain_seconds)
      left = pump.close()
      if left:
        _LOG.warning('%d messages left unacknowledged: Pub/Sub redelivers them '
                     'to the next run, which stores each once', left)
    if not failure:
      _LOG.info('stopping: no new bundles start; what is committed stays')
      cancel_within(result, min(CANCEL_WAIT_SECONDS, max(
          0.5, bound - (time.monotonic() - started) - 1)))
    print(summary(report(True)), flush=True)
    watchdog.cancel()
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if failure:
    raise PipelineFailed('the pipeline failed: %s' % str(
        failure[0]).splitlines()[0])
  return result


def progress_line(status):
  """The status dict as one short line a person reads at a glance."""
  parts = ['{:,} read'.format(status.get('messages_in', 0))]
  if 'rows' in status:
    dead = status.get('dead_letters', {})
    parts.append('{:,} rows'.format(status['rows']))
    worst = sorted(dead.items(), key=lambda kv: (-kv[1], kv[0]))
    detail = ', '.join('%s %s' % (k, '{:,}'.format(n)) for k, n in worst[:3])
    if len(worst) > 3:
      detail += ', ...'
    parts.append('{:,} dead'.format(sum(dead.values())) +
                 (' (%s)' % detail if detail else ''))
  elif 'stored_total' in status:
    parts.append('{:,} stored'.format(status['stored_total']))
  parts.append('{:,.0f} msg/s'.format(status.get('rate_per_s', 0)))
  if 'in_flight' in status:
    parts.append('{:,} in flight'.format(status['in_flight']))
    parts.append('lag %.2f s' % status.get('lag_s', 0))
  if status.get('pubsub_unreachable_s'):
    parts.append('Pub/Sub not answering for %.0f s' %
                 status['pubsub_unreachable_s'])
  for what, outage in sorted(status.get('outages', {}).items()):
    parts.append('waiting for %s for %.0f s (%s)' % (
        what, outage['for_s'], outage['error'][:80]))
  return '  '.join(parts)
