"""A replay carries blocks of messages and rows (``transforms.blocks``), and
the schema-driven parse tries a fast conversion before the named one. Both
are speed only: these hold them to the per-message path.

- for random schemas and messages (hostile ones too), the fast conversion
  gives what the named one gives, or leaves it to the named one;
- a block in gives the same rows and dead letters as its messages one by
  one (a UDF's fan-out and drops too);
- blocks are bounded by count and bytes, in order, a huge message alone;
- on a real replay, rows + dead letters == lines, rows the warehouse
  refuses become sink_rejected dead letters, and a 10 MB line is too_large.
"""

import gc
import json
import os

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from tests.conftest import ROOT
from tests.conftest import duckdb_dicts
from tests.conftest import run_main
from tests.test_exact_properties import fields
from tests.test_exact_properties import messages
from transforms import blocks
from transforms import dead_letters
from transforms import exact_json
from transforms import json_messages
from transforms import json_rows
from transforms import schemas
from transforms import udf as udf_lib

SCHEMA = os.path.join(ROOT, 'data', 'orders.json')
with open(SCHEMA) as f:
  ORDER_FIELDS = json.load(f)
ORDERS = schemas.table_from_bigquery_schema(ORDER_FIELDS, 'orders')


def outcome(convert, payload):
  try:
    return 'row', convert(payload)
  except json_rows.Refused as e:
    return 'refused', e.reason, e.path, str(e)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_the_fast_conversion_gives_what_the_named_one_gives(data):
  schema_fields = data.draw(fields())
  unknown = data.draw(st.sampled_from(['ignore', 'reject']))
  converter = json_rows.RowConverter(schema_fields, unknown)
  for payload, _ in data.draw(st.lists(messages(schema_fields), min_size=1,
                                       max_size=6)):
    try:
      obj, _ = exact_json.loads(payload)
    except (exact_json.NotJson, exact_json.NotUtf8):
      continue
    named = outcome(lambda p: converter._convert(p, ''), obj)  # pylint: disable=protected-access
    try:
      fast = ('row', converter._fast(obj))  # pylint: disable=protected-access
    except (json_rows.Refused, json_rows._Slow):  # pylint: disable=protected-access
      fast = None  # left to the named one
    if fast is not None:
      assert fast == named
    assert outcome(converter, obj) == named


def per_message(fn, batch):
  fn.setup()
  fn.start_bundle()
  out = []
  for message in batch:
    out.extend(fn.process(message, Timestamp(0)))
  return out


def in_blocks(fn, batch, size):
  block_fn = blocks.ParseBlocksFn(fn)
  block_fn.setup()
  block_fn.start_bundle()
  out = []
  for block in blocks.message_blocks(batch, max_messages=size):
    out.extend(block_fn.process(block, Timestamp(0)))
  return out


def split(outputs):
  """Outputs -> (rows, dead letters without their time of failure)."""
  rows, dead = [], []
  for out in outputs:
    if isinstance(out, beam.pvalue.TaggedOutput):
      letter = dict(out.value)
      letter.pop('timestamp')
      letter['stacktrace'] = letter['stacktrace'] and letter[
          'stacktrace'].splitlines()[-1]
      dead.append(letter)
    elif isinstance(out, blocks.RowBlock):
      rows.extend(out)
    else:
      rows.append(getattr(out, 'value', out))
  return rows, dead


FAN_OUT = udf_lib.Udf('fan.py:fan', '''
def fan(order):
  if order.get('channel') == 'drop':
    return None
  if order.get('channel') == 'fail':
    raise ValueError('refused by the UDF')
  return [order] * (1 + len(order.get('items') or []) % 2)
''')


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_a_block_gives_what_its_messages_give_one_by_one(data):
  schema_fields = data.draw(fields())
  schema = schemas.table_from_bigquery_schema(
      [f.bigquery() for f in schema_fields], 't')
  batch = [PubsubMessage(p, {}, message_id=str(i)) for i, (p, _) in enumerate(
      data.draw(st.lists(messages(schema_fields), min_size=1, max_size=12)))]
  size = data.draw(st.integers(1, 5))
  one = split(per_message(json_messages.ParseJsonMessageFn(schema), batch))
  block = split(in_blocks(json_messages.ParseJsonMessageFn(schema), batch, size))
  assert block == one
  assert len(one[0]) + len(one[1]) == len(batch)


