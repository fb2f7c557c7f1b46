"""The baseline for the streaming benchmark: Beam's ReadFromPubSub (with
attributes) on the local runner, and a step that only counts.

    python benchmarks/bare_pubsub_read.py --input_subscription S --status_file F

Writes {"messages_in": N} to the status file every 0.05 s, like main.py
user_signin does, and runs until SIGTERM.
"""

import argparse
import json
import os
import signal
import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

_counted = [0]
_lock = threading.Lock()


def count(message):
  with _lock:
    _counted[0] += 1


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('--input_subscription', required=True)
  parser.add_argument('--status_file', required=True)
  args = parser.parse_args(argv)
  options = PipelineOptions(['--streaming', '--runner=BundleBasedDirectRunner'])
  p = beam.Pipeline(options=options)
  _ = (p | beam.io.ReadFromPubSub(subscription=args.input_subscription,
                                  with_attributes=True)
       | beam.Map(count))
  p.run()
  stop = threading.Event()
  signal.signal(signal.SIGTERM, lambda *_: stop.set())
  while not stop.wait(0.05):
    with open(args.status_file + '.tmp', 'w') as f:
      json.dump({'messages_in': _counted[0]}, f)
    os.replace(args.status_file + '.tmp', args.status_file)
  os._exit(0)  # Beam's read may sit in a 30 s long-poll; nothing to flush


if __name__ == '__main__':
  main()
