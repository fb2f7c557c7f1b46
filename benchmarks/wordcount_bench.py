"""Wordcount benchmark: ours against Beam's example and a plain-Python floor,
side by side in one run on one deterministic corpus.

    ./run.sh bench wordcount [--mb 50] [--repeat 3] [--write-readme]

Each case runs as its own process, in interleaved rounds so that machine
noise spreads over all of them; we report the median wall time and the peak
resident memory: the larger of the kernel's exact peak for the process
(wait4) and the process tree's sum sampled every 50 ms (worker processes).
"""

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SAMPLE = os.path.join(ROOT, 'data', 'devils_dictionary.txt')
PY = sys.executable

PLAIN_PYTHON = r'''
import collections, re, sys
counts = collections.Counter()
with open(sys.argv[1], encoding="utf-8") as f:
  counts.update(re.findall(r"[\w']+", f.read()))
with open(sys.argv[2], "w", encoding="utf-8") as out:
  for word, n in counts.items():
    out.write("%s: %d\n" % (word, n))
'''


def make_corpus(path, megabytes, seed=2017):
  """Lines of 4-16 words drawn (seeded) from the sample text's own words."""
  with open(SAMPLE, encoding='utf-8') as f:
    words = re.findall(r"[\w']+", f.read())
  rng = random.Random(seed)
  target = megabytes << 20
  written = 0
  with open(path, 'w', encoding='utf-8') as out:
    while written < target:
      lines = [' '.join(rng.choices(words, k=rng.randint(4, 16)))
               for _ in range(2000)]
      chunk = '\n'.join(lines) + '\n'
      out.write(chunk)
      written += len(chunk.encode('utf-8'))
  return path


def tree_rss_bytes(pid):
  """Resident memory of a process and all its descendants, from /proc."""
  total, stack = 0, [pid]
  while stack:
    p = stack.pop()
    try:
      with open('/proc/%d/statm' % p) as f:
        total += int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
      for task in os.listdir('/proc/%d/task' % p):
        with open('/proc/%d/task/%s/children' % (p, task)) as f:
          stack.extend(int(c) for c in f.read().split())
    except (OSError, ValueError):
      continue
  return total


def timed(cmd, env):
  """Runs cmd; returns (seconds, peak tree RSS in MiB)."""
  peak = [0]
  started = time.monotonic()
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, cwd=ROOT)
  done = threading.Event()

  def sample():
    while not done.wait(0.05):
      peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  err = proc.stderr.read()
  _, status, usage = os.wait4(proc.pid, 0)
  elapsed = time.monotonic() - started
  proc.returncode = os.waitstatus_to_exitcode(status)
  done.set()
  sampler.join()
  # The sampler sees the sum over worker processes; wait4 sees the exact peak
  # of the launcher (and of its largest waited-for child).
  peak[0] = max(peak[0], usage.ru_maxrss * 1024)
  if proc.returncode:
    raise RuntimeError('%s failed:\n%s' % (' '.join(cmd), err.decode()[-3000:]))
  return elapsed, peak[0] / (1 << 20)