ORDER_LINES = [
    {'order_id': 'A-1', 'placed_at': '2026-11-28T09:15:00Z', 'channel': 'web',
     'items': [{'sku': 'tea', 'quantity': 2, 'price': '4.50'}]},
    {'order_id': 'A-2', 'placed_at': '2026-11-28T09:15:00Z', 'channel': 'drop'},
    {'order_id': 'A-3', 'placed_at': '2026-11-28T09:15:00Z', 'channel': 'fail'},
    {'order_id': 'A-4', 'placed_at': 'not a time', 'channel': 'web'},
    {'order_id': 'A-5', 'placed_at': '2026-11-28T09:15:00Z', 'channel': 'web',
     'items': [{'sku': 'a', 'quantity': 1, 'price': '1'},
               {'sku': 'b', 'quantity': 1, 'price': '2'}]},
]


def test_a_udf_fans_out_and_drops_the_same_in_blocks():
  batch = [PubsubMessage(json.dumps(o).encode(), {}, message_id='m%d' % i)
           for i, o in enumerate(ORDER_LINES)] + [
               PubsubMessage(b'not json', {}, message_id='bad')]
  one_fn = json_messages.ParseJsonMessageFn(ORDERS, udf=FAN_OUT)
  block_fn = json_messages.ParseJsonMessageFn(ORDERS, udf=FAN_OUT)
  one = split(per_message(one_fn, batch))
  block = split(in_blocks(block_fn, batch, 4))
  assert block == one
  ids = sorted(r['message_id'] for r in block[0])
  assert ids == ['m0#0', 'm0#1', 'm4']  # one item: 2 rows; two items: 1 row
  assert sorted((d['message_id'], d['reason']) for d in block[1]) == [
      ('bad', 'not_json'), ('m2', 'udf_error'), ('m3', 'bad_value')]
  assert block_fn._dropped == one_fn._dropped == 1  # pylint: disable=protected-access


def test_blocks_are_bounded_in_order_and_a_huge_message_is_alone():
  sizes = [10, 10, 10, 100, 10, 10]
  batch = [PubsubMessage(b'x' * n, {}, message_id=str(i))
           for i, n in enumerate(sizes)]
  got = list(blocks.message_blocks(  # a message holds its overhead too
      batch, max_messages=2, max_bytes=50 + 2 * blocks.MESSAGE_OVERHEAD))
  assert [[m.message_id for m in b] for b in got] == [
      ['0', '1'], ['2'], ['3'], ['4', '5']]
  assert all(type(b) is blocks.MessageBlock for b in got)  # pylint: disable=unidiomatic-typecheck
  assert list(blocks.message_blocks([])) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b'{"a": 1}', b'', b' ', b'\r', b'\t\r',
                                 b'x' * 40, b'\xff\xfe', b'a\rb', b'\r\r']),
                max_size=30),
       st.booleans(), st.integers(1, 64), st.integers(1, 5),
       st.integers(8, 200))
