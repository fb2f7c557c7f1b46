"""What a local run has done, for the progress line, the status file and the
summary: messages read (what the reader served; a replay's, what the graph
counted in Beam's metrics), rows and dead letters stored (read from the
DuckDB tables, what is committed), or what the runner settled, and the
reader's read-ahead, lag and outages."""

import json
import logging
import os
import threading
import time

from storage import outages
from storage.duckdb_files import Busy
from storage.duckdb_files import DuckDBFiles

_LOG = logging.getLogger(__name__)


def graph_counts(result):
  """What the graph counted in Beam's metrics, by counter name, summed over
  steps: ``messages`` read by a parse step, ``dropped`` by a UDF, ``files``
  and ``file_bytes`` a replay read to their end. {} where the runner cannot
  say (yet)."""
  try:
    from apache_beam.metrics.metric import MetricsFilter
    counters = result.metrics().query(MetricsFilter())['counters']
  except Exception as e:  # pylint: disable=broad-except
    _LOG.debug('no metrics from the runner: %s', e)
    return {}
  counts = {}
  for counter in counters:
    value = counter.committed if counter.committed is not None else (
        counter.attempted)
    name = counter.key.metric.name
    counts[name] = counts.get(name, 0) + (value or 0)
  return counts


class Progress(object):
  """Counts what a local run has stored. ``leases`` are its reader's;
  ``warehouse`` and ``tables`` ({'rows': .., 'dead_letters': .., optionally
  'counts': ..}) name the local tables (None when they are in BigQuery);
  ``pump`` is the run's reader, if any. ``counted`` (``graph_counts``) is
  set by a batch run at its end. A stream's own metrics are not read: Beam's
  BundleBasedDirectRunner keeps a step's first bundle's metrics container in
  its cached state sampler states, so what later bundles count is lost
  (measured: 10 of 50)."""
  def __init__(self, leases, warehouse, tables, status_file=None, pump=None,
               input_total=None, name=None):
    self.counted = None
    self._name = name
    self._input_total = input_total  # a replay's (files, bytes)
    self._leases = leases
    self._warehouse = warehouse
    self._tables = tables
    self._status_file = status_file
    self._pump = pump
    self._started = time.monotonic()
    self._last = (self._started, 0)
    self._stored = None
    # What the tables held before this run: its lines say what it added.
    self._before = self.stored() if warehouse else None  # never waits

  def stored(self, wait=False):
    """Counts in the warehouse; the last ones while another process holds
    the file (a progress line never waits for a reader)."""
    if not self._warehouse or not os.path.exists(self._warehouse):
      return None
    names = self._tables
    try:
      with DuckDBFiles.use(self._warehouse, wait=wait) as con:
        tables = {r[0] for r in con.execute('SHOW TABLES').fetchall()}

        def count(sql, table):
          return (con.execute(sql % table).fetchall()
                  if table and table in tables else [])
        rows = count('SELECT count(*) FROM "%s"', names['rows'])
        dead = count('SELECT reason, count(*) FROM "%s" GROUP BY 1 ORDER BY 1',
                     names['dead_letters'])
        windows = count('SELECT count(*) FROM "%s"', names.get('counts'))
    except Busy:
      return self._stored
    except Exception as e:  # pylint: disable=broad-except
      _LOG.debug('progress could not read the warehouse: %s', e)
      return self._stored  # an outage: the sinks say so and wait it out
    self._stored = {
        'rows': rows[0][0] if rows else 0,
        'dead_letters': dict(dead),
    }
    if names.get('counts'):
      self._stored['count_rows'] = windows[0][0] if windows else 0
    return self._stored

  def _replay_progress(self, now, counted):
    """Files and bytes of a replay done of its total, and the time left at
    the rate so far."""
    files, size = counted.get('files', 0), counted.get('file_bytes', 0)
    total_files, total_bytes = self._input_total
    out = {'files_done': files, 'files_total': total_files,
           'bytes_done': size, 'bytes_total': total_bytes}
    elapsed = now - self._started
    if size and total_bytes > size:
      out['time_left_s'] = round(elapsed * (total_bytes - size) / size, 1)
    return out

  def report(self, final=False):
    """Logs one progress line, writes the status file; returns the status."""
    now = time.monotonic()
    counted = self.counted or {}
    seen = self._pump.served if self._pump is not None else counted.get(
        'messages', 0)
    last_time, last_seen = self._last
    rate = (seen - last_seen) / max(now - last_time, 1e-6)
    self._last = (now, seen)
    status = {'messages_in': seen, 'rate_per_s': round(rate, 1),
              'elapsed_s': round(now - self._started, 1), 'final': final}
    if counted.get('dropped'):
      status['dropped'] = counted['dropped']
    if self._input_total and counted:  # a replay's, known at its end
      status.update(self._replay_progress(now, counted))
    stored = self.stored()
    if stored is not None:
      status.update(stored)
      status['stored_total'] = stored['rows'] + sum(
          stored['dead_letters'].values())
      before = self._before or {'rows': 0, 'dead_letters': {}}
      status['rows_added'] = stored['rows'] - before['rows']
      status['dead_letters_added'] = sum(stored['dead_letters'].values()) - (
          sum(before['dead_letters'].values()))
    elif self._pump is not None:
      # BigQuery: what the runner settled this run (stored, dead-lettered
      # or dropped).
      status['stored_total'] = self._leases.settled_total
    if self._pump is not None:
      status.update(self._pump.status())
    waiting = outages.snapshot()
    if waiting:
      status['outages'] = waiting
    if self._name:
      status['pipeline'] = self._name
    _LOG.info('%s', progress_line(status))
    if self._status_file:
      tmp = '%s.%d.tmp' % (self._status_file, threading.get_ident())
      with open(tmp, 'w') as f:
        json.dump(status, f, sort_keys=True)
      os.replace(tmp, self._status_file)
    return status