def cases(corpus, out):
  main = [PY, os.path.join(ROOT, 'main.py'), 'wordcount', '--input', corpus]
  return [
      ('main.py wordcount (defaults)',
       main + ['--output', out + '/ours']),
      ('main.py wordcount, 1 worker',
       main + ['--output', out + '/ours1', '--direct_num_workers=1']),
      ('main.py wordcount, 2 workers (multi_processing)',
       main + ['--output', out + '/ours2', '--direct_num_workers=2',
               '--direct_running_mode=multi_processing']),
      ("Beam's example (apache_beam.examples.wordcount)",
       [PY, '-m', 'apache_beam.examples.wordcount', '--input', corpus,
        '--output', out + '/beam', '--runner', 'FnApiRunner']),
      ('plain Python (Counter over the same regex)',
       [PY, '-c', PLAIN_PYTHON, corpus, out + '/plain.txt']),
  ]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--mb', type=int, default=50, help='corpus size in MiB')
  parser.add_argument('--repeat', type=int, default=3, help='rounds')
  parser.add_argument('--scaling-mb', type=int, default=0,
                      help='also time 1 against 2 workers on a corpus this '
                      'large (the 50 MiB one repeated), where workers pay off')
  parser.add_argument('--write-readme', action='store_true',
                      help='replace the results in benchmarks/README.md')
  args = parser.parse_args(argv)
  env = dict(os.environ, NO_GCE_CHECK='true', GCE_METADATA_HOST='127.0.0.1:9',
             GCE_METADATA_IP='127.0.0.1:9', PYTHONPATH=ROOT)
  with tempfile.TemporaryDirectory() as tmp:
    corpus = make_corpus(os.path.join(tmp, 'corpus.txt'), args.mb)
    runs = {}
    for round_ in range(args.repeat):
      for name, cmd in cases(corpus, tmp):
        seconds, mib = timed(cmd, env)
        runs.setdefault(name, []).append((seconds, mib))
        print('round %d  %-50s %6.2f s  %7.0f MiB' % (
            round_ + 1, name, seconds, mib), flush=True)
    scaling = scale(corpus, tmp, args, env) if args.scaling_mb else None
  medians = {n: statistics.median(s for s, _ in r) for n, r in runs.items()}
  peaks = {n: max(m for _, m in r) for n, r in runs.items()}
  names = list(runs)
  ours, beam, plain = names[0], names[3], names[4]
  one, two = names[1], names[2]
  table = ['| case | median s | peak MiB (process tree) | vs Beam\'s example | vs plain Python |',
           '| --- | ---: | ---: | ---: | ---: |']
  for n in names:
    table.append('| %s | %.2f | %.0f | %.2fx faster | %.2fx the time |' % (
        n, medians[n], peaks[n], medians[beam] / medians[n],
        medians[n] / medians[plain]))
  summary = [
      '',
      'Scaling, 1 -> 2 workers: %.2fx speed-up.' % (medians[one] / medians[two]),
      'Defaults against the targets: %.1fx faster than Beam\'s example (target >= 5x), '
      '%.2fx the plain-Python floor (target <= 1.5x), peak memory %.0f MiB vs '
      "Beam's example %.0f MiB." % (
          medians[beam] / medians[ours], medians[ours] / medians[plain],
          peaks[ours], peaks[beam]),
  ]
  if scaling:
    summary.append(
        'At %d MiB: 1 worker %.1f s, 2 workers %.1f s (multi_processing, the '
        'default from 256 MiB): %.2fx speed-up.' % (
            args.scaling_mb, scaling[0], scaling[1], scaling[0] / scaling[1]))
  report = '\n'.join(table + summary)
  print('\n' + report)
  if args.write_readme:
    write_readme(report, args, cores=os.cpu_count())


def scale(corpus, tmp, args, env):
  """Median seconds of 1 and of 2 workers on a corpus of args.scaling_mb."""
  big = os.path.join(tmp, 'big.txt')
  with open(corpus, 'rb') as src:
    data = src.read()
  with open(big, 'wb') as out:
    for _ in range(max(1, args.scaling_mb // max(1, args.mb))):
      out.write(data)
  main = [PY, os.path.join(ROOT, 'main.py'), 'wordcount', '--input', big,
          '--output', os.path.join(tmp, 'scaled')]
  times = {1: [], 2: []}
  for round_ in range(args.repeat):
    for workers in (1, 2):
      extra = ['--direct_num_workers=%d' % workers]
      if workers > 1:
        extra.append('--direct_running_mode=multi_processing')
      seconds, mib = timed(main + extra, env)
      times[workers].append(seconds)
      print('round %d  %d MiB, %d worker(s)%s %6.2f s  %7.0f MiB' % (
          round_ + 1, args.scaling_mb, workers, ' ' * 22, seconds, mib),
          flush=True)
  return statistics.median(times[1]), statistics.median(times[2])


def write_readme(report, args, cores):
  from results import replace_section
  replace_section('wordcount', 'Last run %s on %d cores: `./run.sh bench wordcount '
                  '--mb %d --repeat %d%s --write-readme`\n\n%s\n' % (
                      time.strftime('%Y-%m-%d'), cores, args.mb, args.repeat,
                      ' --scaling-mb %d' % args.scaling_mb
                      if args.scaling_mb else '', report))


if __name__ == '__main__':
  main()