def test_a_file_is_read_in_pieces_as_it_is_line_by_line(
    lines, final_newline, piece_bytes, max_messages, max_bytes):
  """line_pieces and line_blocks give the messages a line-by-line read
  gives (each non-blank line, its end taken off, numbered from 1 with the
  blank lines counted), in blocks no larger than message_blocks makes,
  that cross a process whole."""
  import io
  from transforms import message_files
  content = b'\n'.join(lines) + (b'\n' if final_newline and lines else b'')
  expected = []
  for number, line in enumerate(io.BytesIO(content), start=1):
    data = line.rstrip(b'\r\n')
    if data and not data.isspace():
      expected.append((data, 'file:L:%d' % number,
                       {'source_file': 'L', 'line': str(number)}))
  pieces = list(message_files.line_pieces(io.BytesIO(content), piece_bytes))
  got_blocks = [b for datas, numbers, size in pieces
                for b in blocks.line_blocks('L', datas, numbers, size,
                                            max_messages, max_bytes)]
  for datas, _, size in pieces:
    assert size == sum(map(len, datas))
  got = [(m.data, m.message_id, m.attributes)
         for b in got_blocks for m in b.messages()]
  assert got == expected
  for block in got_blocks:
    assert type(block) is blocks.LineBlock and len(block)  # pylint: disable=unidiomatic-typecheck
    assert block.ids() == [m.message_id for m in block.messages()]
    assert len(block) <= max_messages
    assert len(block) == 1 or sum(map(len, block.datas)) <= max_bytes
    again = blocks.BlockCoder().decode(blocks.BlockCoder().encode(block))
    assert [(m.data, m.message_id, m.attributes) for m in again.messages()
            ] == [(m.data, m.message_id, m.attributes)
                  for m in block.messages()]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 120), max_size=20), st.integers(1, 5),
       st.integers(8, 200))
def test_archive_records_are_blocked_as_their_messages_would_be(
    sizes, max_messages, max_bytes):
  """record_blocks cuts an archive's records where message_blocks cuts
  their messages, and a RecordBlock's messages are archive.message's."""
  from transforms import archive
  records = [{'message_id': 'm%d' % i, 'data': b'x' * n, 'publish_time': None,
              'attributes': {'a': str(i)}, 'ordering_key': ''}
             for i, n in enumerate(sizes)]
  got = list(blocks.record_blocks(records, max_messages, max_bytes))
  expected = list(blocks.message_blocks(map(archive.message, records),
                                        max_messages, max_bytes))
  assert [[(m.data, m.message_id, m.attributes) for m in b.messages()]
          for b in got] == [[(m.data, m.message_id, m.attributes) for m in b]
                            for b in expected]
  for block in got:
    assert block.ids() == [m.message_id for m in block.messages()]
    again = blocks.BlockCoder().decode(blocks.BlockCoder().encode(block))
    assert again.records == block.records


def test_the_block_coder_round_trips_and_estimates_without_encoding():
  coder = blocks.BlockCoder()
  messages_ = blocks.MessageBlock(
      [PubsubMessage(b'\xff\x00', {'k': 'v'}, message_id='m1')])
  rows = blocks.RowBlock([{'a': 1}, {'a': None}])
  for value in (messages_, rows):
    back = coder.decode(coder.encode(value))
    assert type(back) is type(value) and list(back) == list(value)  # pylint: disable=unidiomatic-typecheck
  assert coder.estimate_size(messages_) == 2 + 64
  assert coder.estimate_size(rows) == 256
  assert beam.coders.registry.get_coder(blocks.RowBlock).__class__ is (
      blocks.BlockCoder)


def test_blocks_through_a_pipeline_rows_and_dead_letters():
  batch = [PubsubMessage(json.dumps(o).encode(), {}, message_id='m%d' % i)
           for i, o in enumerate(ORDER_LINES)]
  with TestPipeline() as p:
    parsed = (p | beam.Create(list(blocks.message_blocks(batch, 2)))
              | json_messages.ParseJsonMessages(ORDERS, blocks=True))
    rows = parsed.rows | beam.FlatMap(blocks.unblocked) | beam.Map(
        lambda r: r['message_id'])
    dead = parsed[dead_letters.DEAD_LETTERS] | beam.Map(
        lambda d: (d['message_id'], d['reason']))
    assert_that(rows, equal_to(['m0', 'm1', 'm2', 'm4']), label='rows')
    assert_that(dead, equal_to([('m3', 'bad_value')]), label='dead')


