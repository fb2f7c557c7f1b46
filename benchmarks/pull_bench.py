"""How fast the Pub/Sub emulator serves a backlog to a bare pull loop, with
messages acknowledged at once or held unacknowledged for a while first (as
any ack-after-commit reader holds them until they are stored).

    ./run.sh bench pull [--backlog 300000] [--hold 0 0.3]
        [--seconds 15]

For each --hold value, on a fresh subscription of one emulator: publishes
the backlog, then pulls (up to 1,000 per call; the emulator answers at most
100) and acknowledges each message --hold seconds after it was pulled,
extending deadlines every 3 s, at most 5,000 held (the local reader's
default read-ahead). Prints msgs/s and the pull latency. No Beam involved.
"""

import argparse
import collections
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tools import emulators  # noqa: E402
from tools import publish_signins  # noqa: E402
from local_runner import pump  # noqa: E402

PROJECT = 'bench-project'
MAX_HELD = 5000


def drain(client, subscription, seconds, hold):
  """Pulls for ``seconds``; returns (messages, pull latencies in s)."""
  held = collections.deque()  # (pulled at, ack id)
  got, latencies = 0, []
  started = last_extension = time.monotonic()
  while time.monotonic() - started < seconds:
    if len(held) < MAX_HELD:
      before = time.monotonic()
      response = client.pull(subscription=subscription, max_messages=1000,
                             timeout=2, retry=None)
      latencies.append(time.monotonic() - before)
      received = type(response).pb(response).received_messages
      if not received and not held:
        break  # drained
      got += len(received)
      held.extend((time.monotonic(), r.ack_id) for r in received)
    now = time.monotonic()
    due = []
    while held and now - held[0][0] >= hold:
      due.append(held.popleft()[1])
    for i in range(0, len(due), 1000):
      client.acknowledge(subscription=subscription, ack_ids=due[i:i + 1000],
                         timeout=10, retry=None)
    if held and now - last_extension > 3:
      ids = [ack for _, ack in held]
      for i in range(0, len(ids), 1000):
        client.modify_ack_deadline(
            subscription=subscription, ack_ids=ids[i:i + 1000],
            ack_deadline_seconds=10, timeout=10, retry=None)
      last_extension = now
    if not due and len(held) >= MAX_HELD:
      time.sleep(0.01)
  return got, time.monotonic() - started, latencies


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--backlog', type=int, default=300000)
  parser.add_argument('--hold', type=float, nargs='+', default=[0.0, 0.3])
  parser.add_argument('--seconds', type=float, default=15)
  args = parser.parse_args(argv)
  os.environ.update({'NO_GCE_CHECK': 'true', 'GCE_METADATA_HOST': '127.0.0.1:9',
                     'GCE_METADATA_IP': '127.0.0.1:9'})
  with tempfile.TemporaryDirectory() as tmp:
    emulator = emulators.PubSubEmulator(
        log_path=os.path.join(tmp, 'pubsub.log'), project=PROJECT)
    emulator.start()
    os.environ.update(emulator.env())
    try:
      for i, hold in enumerate(args.hold):
        topic, sub = 'pull-bench-%d' % i, 'pull-bench-sub-%d' % i
        publish_signins.publish(PROJECT, topic, 0, subscription=sub)
        publish_signins.publish(PROJECT, topic, args.backlog, users=5000,
                                max_message_bytes=4096)
        client = pump.subscriber_client()
        got, took, latencies = drain(
            client, 'projects/%s/subscriptions/%s' % (PROJECT, sub),
            args.seconds, hold)
        latencies.sort()
        print('backlog %d, acknowledged %.1f s after the pull: %d msgs in '
              '%.1f s = %.0f msgs/s; pull latency p50 %.1f ms, p90 %.1f ms' % (
                  args.backlog, hold, got, took, got / took,
                  1000 * latencies[len(latencies) // 2],
                  1000 * latencies[int(len(latencies) * 0.9)]), flush=True)
    finally:
      emulator.stop()


if __name__ == '__main__':
  main()
