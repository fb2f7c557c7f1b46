"""The picture of each pipeline's graph, as Beam's RenderRunner draws it
(``--render_output``): docs/pipelines/NAME.svg to look at, and NAME.dot,
the layout the test compares to catch a stale picture.

    python -m tools.pictures            # regenerate them all
    python -m tools.pictures --check    # exit 1 if one is stale

Each is the graph Dataflow runs for a typical command line (Pub/Sub in,
BigQuery or GCS out), drawn offline: nothing is contacted.
"""

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = os.path.join(ROOT, 'docs', 'pipelines')
SUBSCRIPTION = 'projects/demo-proj/subscriptions/events'
COMMANDS = {
    'wordcount': ['--input', 'data/devils_dictionary.txt', '--output',
                  'gs://demo-bucket/counts/part', '--output_table',
                  'demo-proj:words.counts'],
    'user_signin': ['--input_subscription', SUBSCRIPTION, '--output_table',
                    'demo-proj:signins.signins'],
    'pubsub_to_bigquery': [
        '--schema', 'data/orders.json', '--udf', 'data/fix_orders.py:fix',
        '--input_subscription', SUBSCRIPTION, '--output_table',
        'demo-proj:shop.orders', '--dead_letter_topic',
        'projects/demo-proj/topics/dead-letters'],
    'pubsub_to_gcs': ['--input_subscription', SUBSCRIPTION,
                      '--output_directory', 'gs://demo-bucket/archive',
                      '--num_shards', '2'],
}


def render(name, folder):
  """Draws pipeline ``name`` into ``folder``/NAME.svg and NAME.dot."""
  env = {k: v for k, v in os.environ.items()
         if not k.endswith('_EMULATOR_HOST')}
  outputs = [os.path.join(folder, '%s.%s' % (name, ext))
             for ext in ('dot', 'svg')]
  args = [sys.executable, os.path.join(ROOT, 'main.py'), name] + (
      COMMANDS[name]) + ['--render_output=%s' % o for o in outputs]
  done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)
  if done.returncode or not all(os.path.exists(o) for o in outputs):
    raise RuntimeError('%s: cannot draw it: %s' % (
        name, (done.stderr or done.stdout).strip().splitlines()[-1:]))
  return outputs


def stale(names=COMMANDS):
  """The pipelines whose committed picture differs from their graph now."""
  found = []
  with tempfile.TemporaryDirectory() as folder:
    for name in names:
      dot, _ = render(name, folder)
      kept = os.path.join(FOLDER, name + '.dot')
      if not os.path.exists(kept) or not filecmp.cmp(dot, kept, shallow=False):
        found.append(name)
  return found


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m tools.pictures',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--check', action='store_true',
                      help='Say which pictures are stale; change nothing.')
  args = parser.parse_args(argv)
  if args.check:
    old = stale()
    for name in old:
      print('%s: stale (python -m tools.pictures)' % name)
    return 1 if old else 0
  os.makedirs(FOLDER, exist_ok=True)
  for name in COMMANDS:
    for path in render(name, FOLDER):
      print(os.path.relpath(path, ROOT))
  return 0


if __name__ == '__main__':
  sys.exit(main())