def test_a_replay_in_blocks_stores_every_line_once(tmp_path):
  """5,000 lines (three blocks), one in ten bad, one 10 MB, and rows the
  warehouse refuses (a CHECK the schema does not know): rows + dead letters
  == lines, and a second replay adds nothing."""
  import duckdb
  lines = []
  for i in range(5000):
    if i % 10 == 3:
      lines.append(b'{"order_id": "B-%d", "placed_at": 12' % i)  # not JSON
    elif i == 4321:
      lines.append(b'{"order_id": "' + b'x' * (10 << 20) + b'"}')
    else:
      lines.append(json.dumps({
          'order_id': ('LONG-%d' % i) if i % 97 == 0 else 'A-%d' % i,
          'placed_at': '2026-11-28T09:15:00Z', 'total': '%d.25' % i}).encode())
  source = tmp_path / 'orders.jsonl'
  source.write_bytes(b'\n'.join(lines) + b'\n')
  db = tmp_path / 'shop.duckdb'
  con = duckdb.connect(str(db))
  con.execute(ORDERS.duckdb_ddl().replace(
      '"order_id" VARCHAR NOT NULL',
      '"order_id" VARCHAR NOT NULL CHECK (order_id NOT LIKE \'LONG-%\')'))
  con.close()
  for _ in range(2):
    result = run_main('pubsub_to_bigquery', '--schema', SCHEMA, '--input_file',
                      source, '--warehouse', db)
    assert result.returncode == 0, result.stderr
  rows = duckdb_dicts(db, 'SELECT order_id, total FROM orders')
  dead = duckdb_dicts(db, 'SELECT message_id, reason FROM '
                      'orders_error_records')
  long_ids = [i for i in range(5000) if i % 97 == 0 and i % 10 != 3]
  assert len(rows) + len(dead) == 5000
  reasons = sorted({d['reason'] for d in dead})
  assert reasons == ['not_json', 'sink_rejected', 'too_large']
  assert sum(d['reason'] == 'sink_rejected' for d in dead) == len(long_ids)
  assert sum(d['reason'] == 'too_large' for d in dead) == 1
  by_id = {r['order_id']: r['total'] for r in rows}
  assert str(by_id['A-5']) == '5.250000000'  # exact, as NUMERIC keeps it


def test_a_replay_leaves_the_collector_as_it_found_it(tmp_path):
  from pipelines import pubsub_to_bigquery
  source = tmp_path / 'o.jsonl'
  source.write_text(json.dumps({'order_id': 'A', 'placed_at': 0}) + '\n')
  pubsub_to_bigquery.run(['--schema', SCHEMA, '--input_file', str(source),
                          '--warehouse', str(tmp_path / 'w.duckdb')])
  assert gc.get_freeze_count() == 0 and gc.isenabled()


def test_sign_ins_in_blocks_give_what_they_give_one_by_one():
  from transforms import signin_messages
  payloads = [b'{"userid": "1", "date": "2017-10-17T20:57:17Z"}', b'{}',
              b'\xff', b'{"userid": 7, "date": 1508273837}']
  batch = [PubsubMessage(p, {}, message_id=str(i))
           for i, p in enumerate(payloads)]
  one_fn = signin_messages.ParseSigninFn()
  one_fn.setup()
  one_fn.start_bundle()
  one = split([o for m in batch for o in one_fn.process(m)])
  block = split(in_blocks(signin_messages.ParseSigninFn(), batch, 3))
  assert block == one and len(one[0]) == 2 and len(one[1]) == 2


