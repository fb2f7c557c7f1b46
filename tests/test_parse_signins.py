"""The parse/validate transform alone: every reason code, every accepted date form."""

import datetime
import json

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from transforms import dead_letters
from transforms import event_time
from transforms import signin_messages as pm

UTC = datetime.timezone.utc


def msg(data, attributes=None, message_id='m-1', publish_time=None):
  return PubsubMessage(data, attributes or {}, message_id=message_id,
                       publish_time=publish_time)


def parse(data, **kwargs):
  return pm.parse_signin(msg(data), **kwargs)


def reason_of(data, **kwargs):
  with pytest.raises(pm.Invalid) as raised:
    parse(data, **kwargs)
  return raised.value.reason


@pytest.mark.parametrize('date, expected', [
    ('2017-10-17T20:57:17.338320', datetime.datetime(2017, 10, 17, 20, 57, 17, 338320, UTC)),
    ('2017-10-17T20:57:17Z', datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    ('2017-10-17T22:57:17+02:00', datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    ('2017-10-17T15:57:17.5-05:00', datetime.datetime(2017, 10, 17, 20, 57, 17, 500000, UTC)),
    ('2017-10-17 20:57:17', datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    ('2017-10-17', datetime.datetime(2017, 10, 17, tzinfo=UTC)),
    ('  2017-10-17T20:57:17Z ', datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    (1508273837, datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)),
    (1508273837.25, datetime.datetime(2017, 10, 17, 20, 57, 17, 250000, UTC)),
    (1508273837250, datetime.datetime(2017, 10, 17, 20, 57, 17, 250000, UTC)),
    (0, datetime.datetime(1970, 1, 1, tzinfo=UTC)),
    (-86400, datetime.datetime(1969, 12, 31, tzinfo=UTC)),
    (99999999999, datetime.datetime(5138, 11, 16, 9, 46, 39, tzinfo=UTC)),
    (100000000000, datetime.datetime(1973, 3, 3, 9, 46, 40, tzinfo=UTC)),
])
def test_accepted_dates_become_exact_utc(date, expected):
  row = parse(('{"userid": "93234234", "date": %s}' % (
      '"%s"' % date if isinstance(date, str) else date)).encode())
  assert row['date'] == expected
  assert row['date'].tzinfo == UTC
  assert row['userid'] == '93234234'


def test_naive_dates_use_the_default_timezone():
  paris = pm.resolve_timezone('Europe/Paris')
  row = parse(b'{"userid": "u", "date": "2017-10-17T22:57:17"}', default_tz=paris)
  assert row['date'] == datetime.datetime(2017, 10, 17, 20, 57, 17, tzinfo=UTC)
  # An explicit offset wins over the default zone.
  row = parse(b'{"userid": "u", "date": "2017-10-17T22:57:17Z"}', default_tz=paris)
  assert row['date'] == datetime.datetime(2017, 10, 17, 22, 57, 17, tzinfo=UTC)


@pytest.mark.parametrize('userid, expected', [
    ('"93234234"', '93234234'), ('"  padded  "', 'padded'), ('42', '42'),
    ('-7', '-7'), ('"ünïcode"', 'ünïcode')])
def test_accepted_userids(userid, expected):
  row = parse(('{"userid": %s, "date": "2017-10-17"}' % userid).encode())
  assert row['userid'] == expected


def test_other_fields_are_ignored_and_ids_kept():
  published = datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
  row = pm.parse_signin(msg(
      b'{"userid": "u", "date": "2017-10-17", "extra": [1, 2]}',
      message_id='abc', publish_time=published))
  assert row == {'userid': 'u', 'date': datetime.datetime(2017, 10, 17, tzinfo=UTC),
                 'message_id': 'abc', 'publish_time': published}


@pytest.mark.parametrize('payload, reason', [
    (b'\xff\xfe{"userid": "u"}', 'not_utf8'),
    (b'{"userid": "u", "date": ', 'not_json'),
    (b'', 'not_json'),
    (b'[' * 100000 + b']' * 100000, 'not_json'),
    (b'["u", "2017-10-17"]', 'not_object'),
    (b'"just a string"', 'not_object'),
    (b'null', 'not_object'),
    (b'{"date": "2017-10-17"}', 'missing_userid'),
    (b'{"userid": null, "date": "2017-10-17"}', 'missing_userid'),
    (b'{"userid": "   ", "date": "2017-10-17"}', 'bad_userid'),
    (b'{"userid": true, "date": "2017-10-17"}', 'bad_userid'),
    (b'{"userid": 1.5, "date": "2017-10-17"}', 'bad_userid'),
    (b'{"userid": {"id": 1}, "date": "2017-10-17"}', 'bad_userid'),
    (b'{"userid": "u"}', 'missing_date'),
    (b'{"userid": "u", "date": null}', 'missing_date'),
    (b'{"userid": "u", "date": "yesterday"}', 'bad_date'),
    (b'{"userid": "u", "date": "17/10/2017"}', 'bad_date'),
    (b'{"userid": "u", "date": "2017-13-45"}', 'bad_date'),
    (b'{"userid": "u", "date": true}', 'bad_date'),
    (b'{"userid": "u", "date": ["2017-10-17"]}', 'bad_date'),
    (b'{"userid": "u", "date": NaN}', 'not_json'),  # not JSON (RFC 8259)
    (b'{"userid": "u", "date": Infinity}', 'not_json'),
    (b'{"userid": "u", "date": "0001-01-01T00:30:00+01:00"}', 'date_out_of_range'),
    (b'{"userid": "u", "date": "9999-12-31T23:30:00-01:00"}', 'date_out_of_range'),
    (b'{"userid": "u", "date": 1e300}', 'date_out_of_range'),
    (b'{"userid": "u", "date": -1e17}', 'date_out_of_range'),
])
def test_each_bad_message_gets_its_reason(payload, reason):
  assert reason_of(payload) == reason


def test_too_large_is_checked_first_and_keeps_a_prefix():
  payload = b'{"userid": "u", "date": "2017-10-17", "pad": "' + b'x' * 5000 + b'"}'
  assert reason_of(payload, max_bytes=4096) == 'too_large'
  letter = dead_letters.dead_letter(msg(payload, {'k': 'v'}), 'too_large', 'big')
  assert letter['payloadBytes'] == payload[:dead_letters.PAYLOAD_PREFIX_BYTES]
  assert letter['payloadString'] == payload[:dead_letters.PAYLOAD_PREFIX_BYTES].decode()
  assert letter['attributes'] == [{'key': 'k', 'value': 'v'}]
  assert letter['reason'] == 'too_large' and letter['message_id'] == 'm-1'


def test_dead_letter_keeps_raw_bytes_and_readable_text():
  letter = dead_letters.dead_letter(msg(b'ab\xffc'), 'not_utf8', 'bad bytes')
  assert letter['payloadBytes'] == b'ab\xffc'
  assert letter['payloadString'] == 'ab\ufffdc'
  assert letter['errorMessage'] == 'bad bytes'
  assert letter['timestamp'].tzinfo is not None
  assert letter['stacktrace'] is None


def test_transform_splits_rows_and_dead_letters_with_event_time():
  messages = [
      msg(b'{"userid": "a", "date": "2017-10-17T20:57:17Z"}', message_id='1'),
      msg(b'not json', message_id='2'),
      msg(b'{"userid": "b", "date": 0}', message_id='3'),
  ]
  with TestPipeline(runner='FnApiRunner') as p:
    parsed = p | beam.Create(messages) | pm.ParseSignins()
    ids = parsed.rows | 'RowIds' >> beam.Map(
        lambda row, ts=beam.DoFn.TimestampParam: (
            row['message_id'], ts.to_utc_datetime(has_tz=True) == row['date']))
    reasons = parsed[pm.DEAD_LETTERS] | 'Reasons' >> beam.Map(
        lambda d: (d['message_id'], d['reason']))
    assert_that(ids, equal_to([('1', True), ('3', True)]), label='rows')
    assert_that(reasons, equal_to([('2', 'not_json')]), label='dead')


def test_unknown_timezone_fails_at_construction():
  with pytest.raises(ValueError):
    pm.ParseSignins(default_timezone='Mars/Olympus_Mons')


@settings(max_examples=500, deadline=None)
@given(data=st.one_of(
    st.binary(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
            st.sampled_from(['userid', 'date', 'x']), inner, max_size=3),
        max_leaves=8).map(lambda v: __import__('json').dumps(v).encode())),
       attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                  max_size=3))
def test_any_message_gives_exactly_one_output_and_never_raises(data, attributes):
  fn = pm.ParseSigninFn(max_message_bytes=200)
  fn.setup()
  outputs = list(fn.process(msg(data, attributes)))
  assert len(outputs) == 1
  out = outputs[0]
  if isinstance(out, beam.pvalue.TaggedOutput):
    assert out.tag == pm.DEAD_LETTERS
    assert out.value['reason'] in pm.REASONS
    assert out.value['payloadBytes'] == data[:len(out.value['payloadBytes'])]
  else:
    row = out.value
    assert row['userid'] and row['userid'] == row['userid'].strip()
    assert row['date'].tzinfo == UTC


_DIGITS = st.integers(0, 9).map(str)


@settings(max_examples=2000, deadline=None)
@given(year=st.integers(1, 9999), month=st.integers(0, 13), day=st.integers(0, 32),
       time=st.one_of(st.none(), st.tuples(
           st.sampled_from('T '), st.integers(0, 25), st.integers(0, 60),
           st.one_of(st.none(), st.integers(0, 61)),
           st.one_of(st.none(), st.text('0123456789', min_size=1, max_size=6)))),
       zone=st.one_of(st.none(), st.just('Z'), st.tuples(
           st.sampled_from('+-'), st.integers(0, 25), st.integers(0, 60))))
def test_fast_date_path_agrees_with_dateutil(year, month, day, time, zone):
  text = '%04d-%02d-%02d' % (year, month, day)
  if time:
    sep, hour, minute, second, fraction = time
    text += '%s%02d:%02d' % (sep, hour, minute)
    if second is not None:
      text += ':%02d' % second
      if fraction:
        text += '.' + fraction
  if zone == 'Z':
    text += 'Z'
  elif zone:
    text += '%s%02d:%02d' % zone
  try:
    expected = pm.date_parser.isoparse(text)
  except (ValueError, OverflowError) as e:
    expected = type(e)
  try:
    got = pm.parse_iso8601(text)
  except (ValueError, OverflowError) as e:
    got = type(e)
  if isinstance(expected, type) or isinstance(got, type):
    assert isinstance(got, type) == isinstance(expected, type), (text, got, expected)
  else:
    assert got == expected and got.utcoffset() == expected.utcoffset(), text


@pytest.mark.parametrize('text, expected', [
    ('Tue, 17 Oct 2017 20:57:17 GMT', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('Tue, 17 Oct 2017 20:57:17 UT', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('Tue, 17 Oct 2017 20:57:17 UTC', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('17 Oct 2017 20:57:17 +0200', datetime.datetime(2017, 10, 17, 18, 57, 17)),
    ('Tue, 17 Oct 2017 15:57:17 -0500', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('Tue, 17 Oct 2017 15:57:17 EST', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('Tue, 17 Oct 2017 13:57:17 PDT', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('Tue, 17 Oct 2017 20:57 GMT', datetime.datetime(2017, 10, 17, 20, 57)),
    ('tue, 17 oct 2017 20:57:17 gmt', datetime.datetime(2017, 10, 17, 20, 57, 17)),
    ('  Tue, 17 Oct 2017 20:57:17 GMT  ', datetime.datetime(2017, 10, 17, 20, 57, 17)),
])
def test_rfc2822_dates_with_a_zone_are_exact_utc(text, expected):
  assert pm.parse_date(text) == expected.replace(tzinfo=UTC)


@pytest.mark.parametrize('text', [
    '10/11/12', 'next tuesday', 'Tue, 17 Oct 2017 20:57:17',  # no zone
    'Tue, 17 Oct 2017 20:57:17 -0000',  # RFC 2822's "zone unknown"
    'Tue, 17 Oct 2017 20:57:17 XYZ', 'Wed, 17 Oct 2017 20:57:17 GMT',
    'Tue, 31 Feb 2017 20:57:17 GMT', 'Tue, 17 Oct 2017 25:57:17 GMT',
])
def test_ambiguous_or_wrong_dates_stay_bad_date(text):
  with pytest.raises(pm.Invalid) as e:
    pm.parse_date(text)
  assert e.value.reason == 'bad_date'


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime.datetime(1, 1, 1),
                    max_value=datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)))
def test_event_timestamp_is_beams_own_conversion(when):
  from apache_beam.utils.timestamp import Timestamp
  when = when.replace(tzinfo=datetime.timezone.utc)
  assert event_time.utc_timestamp(when) == Timestamp.from_utc_datetime(when)


@settings(max_examples=2000, deadline=None)
@given(st.one_of(
    st.integers(0, (1 << 31) * 10**6 - 1),
    st.integers(-62135596800 * 10**6, 253402300799999999),
    st.integers(0, 10**6).map(lambda f: (1 << 31) * 10**6 - f),
    st.integers(-2**31, 2**31 - 1).map(lambda s: s * 10**6 + 999999)),
       st.sampled_from([datetime.timezone.utc, datetime.timezone(
           datetime.timedelta(hours=5, minutes=30)), None]))
def test_a_stamp_is_the_exact_microsecond_of_its_time(micros, zone):
  """``stamped`` builds Beam's stamp by hand (one call, not three): the
  same stamp as Beam's own constructor, every microsecond, edges included,
  whatever the zone of the datetime; a naive datetime is refused."""
  from apache_beam.transforms.window import TimestampedValue
  from apache_beam.utils.timestamp import Timestamp
  when = event_time.calendar_datetime(micros)
  if zone is not None:
    if micros < 253402200000 * 10**6:  # +05:30 of the last hours is year 10000
      when = when.astimezone(zone)
  else:
    when = when.replace(tzinfo=None)  # naive: refused, never guessed
    with pytest.raises(TypeError):
      event_time.stamped('v', when)
    return
  got = event_time.stamped('v', when)
  assert got == TimestampedValue('v', Timestamp(micros=micros))
  assert vars(got.timestamp) == vars(Timestamp(micros=micros))


@settings(max_examples=2000, deadline=None)
@given(st.integers(-62135596800 * 10**6, 253402300799999999))
def test_a_global_window_stamp_is_what_beam_makes_of_a_timestamped_value(
    micros):
  """``in_global_window`` builds what Beam's runner makes of a
  TimestampedValue output from the global window (a WindowedValue in
  GlobalWindows' window), every microsecond."""
  from apache_beam.transforms.window import GlobalWindow
  from apache_beam.transforms.window import GlobalWindows
  from apache_beam.utils.timestamp import Timestamp
  from apache_beam.utils.windowed_value import WindowedValue
  when = event_time.calendar_datetime(micros)
  got = event_time.in_global_window('v', when)
  stamp = Timestamp(micros=micros)
  assert got == WindowedValue('v', stamp, (GlobalWindow(),))
  assert tuple(got.windows) == tuple(GlobalWindows().assign(None))
  assert got.timestamp == stamp and got.timestamp.micros == micros
  assert got.pane_info == WindowedValue('v', stamp, ()).pane_info


ORDER_SCHEMA = [{'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
                {'name': 'placed_at', 'type': 'TIMESTAMP', 'mode': 'REQUIRED'}]


@pytest.mark.parametrize('windowed', [False, True])
def test_rows_are_stamped_and_windowed_as_beam_windows_their_time(windowed):
  """A row's stamp in a pipeline: its event time, in the global window when
  the messages are (the parse then makes Beam's WindowedValue itself), and
  in the window of its time when they are windowed (Beam assigns it)."""
  from apache_beam.transforms import window
  from apache_beam.transforms.util import Reify
  from transforms import json_messages
  from transforms import schemas
  schema = schemas.table_from_bigquery_schema(ORDER_SCHEMA, 'orders')
  times = ['2026-11-28T09:15:00.123456Z', '1970-01-01T00:00:00Z',
           '2026-11-28T10:59:59.999999+01:00', '2017-10-17 20:57:17.338320']
  orders = [PubsubMessage(json.dumps(
      {'order_id': 'A-%d' % i, 'placed_at': t}).encode(), {},
      message_id='m%d' % i) for i, t in enumerate(times)]
  signins = [PubsubMessage(json.dumps(
      {'userid': '%d' % i, 'date': t}).encode(), {}, message_id='s%d' % i)
      for i, t in enumerate(times)]
  micros = [1795857300123456, 0, 1795859999999999, 1508273837338320]

  def expected(prefix):
    return [('%s%d' % (prefix, i), m, window.IntervalWindow(
        m // 3600_000000 * 3600, m // 3600_000000 * 3600 + 3600) if windowed
        else window.GlobalWindow()) for i, m in enumerate(micros)]

  def stamps(rows, name):
    return rows | 'Stamps ' + name >> Reify.Window() | 'Keyed ' + name >> (
        beam.Map(lambda r: (r[0]['message_id'], r[1].micros, r[2])))

  with TestPipeline() as p:
    inputs = []
    for name, messages in (('orders', orders), ('signins', signins)):
      pc = p | 'Create ' + name >> beam.Create(messages)
      if windowed:
        pc = pc | 'Window ' + name >> beam.WindowInto(window.FixedWindows(3600))
      inputs.append(pc)
    order_rows = (inputs[0] | 'Parse orders' >> json_messages.ParseJsonMessages(
        schema, event_time_field='placed_at'))['rows']
    signin_rows = (inputs[1] | 'Parse signins' >> pm.ParseSignins())['rows']
    assert_that(stamps(order_rows, 'orders'), equal_to(expected('m')),
                label='orders')
    assert_that(stamps(signin_rows, 'signins'), equal_to(expected('s')),
                label='signins')


def test_one_transform_applied_to_windowed_and_global_inputs_stamps_each_as_its_own():
  """The window choice is made per application: one ParseJsonMessages
  applied to a windowed input and then to a global one still puts the
  windowed input's rows in the windows of their times."""
  from apache_beam.transforms import window
  from apache_beam.transforms.util import Reify
  from transforms import json_messages
  from transforms import schemas
  schema = schemas.table_from_bigquery_schema(ORDER_SCHEMA, 'orders')
  parse = json_messages.ParseJsonMessages(schema, event_time_field='placed_at')
  message = PubsubMessage(b'{"order_id": "A", "placed_at": '
                          b'"2020-01-01T00:00:30Z"}', {}, message_id='m')
  with TestPipeline() as p:
    windowed = (p | 'Windowed' >> beam.Create([message])
                | beam.WindowInto(window.FixedWindows(60)))
    in_windows = (windowed | 'Parse windowed' >> parse)['rows']
    in_global = (p | 'Global' >> beam.Create([message])
                 | 'Parse global' >> parse)['rows']
    for name, rows, expected in (
        ('windowed', in_windows, window.IntervalWindow(1577836800, 1577836860)),
        ('global', in_global, window.GlobalWindow())):
      assert_that(rows | 'Windows ' + name >> Reify.Window()
                  | 'Window ' + name >> beam.Map(lambda r: (r[1].micros, r[2])),
                  equal_to([(1577836830 * 10**6, expected)]), label=name)
