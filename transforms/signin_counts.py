"""Sign-ins per user per event-time window, with Beam's lateness rules.

Rows carry their sign-in ``date`` as element timestamp. Windows fire when the
watermark passes their end, then once more for each late sign-in that arrives
within the allowed lateness (panes accumulate, so the latest pane is the
total); sign-ins later than that are not counted (their rows are still stored).
"""

import collections

import apache_beam as beam
from apache_beam.transforms import trigger
from apache_beam.transforms import window
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming
from apache_beam.utils.windowed_value import WindowedValue


class FormatWindowCount(beam.DoFn):
  """(userid, n) in a window -> a signin_counts row."""
  def process(self, user_count, win=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    userid, signins = user_count
    yield {
        'window_start': win.start.to_utc_datetime(has_tz=True),
        'window_end': win.end.to_utc_datetime(has_tz=True),
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
  def __init__(self, window_seconds):
    self._size_micros = int(round(window_seconds * 1e6))

  def start_bundle(self):
    self._counts = collections.defaultdict(int)

  def process(self, row, timestamp=beam.DoFn.TimestampParam):
    # FixedWindows(size) without offset: the window starts at ts - ts % size.
    micros = timestamp.micros
    self._counts[(row['userid'], micros - micros % self._size_micros)] += 1

  def finish_bundle(self):
    counts, self._counts = self._counts, None
    for (userid, start), n in counts.items():
      win = window.IntervalWindow(
          Timestamp(micros=start), Timestamp(micros=start + self._size_micros))
      yield WindowedValue((userid, n), win.max_timestamp(), [win])


class CountSigninsPerWindow(beam.PTransform):
  """Rows -> signin_counts rows: fixed event-time windows, late firings."""
  def __init__(self, window_seconds=60, allowed_lateness_seconds=300):
    super().__init__()
    self._window_seconds = window_seconds
    self._lateness = allowed_lateness_seconds

  def expand(self, rows):
    return (
        rows
        | 'CountPerBundle' >> beam.ParDo(
            CountPerUserAndWindowInBundle(self._window_seconds))
        | 'FixedWindows' >> beam.WindowInto(
            window.FixedWindows(self._window_seconds),
            trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
            allowed_lateness=self._lateness,
            accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
        | 'SumPerUser' >> beam.CombinePerKey(sum)
        | 'ToCountRows' >> beam.ParDo(FormatWindowCount()))
