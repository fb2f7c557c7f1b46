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
import sys
import threading

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from local_runner import runs  # noqa: E402

RUN = runs.Run().__enter__()  # the same per-run count main.py's runs keep
COUNT = RUN.count_read()


def count(message):
  COUNT.add(1)


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
      json.dump({'messages_in': RUN.messages_read}, f)
    os.replace(args.status_file + '.tmp', args.status_file)
  os._exit(0)  # Beam's read may sit in a 30 s long-poll; nothing to flush


if __name__ == '__main__':
  main()
