"""Elements stamped with their event time, cheaply: one place that builds
Beam's ``TimestampedValue`` from an aware datetime, or (``in_global_window``)
the ``WindowedValue`` Beam would make of it when the step's input is in the
global window.

Beam's public constructors validate every argument (``Timestamp(micros=)``
plus ``TimestampedValue`` cost ~1.2 us, a third of a sign-in's parse). The
fast builder sets the same fields directly. At import it is checked against
the public constructors on sample values; on a Beam whose fields differ it
is not used (the public constructors are, with a warning), so a Beam upgrade
can slow this down but never change a timestamp.

A DoFn's TimestampedValue output is re-windowed by Beam (an AssignContext,
the window function's ``assign``, a WindowedValue: ~1 us more an element,
and a Timestamp object). Where the input is in the global window (a Pub/Sub
read) the window is known: ``in_global_window`` makes Beam's WindowedValue
directly, its time kept as microseconds (Beam's own WindowInto DoFn yields
WindowedValues so; the runner passes them on as they are).
"""

import datetime
import decimal
import logging

from apache_beam.transforms.window import GlobalWindow
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils import windowed_value
from apache_beam.utils.timestamp import Timestamp

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)
_MILLION = 10**6
_MIN_MICROS = -62135596800 * _MILLION           # 0001-01-01 00:00:00 UTC
_MAX_MICROS = 253402300800 * _MILLION - 1       # 9999-12-31 23:59:59.999999 UTC
_EXACT = decimal.Context(prec=200, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


def epoch_micros(when):
  """Aware datetime -> microseconds since the Unix epoch, exactly."""
  return (when - _EPOCH) // _MICROSECOND


def calendar_datetime(micros):
  """Microseconds since the epoch -> aware UTC datetime, held to the
  calendar's years 1-9999 (what a TIMESTAMP holds): the bound of a window
  that reaches past either end (a sign-in in the last minute of 9999 is in
  a window that ends at 10000-01-01) is the calendar's last or first
  microsecond."""
  micros = min(max(micros, _MIN_MICROS), _MAX_MICROS)
  return _EPOCH + datetime.timedelta(microseconds=micros)


def datetime_from_epoch(seconds):
  """Seconds since the epoch (a Decimal) -> aware UTC datetime, rounded to
  the microsecond exactly (half to even); OverflowError outside years
  0001-9999."""
  if seconds.is_zero():
    seconds = decimal.Decimal(0)
  if not seconds.is_finite() or seconds.adjusted() > 12:
    raise OverflowError('outside years 0001-9999')
  micros = int(seconds.scaleb(6, context=_EXACT).quantize(
      1, rounding=decimal.ROUND_HALF_EVEN, context=_EXACT))
  if not _MIN_MICROS <= micros <= _MAX_MICROS:
    raise OverflowError('outside years 0001-9999')
  return _EPOCH + datetime.timedelta(microseconds=micros)


def _public(value, micros):
  return TimestampedValue(value, Timestamp(micros=micros))


def _fast(value, micros):
  stamp = Timestamp.__new__(Timestamp)
  stamp._precision = 6  # pylint: disable=protected-access
  stamp._seconds, stamp._subseconds = divmod(micros, _MILLION)  # pylint: disable=protected-access
  stamped_value = TimestampedValue.__new__(TimestampedValue)
  stamped_value.value = value
  stamped_value.timestamp = stamp
  return stamped_value


def _fast_is_exact():
  try:
    for micros in (0, 1, -1, 1508273837338320, -62135596800 * _MILLION,
                   253402300799999999):
      fast, public = _fast('v', micros), _public('v', micros)
      if (fast.timestamp != public.timestamp or fast != public
          or vars(fast.timestamp) != vars(public.timestamp)
          or fast.timestamp.micros != micros):
        return False
    return True
  except (AttributeError, TypeError):
    return False


FAST = _fast_is_exact()
if not FAST:
  logging.getLogger(__name__).warning(
      'this Beam\'s Timestamp differs from the one event_time was checked '
      'against: using its public constructors (slower, same values)')
_build = _fast if FAST else _public


def utc_timestamp(when):
  """Aware datetime -> Beam Timestamp, exact to the microsecond."""
  return _build(None, epoch_micros(when)).timestamp


def _stamped_fast(value, when, _new_stamp=Timestamp.__new__,
                  _new_value=TimestampedValue.__new__):
  """``_fast(value, epoch_micros(when))`` in one call (every row of a
  stream is stamped: two calls fewer is ~0.15 us a row). The seconds and
  microseconds are the difference's own fields (a timedelta keeps its
  microseconds in 0-999,999, as divmod gives them): no division, ~0.13 us
  less a row than dividing by a microsecond."""
  since = when - _EPOCH
  stamp = _new_stamp(Timestamp)
  stamp._precision = 6  # pylint: disable=protected-access
  stamp._seconds = since.days * 86400 + since.seconds  # pylint: disable=protected-access
  stamp._subseconds = since.microseconds  # pylint: disable=protected-access
  stamped_value = _new_value(TimestampedValue)
  stamped_value.value = value
  stamped_value.timestamp = stamp
  return stamped_value


def _stamped_public(value, when):
  return _public(value, epoch_micros(when))


# value -> TimestampedValue at the aware datetime ``when``.
stamped = _stamped_fast if FAST else _stamped_public


# The windows of an element in the global window: one tuple, shared (Beam
# multiplies a WindowedValue's windows with *=, which a tuple rebinds).
GLOBAL_WINDOWS = (GlobalWindow(),)


def _in_global_window_fast(value, when, _create=windowed_value.create,
                           _windows=GLOBAL_WINDOWS):
  since = when - _EPOCH
  return _create(value, (since.days * 86400 + since.seconds) * _MILLION +
                 since.microseconds, _windows)


def _in_global_window_public(value, when):
  return windowed_value.WindowedValue(
      value, Timestamp(micros=epoch_micros(when)), GLOBAL_WINDOWS)


def _windowed_fast_is_exact():
  try:
    for micros in (0, 1, -1, 1508273837338320, _MIN_MICROS, _MAX_MICROS):
      when = calendar_datetime(micros)
      fast = _in_global_window_fast('v', when)
      public = _in_global_window_public('v', when)
      if (fast != public or fast.timestamp != public.timestamp or
          fast.timestamp.micros != micros or fast.pane_info != public.pane_info
          or type(fast) is not type(public)):
        return False
    return True
  except (AttributeError, TypeError):
    return False


WINDOWED_FAST = _windowed_fast_is_exact()
if not WINDOWED_FAST:
  logging.getLogger(__name__).warning(
      'this Beam\'s WindowedValue differs from the one event_time was checked '
      'against: using its public constructor (slower, same values)')

# value -> WindowedValue in the global window at the aware datetime ``when``:
# what Beam makes of ``stamped(value, when)`` output from the global window.
in_global_window = (_in_global_window_fast if WINDOWED_FAST
                    else _in_global_window_public)


def stamper(global_window):
  """The stamp of a step's rows: ``in_global_window`` when its input is in
  the global window, else ``stamped`` (Beam assigns the window)."""
  return in_global_window if global_window else stamped
