"""Sign-ins per user per event-time window, with Beam's lateness rules.

Rows carry their sign-in ``date`` as element timestamp. Windows fire when the
watermark passes their end, then once more for each late sign-in that arrives
within the allowed lateness (panes accumulate, so the latest pane is the
total); sign-ins later than that are not counted (their rows are still stored).

Keys: the local runner's cost grows with the number of keyed states it
holds (it scans every key's timers on every watermark tick), so by default
users are grouped into ``shards`` keys per window, each carrying its users'
counts, and expanded back into one row per user after the GroupByKey: the
same rows and totals, ``shards`` keys per window instead of one per user.
A late sign-in fires its shard's pane: every user of the shard again, or on
the local runner (``skip_unchanged``) only those whose total changed.
``shards=0`` keys by user.
"""

import collections
import threading
import uuid
import zlib
from typing import Any, Mapping

import apache_beam as beam
from apache_beam.transforms import trigger
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming
from apache_beam.utils.windowed_value import WindowedValue

from transforms import event_time


MAX_SHARDS = 10000  # more keys than this is keying by user (0)


# A dict by column, typed as a Mapping: Beam encodes it as it encodes
# untyped elements (FastPrimitivesCoder), so a running job can be updated.
@beam.typehints.with_output_types(Mapping[str, Any])
class FormatWindowCount(beam.DoFn):
  """(userid, n) in a window -> a signin_counts row."""
  def process(self, user_count, win=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    userid, signins = user_count
    yield {
        'window_start': event_time.calendar_datetime(win.start.micros),
        'window_end': event_time.calendar_datetime(win.end.micros),
        'userid': userid,
        'signins': signins,
        'pane_timing': _TIMING.get(pane.timing, 'UNKNOWN'),
        'pane_index': pane.index,
    }


_TIMING = {
    PaneInfoTiming.EARLY: 'EARLY',
    PaneInfoTiming.ON_TIME: 'ON_TIME',
    PaneInfoTiming.LATE: 'LATE',
}


class CountPerUserAndWindowInBundle(beam.DoFn):
  """Rows -> one (userid, n) per user and fixed window per bundle.

  Keying, window assignment and combiner lifting in one step: the local
  runner pays ~20 us per element per step, and its windowed GroupByKey
  (trigger bookkeeping) more, so it sees one element per user per bundle.
  Emitted at the window's end in that window: a GroupByKey decides lateness
  by window, so what is on time, late or dropped does not change.
  """
  def __init__(self, window_seconds, shards=0):
    self._size_micros = int(round(window_seconds * 1e6))
    self._shards = shards

  def start_bundle(self):
    self._counts = collections.defaultdict(int)

  def process(self, row):
    # The row's date is its element timestamp (ParseSignins stamps it so);
    # read from the row, the runner takes its cheapest per-element path
    # (no DoFn parameters). FixedWindows(size) without offset: the window
    # starts at ts - ts % size.
    micros = event_time.epoch_micros(row['date'])
    self._counts[(row['userid'], micros - micros % self._size_micros)] += 1

  def finish_bundle(self):
    counts, self._counts = self._counts, None
    if self._shards:
      # (shard, {userid: n}) per shard and window.
      sharded = collections.defaultdict(dict)
      for (userid, start), n in counts.items():
        sharded[(user_shard(userid, self._shards), start)][userid] = n
      counts = sharded
    for (key, start), value in counts.items():
      win = window.IntervalWindow(
          Timestamp(micros=start), Timestamp(micros=start + self._size_micros))
      yield WindowedValue((key, value), win.max_timestamp(), [win])


def user_shard(userid, shards):
  """A stable shard of a user id, the same in every process and run."""
  return zlib.crc32(userid.encode('utf-8')) % shards


class MergeUserCounts(beam.CombineFn):
  """{userid: n} partial counts -> their per-user sums."""
  def create_accumulator(self):
    return {}

  def add_input(self, accumulator, counts):
    for userid, n in counts.items():
      accumulator[userid] = accumulator.get(userid, 0) + n
    return accumulator

  def merge_accumulators(self, accumulators):
    merged = {}
    for accumulator in accumulators:
      self.add_input(merged, accumulator)
    return merged

  def extract_output(self, accumulator):
    return dict(accumulator)


class ExpandChangedUsers(beam.DoFn):
  """(shard, {userid: n}) -> (userid, n) for each user whose total this
  process has not already emitted for the window, in the same window and
  pane.

  A late sign-in fires its whole shard's pane; without this filter every
  other user of the shard would be written again with an unchanged total
  (measured: a 50,000-message backlog over 10 windows ran at 604 msgs/s
  against 979 with a key per user). The memory is bounded to the most
  recent windows. Only with ``skip_unchanged`` (local runs): the local
  runner commits this step's output before the sink runs, so what it
  skipped was written; a runner that fuses it with the sink and retries the
  fused work after a failure could skip a total that was never written, so
  on Dataflow every user of the pane is emitted.
  """
  _emitted = {}  # (transform id, window start) -> {userid: total}; per process
  _lock = threading.Lock()

  def __init__(self, keep_windows, skip_unchanged):
    self._id = uuid.uuid4().hex
    self._keep = keep_windows
    self._skip = skip_unchanged

  def process(self, shard_counts, win=beam.DoFn.WindowParam):
    _, counts = shard_counts
    if not self._skip:
      return sorted(counts.items())
    key = (self._id, win.start)
    with self._lock:
      seen = self._emitted.get(key)
      if seen is None:
        seen = self._emitted[key] = {}
        self._forget_old_windows()
      changed = [(u, n) for u, n in counts.items() if seen.get(u) != n]
      seen.update(changed)
    return sorted(changed)

  def _forget_old_windows(self):
    mine = sorted(k for k in self._emitted if k[0] == self._id)
    for key in mine[:-self._keep]:
      del self._emitted[key]


DEFAULT_SHARDS = 16


@beam.typehints.with_input_types(Mapping[str, Any])
class CountSigninsPerWindow(beam.PTransform):
  """Rows -> signin_counts rows: fixed event-time windows, late firings."""
  def __init__(self, window_seconds=60, allowed_lateness_seconds=300,
               shards=DEFAULT_SHARDS, skip_unchanged=False):
    super().__init__()
    self._skip_unchanged = skip_unchanged
    self._window_seconds = window_seconds
    self._lateness = allowed_lateness_seconds
    self._shards = shards

  def expand(self, rows):
    windowed = (
        rows
        | 'CountPerBundle' >> beam.ParDo(
            CountPerUserAndWindowInBundle(self._window_seconds, self._shards))
        | 'FixedWindows' >> beam.WindowInto(
            window.FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            allowed_lateness=self._lateness,
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING))
    if self._shards:
      per_user = (
          windowed
          | 'SumPerShard' >> beam.CombinePerKey(MergeUserCounts())
          | 'ExpandPerUser' >> beam.ParDo(ExpandChangedUsers(
              keep_windows=int(self._lateness // self._window_seconds) + 3,
              skip_unchanged=self._skip_unchanged)))
    else:
      per_user = windowed | 'SumPerUser' >> beam.CombinePerKey(sum)
    return per_user | 'ToCountRows' >> beam.ParDo(FormatWindowCount())


class CountsWithTheRows(object):
  """Keeps a local warehouse's counts table equal to counting its stored
  sign-ins: called by the rows sink with the rows that were new, in the
  transaction that stores them (``WriteToDuckDB(with_inserted=...)``), it
  adds them to their (window, user) totals. A redelivered or replayed
  message is not new, so it adds nothing; a restart, a kill -9 (both or
  neither commit) or a second writer cannot make the two disagree."""
  def __init__(self, window_seconds, counts_table='signin_counts'):
    self._size = int(round(window_seconds * 1e6))
    self._table = counts_table
    from transforms import schemas
    self._ddl = schemas.SIGNIN_COUNTS.duckdb_ddl(counts_table)

  def __call__(self, con, rows):
    import pyarrow as pa
    if not rows:
      return
    totals = collections.defaultdict(int)
    for row in rows:
      micros = event_time.epoch_micros(row['date'])
      totals[(micros - micros % self._size, row['userid'])] += 1
    # Held to years 1-9999, as Beam's windows are when they are stored.
    starts = [event_time.calendar_datetime(s) for s, _ in totals]
    ends = [event_time.calendar_datetime(s + self._size) for s, _ in totals]
    data = pa.table({
        'window_start': pa.array(starts, pa.timestamp('us', tz='UTC')),
        'window_end': pa.array(ends, pa.timestamp('us', tz='UTC')),
        'userid': [u for _, u in totals],
        'signins': pa.array(list(totals.values()), pa.int64()),
    })
    con.execute(self._ddl)  # IF NOT EXISTS: a catalog look-up
    con.register('_new_counts', data)
    try:
      con.execute(
          'INSERT INTO "{t}" (window_start, window_end, userid, signins) '
          'SELECT * FROM _new_counts ON CONFLICT (window_start, userid) DO '
          'UPDATE SET signins = "{t}".signins + excluded.signins'.format(
              t=self._table))
    finally:
      try:
        con.unregister('_new_counts')
      except Exception:  # pylint: disable=broad-except
        pass  # in an aborted transaction; the caller rolls it back


# The calendar's first and last microsecond: windows past them are held
# there, so their stored length is not the window length.
CALENDAR_MICROS = (-62135596800 * 10**6, 253402300800 * 10**6 - 1)
WHOLE_WINDOW = ('epoch_us(window_start) > %d AND epoch_us(window_end) < %d'
                % CALENDAR_MICROS)


class WindowMismatch(ValueError):
  """The warehouse's counts are of windows of another length."""


def reconcile_counts(con, window_seconds, rows_table='signins',
                     counts_table='signin_counts'):
  """Before a local run: the counts table must be of this run's window
  length (WindowMismatch otherwise), and equal to counting the stored rows;
  where it is not (a warehouse an earlier version wrote), it is recounted.
  Returns whether it recounted."""
  size = int(round(window_seconds * 1e6))
  lengths = [r[0] for r in con.execute(
      'SELECT DISTINCT epoch_us(window_end) - epoch_us(window_start) FROM '
      '"%s" WHERE %s LIMIT 3' % (counts_table, WHOLE_WINDOW)).fetchall()]
  other = [n for n in lengths if n != size]
  if other:
    raise WindowMismatch(
        'its counts are of %g-second windows; give --window_seconds %g or '
        'another warehouse' % (other[0] / 1e6, other[0] / 1e6))
  rows, counted = con.execute(
      'SELECT (SELECT count(*) FROM "%s"), (SELECT coalesce(sum(signins), 0) '
      'FROM "%s")' % (rows_table, counts_table)).fetchall()[0]
  if rows == counted:
    return False
  start = ('epoch_us(date) - ((epoch_us(date) %% %d) + %d) %% %d' % (
      size, size, size))
  low, high = CALENDAR_MICROS
  con.execute('BEGIN TRANSACTION')
  try:
    con.execute(
        'CREATE OR REPLACE TEMP TABLE _recount AS SELECT make_timestamptz('
        'greatest(s, {low})) AS window_start, make_timestamptz(least(s + '
        '{size}, {high})) AS window_end, userid, count(*) AS signins FROM '
        '(SELECT {start} AS s, userid FROM "{rows}") GROUP BY s, userid'
        .format(low=low, high=high, size=size, start=start, rows=rows_table))
    con.execute('DELETE FROM "{c}" WHERE (window_start, userid) NOT IN '
                '(SELECT window_start, userid FROM _recount)'.format(
                    c=counts_table))
    con.execute(
        'INSERT INTO "{c}" (window_start, window_end, userid, signins) SELECT '
        '* FROM _recount ON CONFLICT (window_start, userid) DO UPDATE SET '
        'signins = excluded.signins'.format(c=counts_table))
    con.execute('DROP TABLE _recount')
    con.execute('COMMIT')
  except BaseException:
    con.execute('ROLLBACK')
    raise
  return True