def test_an_archive_s_blocks_are_bounded_by_what_records_hold_not_payloads():
  """A record of a few bytes of payload may hold ~128 KB of attributes
  (Pub/Sub's limit): blocks are cut by what each record holds."""
  records = [{'message_id': 'm%d' % i, 'publish_time': None, 'data': b'{}',
              'ordering_key': '', 'attributes': {'k%d' % j: 'v' * 1000
                                                 for j in range(100)}}
             for i in range(200)]
  got = list(blocks.record_blocks(records))
  assert sum(len(b) for b in got) == 200
  assert [r['message_id'] for b in got for r in b.records] == [
      'm%d' % i for i in range(200)]
  assert len(got) > 4 and all(b.nbytes <= blocks.BLOCK_BYTES for b in got)
  odd = [{'data': b'{}', 'message_id': None, 'attributes': None}]
  assert [len(b) for b in blocks.record_blocks(odd)] == [1]


BLOW_UP = udf_lib.Udf('blow.py:blow', '''
def blow(order):
  return [dict(order, channel='x' * 20000, order_id='%s-%d' % (
      order['order_id'], i)) for i in range(50)]
''')


def test_a_udf_blocks_rows_are_counted_and_cut_by_what_the_udf_made():
  """A replay's memory bound counts a block's rows by what the UDF's
  answers brought, and cuts them at BLOCK_BYTES: 10 small messages (~6 KB
  held) fanned out into 500 rows of 20 KB (~10 MB) are two RowBlocks,
  in order, each at most BLOCK_BYTES and one message's answer."""
  batch = [PubsubMessage(json.dumps(ORDER_LINES[0]).encode(), {},
                         message_id='m%d' % i) for i in range(10)]
  fn = json_messages._ParseJsonBlocksFn(  # pylint: disable=protected-access
      json_messages.ParseJsonMessageFn(ORDERS, udf=BLOW_UP))
  fn.setup()
  fn.start_bundle()
  block = next(blocks.message_blocks(batch))
  assert len(block) == 10 and blocks.held_bytes(block) < 10000
  got = list(fn.process(block, Timestamp(0)))
  assert {type(b) for b in got} == {blocks.RowBlock}
  assert [r['message_id'] for b in got for r in b] == [
      'm%d#%d' % (m, i) for m in range(10) for i in range(50)]
  answer = 50 * 20000  # one message's rows
  assert len(got) == 2  # 4 MB is passed at the fifth message
  assert all(b.nbytes <= blocks.BLOCK_BYTES + 1.2 * answer for b in got)
  assert 10 * answer <= sum(b.nbytes for b in got) < 1.2 * 10 * answer
  again = list(fn.process(block, Timestamp(0)))  # each block its own count
  assert [b.nbytes for b in again] == [b.nbytes for b in got]


def test_a_replay_s_udf_blocks_cut_amid_drops_and_fan_outs_give_what_messages_give(
    monkeypatch):
  """The replay's UDF block path (``_ParseJsonBlocksFn``), its rows cut at
  a tiny BLOCK_BYTES so that cuts fall amid drops, fan-outs, UDF errors and
  dead letters: the same rows, in order, and dead letters as message by
  message, each message once."""
  monkeypatch.setattr(blocks, 'BLOCK_BYTES', 1)
  batch = [PubsubMessage(json.dumps(o).encode(), {}, message_id='m%d' % i)
           for i, o in enumerate(ORDER_LINES * 3)] + [
               PubsubMessage(b'not json', {}, message_id='bad')]
  one = split(per_message(json_messages.ParseJsonMessageFn(
      ORDERS, udf=FAN_OUT), batch))
  fn = json_messages._ParseJsonBlocksFn(  # pylint: disable=protected-access
      json_messages.ParseJsonMessageFn(ORDERS, udf=FAN_OUT))
  fn.setup()
  fn.start_bundle()
  got = []
  for block in blocks.message_blocks(batch, max_messages=7):
    got.extend(fn.process(block, Timestamp(0)))
  row_blocks = [b for b in got if type(b) is blocks.RowBlock]  # pylint: disable=unidiomatic-typecheck
  assert len(row_blocks) > 3 and all(b.nbytes > 0 for b in row_blocks)
  assert split(got) == one
  assert fn._fn._dropped == 3  # pylint: disable=protected-access