def progress_line(status):
  """The status dict as one short line a person reads at a glance."""
  parts = ['{:,} read'.format(status.get('messages_in', 0))]
  if 'rows' in status:
    dead = status.get('dead_letters', {})
    worst = sorted(dead.items(), key=lambda kv: (-kv[1], kv[0]))
    detail = ', '.join('%s %s' % (k, '{:,}'.format(n)) for k, n in worst[:3])
    if len(worst) > 3:
      detail += ', ...'
    # What this run added, then the table's total when it holds more.
    for added, total, what in (
        (status.get('rows_added', status['rows']), status['rows'], 'rows'),
        (status.get('dead_letters_added', sum(dead.values())),
         sum(dead.values()), 'dead')):
      part = '+{:,} {}'.format(added, what)
      if total != added:
        part += ' ({:,} in the table)'.format(total)
      if what == 'dead' and detail:
        part += ' (%s)' % detail if total == added else ''
      parts.append(part)
  elif 'stored_total' in status:
    parts.append('{:,} stored'.format(status['stored_total']))
  if status.get('dropped'):
    parts.append('{:,} dropped'.format(status['dropped']))
  parts.append('{:,.0f} msg/s'.format(status.get('rate_per_s', 0)))
  if 'files_total' in status:
    parts.append('files %d/%d (%.0f%% of %s)' % (
        status['files_done'], status['files_total'],
        100.0 * status['bytes_done'] / max(status['bytes_total'], 1),
        _size(status['bytes_total'])))
    if 'time_left_s' in status:
      parts.append('%.0f s left' % status['time_left_s'])
  if 'in_flight' in status:
    parts.append('{:,} in flight'.format(status['in_flight']))
    parts.append('lag %.2f s' % status.get('lag_s', 0))
  if status.get('pubsub_unreachable_s'):
    parts.append('Pub/Sub not answering for %.0f s' %
                 status['pubsub_unreachable_s'])
  for what, outage in sorted(status.get('outages', {}).items()):
    parts.append('waiting for %s for %.0f s (%s)' % (
        what, outage['for_s'], outage['error'][:80]))
  prefix = '%s: ' % status['pipeline'] if status.get('pipeline') else ''
  return prefix + '  '.join(parts)


def _size(n):
  for unit in ('B', 'KB', 'MB', 'GB'):
    if n < 1024 or unit == 'GB':
      return ('%d %s' if unit == 'B' else '%.1f %s') % (n, unit)
    n /= 1024.0
  return '%d B' % n


def summary(name, status, warehouse, tables, output_table=None):
  """The end-of-run lines."""
  lines = ['%s: %d messages read in %.1f s%s' % (
      name, status['messages_in'], status['elapsed_s'],
      ' (%d files, %s; %.0f msgs/s)' % (
          status['files_total'], _size(status['bytes_total']),
          status['messages_in'] / max(status['elapsed_s'], 0.1))
      if 'files_total' in status else '')]
  if 'rows' in status:
    dead = status['dead_letters']
    rows_added = status.get('rows_added', status['rows'])
    dead_added = status.get('dead_letters_added', sum(dead.values()))
    lines.append('  rows:         %d  new this run (%s, table %s: %d)' % (
        rows_added, warehouse, tables['rows'], status['rows']))
    reasons = ', '.join('%s=%d' % kv for kv in sorted(dead.items()))
    lines.append('  dead letters: %d  new this run (table: %d%s)' % (
        dead_added, sum(dead.values()), '  ' + reasons if reasons else ''))
    if 'count_rows' in status:
      lines.append('  count rows:   %d  (table %s)' % (
          status['count_rows'], tables['counts']))
  elif 'stored_total' in status:
    lines.append('  stored:       %d  (settled and acknowledged: in %s)' % (
        status['stored_total'], output_table))
  if status.get('dropped'):
    lines.append('  dropped:      %d  (the UDF returned None)' % status['dropped'])
  if status.get('in_flight'):
    lines.append('  not acknowledged: %d  (Pub/Sub redelivers them to the next '
                 'run, which stores each once)' % status['in_flight'])
  return '\n'.join(lines)
