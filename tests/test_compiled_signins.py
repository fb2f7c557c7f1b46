"""The sign-in parse's compiled path (``signin_messages.
compiled_signin_outputs``) is speed only: for hostile sign-ins it gives
exactly what the exact path gives (the row type for type, the same event
time) or leaves the message to it; the common sign-in takes it."""

import datetime
import json

from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.test_compiled_rows import TIMESTAMP_EDGES
from tests.test_compiled_rows import strict
from transforms import signin_messages as pm

UTC = datetime.timezone.utc
ZONES = ['UTC', 'Europe/Paris', 'Asia/Kolkata', 'America/St_Johns']


@st.composite
def dates(draw):
  """Date texts as senders write them, RFC 3339 and near it."""
  when = draw(st.datetimes(datetime.datetime(1, 1, 1),
                           datetime.datetime(9999, 12, 31, 23, 59, 59)))
  text = when.strftime('%Y-%m-%d') if when.year >= 1000 else (
      '%04d-%02d-%02d' % (when.year, when.month, when.day))
  text += draw(st.sampled_from('Tt ')) + when.strftime('%H:%M:%S')
  digits = draw(st.integers(0, 9))
  if digits:
    text += '.' + draw(st.text('0123456789', min_size=digits,
                               max_size=digits))
  text += draw(st.sampled_from(['', 'Z', 'z', '+00:00', '-00:00', '+01:00',
                                '-05:30', '+0100', '+23:59', '+24:00', '+01',
                                ' UTC']))
  return json.dumps(text)


USERIDS = st.one_of(
    st.text(max_size=8).map(json.dumps),
    st.integers().map(str),
    st.sampled_from(['"  93234234 "', '""', '" "', '"\\ud800"', '1.0', '1e3',
                     'true', 'null', '9' * 80, '"\\u0039\\u0033"', '-0',
                     '9' * 5000, '{"x": 1}', '["a"]']))
DATES = st.one_of(dates(), st.sampled_from(TIMESTAMP_EDGES + [
    '"2017-10-17"', '"Tue, 17 Oct 2017 20:57:17 GMT"', '1508273837',
    '1508273837.338320', '"2017-10-17T20:57:17.338320\\u0030"', 'null',
    '"2017-10-17T20:57:17.338320"']))


@st.composite
def signins(draw):
  userid, date = draw(USERIDS), draw(DATES)
  parts = [('userid', userid), ('date', date)]
  shape = draw(st.integers(0, 7))
  if shape == 1:
    parts[0] = ('UserID', userid)
  elif shape == 2:
    parts.append(('device', '"phone"'))
  elif shape == 3:
    parts.append(('USERID', '"other"'))
  elif shape == 4:
    parts.append(('date', draw(DATES)))  # a duplicate key: the last wins
  elif shape == 5:
    parts.pop(draw(st.integers(0, 1)))
  draw(st.randoms()).shuffle(parts)
  return ('{%s}' % ', '.join('"%s": %s' % kv for kv in parts)).encode(
      'utf-8', 'surrogatepass')


def exact(message, zone, stamp_rows):
  fn = pm.ParseSigninFn(zone)
  fn.stamp_rows = stamp_rows
  fn.setup()
  fn._compiled = lambda m: None  # pylint: disable=protected-access
  fn.start_bundle()
  return fn.process(message)


def shown(outputs):
  out = []
  for output in outputs:
    value = getattr(output, 'value', output)
    if type(output).__name__ == 'TaggedOutput':  # a dead letter
      value = dict(value, timestamp=None)  # the time of the failure
    stamp = getattr(output, 'timestamp', None)
    out.append((type(output).__name__, strict(value),
                stamp and vars(stamp)))
  return out


@settings(max_examples=1500, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(signins(), st.sampled_from(ZONES), st.booleans(),
       st.sampled_from([None, Timestamp(1_700_000_000)]),
       st.sampled_from(['m-1', 'a\ud800b', '']))
def test_the_compiled_sign_in_is_the_exact_one_or_leaves_it(
    payload, zone, stamp_rows, published, message_id):
  message = PubsubMessage(payload, {}, message_id=message_id,
                          publish_time=published)
  fn = pm.ParseSigninFn(zone)
  fn.stamp_rows = stamp_rows
  fn.setup()
  try:
    fast = fn._compiled(message)  # pylint: disable=protected-access
  except Exception:  # pylint: disable=broad-except
    fast = None
  expected = shown(exact(message, zone, stamp_rows))
  if fast is not None:
    assert shown(fast) == expected, payload
  fn.start_bundle()
  assert shown(fn.process(message)) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**12).map(str) | st.text(
    'abcdefghijklmnopqrstuvwxyz0123456789-_', min_size=1, max_size=12),
       st.datetimes(datetime.datetime(1, 1, 1),
                    datetime.datetime(9999, 12, 31, 23, 59, 59),
                    timezones=st.just(UTC)),
       st.booleans())
def test_the_common_sign_in_takes_the_compiled_path(userid, when, naive):
  """As the publisher and the README write it: the date from isoformat()."""
  date = when.replace(tzinfo=None).isoformat() if naive else when.isoformat()
  payload = json.dumps({'userid': userid, 'date': date}).encode()
  fn = pm.ParseSigninFn()
  fn.setup()
  fast = fn._compiled(PubsubMessage(payload, {}, message_id='1'))  # pylint: disable=protected-access
  assert fast is not None
  assert fast[0].value['date'] == when
  assert fast[0].value['userid'] == userid
