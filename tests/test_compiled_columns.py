"""The columnar parse of a replay's blocks (``transforms.compiled_columns``,
``ParseJsonMessageFn.column_outputs``) is speed only: on random schemas and
hostile messages, a block's table holds exactly the values the exact
path's rows become in Arrow (type for type, -0.0 apart from 0.0), in
message order, with the same dead letters and counts; and DuckDB's sink
stores a ColumnBlock as it stores the same rows (first row of a key kept,
stored keys skipped, refused rows found by halving, with their rows)."""

import json
import pickle

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.utils.timestamp import Timestamp
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from storage.duckdb_files import DuckDBFiles
from tests.test_compiled_rows import ORDERS
from tests.test_compiled_rows import canonical_object
from tests.test_compiled_rows import compiled_outcome
from tests.test_compiled_rows import exact_outcome
from tests.test_compiled_rows import edged
from tests.test_compiled_rows import strict
from tests.test_exact_properties import fields
from tests.test_exact_properties import messages
from tests.test_replay_blocks import split
from transforms import blocks
from transforms import dead_letters
from transforms import exact_json
from transforms import compiled_rows
from transforms import json_messages
from transforms import json_rows
from transforms import schemas

ID = schemas.Field('message_id', 'STRING')


def table_schema(schema_fields):
  return schemas.TableSchema('t', tuple(schema_fields) + (ID,),
                             primary_key=('message_id',))


def batch_of(payloads):
  return [PubsubMessage(p, {'k': 'v'}, message_id='m%d' % i)
          for i, p in enumerate(payloads)]


def exact_fn(schema):
  """The parse step with no compiled path: every message exact."""
  fn = json_messages.ParseJsonMessageFn(schema)
  fn.stamp_rows = False
  fn.setup()
  fn._compiled = None  # pylint: disable=protected-access
  fn.start_bundle()
  return fn


def columnar(schema, batch, exact_path=True):
  """(outputs of column_outputs on one block, the step's fn); ``batch`` a
  list of messages (a MessageBlock of them) or a LineBlock; without
  ``exact_path``, a message left to it fails the call."""
  fn = json_messages.ParseJsonMessageFn(schema)
  fn.stamp_rows = False
  fn.setup()
  fn.start_bundle()
  if not exact_path:
    fn._one = None  # pylint: disable=protected-access
  compiled = fn.compile_columns()
  assert compiled is not None
  block = batch if isinstance(batch, blocks.LazyBlock) else (
      blocks.MessageBlock(batch))
  return fn.column_outputs(block, Timestamp(0), compiled), fn


def strict_table(table):
  return [strict(row) for row in table.to_pylist()]


def same_as_exact(schema, batch):
  """The columnar outputs of ``batch`` (messages or a LineBlock) against
  the exact path's, message by message."""
  outs, fn = columnar(schema, batch)
  messages_ = blocks.messages_of(batch)
  exact = exact_fn(schema)
  expected = [o for m in messages_ for o in exact.process(m, Timestamp(0))]
  rows, dead = split(expected)
  column_blocks = [o for o in outs if type(o) is blocks.ColumnBlock]  # pylint: disable=unidiomatic-typecheck
  got_rows, got_dead = split([o for o in outs if o not in column_blocks])
  assert got_dead == dead
  assert len(column_blocks) <= 1
  if column_blocks:
    block, = column_blocks
    assert got_rows == []
    assert block.table.schema == schema.arrow_schema()
    assert strict_table(block.table) == strict_table(
        schema.to_arrow_table(rows))
    assert [strict(r) for r in block.rows()] == [strict(r) for r in rows]
    assert [dead_letters.stored_id(m.message_id) for m in block.messages
           ] == [r['message_id'] for r in rows]
  else:  # Arrow took no column (or no row): the rows as the row path has
    assert [strict(r) for r in got_rows] == [strict(r) for r in rows]
  assert (fn._seen, fn._rows) == (len(messages_), len(rows))  # pylint: disable=protected-access
  return outs


def records_of(payloads):
  """A RecordBlock of ``payloads`` as an archive's records (ids empty, not
  ASCII, with a lone surrogate, plain, or a number)."""
  ids = ['', 'caf\u00e9', '\udcff', 'm']
  return blocks.RecordBlock([
      {'message_id': (ids[i % 5] + str(i) if i % 5 else '') if i % 5 < 4
                     else i,  # a hostile archive's number: stored as text
       'data': p, 'publish_time': None, 'attributes': {'k': 'v'},
       'ordering_key': ''}
      for i, p in enumerate(payloads)])


def lines_of(payloads, location='/tmp/caf\u00e9\udcff.jsonl'):
  """A LineBlock of ``payloads``: lines 1, 3, 5, ... of a file (by default
  one whose name is not ASCII: the ids are stored as the row path stores
  them)."""
  return blocks.LineBlock(location, list(payloads),
                          list(range(1, 2 * len(payloads), 2)))


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.data())
def test_a_block_s_columns_are_the_exact_rows_in_arrow(data):
  schema_fields = data.draw(fields())
  schema = table_schema(schema_fields)
  payloads = data.draw(st.lists(
      edged(schema_fields) | messages(schema_fields).map(lambda m: m[0]),
      min_size=1, max_size=12))
  same_as_exact(schema, batch_of(payloads))
  same_as_exact(schema, lines_of(payloads))
  same_as_exact(schema, lines_of(payloads, '/tmp/orders.jsonl'))
  same_as_exact(schema, records_of(payloads))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(st.lists(edged(ORDERS.fields) | messages(ORDERS.fields).map(
    lambda m: m[0]), min_size=1, max_size=30))
def test_orders_blocks_are_the_exact_rows_in_arrow(payloads):
  same_as_exact(ORDERS, batch_of(payloads))
  same_as_exact(ORDERS, lines_of(payloads))
  same_as_exact(ORDERS, records_of(payloads))


def test_canonical_orders_take_the_columns_and_hostile_ones_are_named():
  """The sample's orders the compiled row path takes are one ColumnBlock,
  none left to the exact path; hostile messages beside them are its dead
  letters."""
  with open('data/orders_sample.jsonl', 'rb') as f:
    lines = [line.rstrip(b'\n') for line in f if line.strip()]
  rows = compiled_rows.compile_rows(ORDERS.fields[:-1])
  lines = [line for line in lines if compiled_outcome(rows, line)] + [
      json.dumps({  # the benchmarks' order
          'order_id': 'A-%d' % i, 'placed_at': '2026-11-28T09:15:%02dZ' % i,
          'customer': {'id': i, 'email': 'c%d@example.com' % i},
          'items': [{'sku': 'tea', 'quantity': 2, 'price': '3.5'}] * (i % 3),
          'total': '21.50', 'paid': True, 'delivery_date': '2026-12-01',
          'extra': {'gift': i % 2 == 0},
      }).encode() for i in range(20)]
  assert len(lines) >= 22
  for block in (batch_of(lines), lines_of(lines), records_of(lines),
                lines_of(lines, '/tmp/orders.jsonl')):
    outs, _ = columnar(ORDERS, block, exact_path=False)
    assert [type(o) for o in outs] == [blocks.ColumnBlock]
    assert len(outs[0]) == len(lines)
    same_as_exact(ORDERS, block)
  hostile = lines[:3] + [
      b'{"order_id": "\\ud800"}', b'not json', b'{"Order_ID": "x"}',
      lines[0].replace(b'Z"', b'.1234567Z"', 1), b'\xff',
      b'{"order_id": "A", "placed_at": "2026-11-28T09:15:00Z", "total": 1e400}']
  outs = same_as_exact(ORDERS, batch_of(hostile))
  column_block, = [o for o in outs if type(o) is blocks.ColumnBlock]  # pylint: disable=unidiomatic-typecheck
  assert len(column_block) >= 3


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_canonical_messages_of_any_schema_take_the_columns(data):
  """What a well-behaved sender writes is read as columns, none of it left
  to the exact path (so the columns are the path a replay takes)."""
  schema_fields = data.draw(fields())
  schema = table_schema(schema_fields)
  converter = json_rows.RowConverter(schema_fields)
  payloads = []
  for obj in data.draw(st.lists(canonical_object(schema_fields), min_size=1,
                                max_size=5)):
    payload = json.dumps(obj, ensure_ascii=data.draw(st.booleans())).encode()
    if exact_outcome(converter, payload)[0] == 'row':  # else a refused value
      payloads.append(payload)
  if not payloads:
    return
  outs, _ = columnar(schema, batch_of(payloads), exact_path=False)
  assert [type(o) for o in outs] == [blocks.ColumnBlock]
  assert len(outs[0]) == len(payloads)


def test_a_column_block_crosses_a_process_and_reads_its_rows_back():
  with open('data/orders_sample.jsonl', 'rb') as f:
    lines = [line.rstrip(b'\n') for line in f if line.strip()]
  outs, _ = columnar(ORDERS, batch_of(lines))
  block, = [o for o in outs if type(o) is blocks.ColumnBlock]  # pylint: disable=unidiomatic-typecheck
  assert len(block) >= 2
  coder = blocks.BlockCoder()
  again = coder.decode(coder.encode(block))
  assert type(again) is blocks.ColumnBlock and again.rows_of is None  # pylint: disable=unidiomatic-typecheck
  assert again.table.equals(block.table)
  assert [m.message_id for m in again.messages] == [
      m.message_id for m in block.messages]
  assert again.table.to_pylist() == again.rows()
  assert pickle.loads(pickle.dumps(block.table)).equals(block.table)


# The sink: a ColumnBlock is stored as its rows would be.
N = schemas.table_from_bigquery_schema(
    [{'name': 'n', 'type': 'INTEGER', 'mode': 'REQUIRED'}], 't')


def n_block(numbers, ids=None):
  """A ColumnBlock of rows n with ids (default m<n>), its rows_of giving
  them back as dicts."""
  rows = [{'n': n, 'message_id': i} for n, i in zip(
      numbers, ids or ['m%d' % n for n in numbers])]
  messages = [PubsubMessage(b'{}', {}, message_id=r['message_id'])
              for r in rows]
  by_id = {id(m): r for m, r in zip(messages, rows)}
  return blocks.ColumnBlock(
      N.to_arrow_table(rows), messages,
      rows_of=lambda ms: [dict(by_id[id(m)]) for m in ms])


def stored_n(db):
  import duckdb
  DuckDBFiles.close(db)
  con = duckdb.connect(db, read_only=True)
  try:
    return sorted(con.execute('SELECT n, message_id FROM t').fetchall())
  finally:
    con.close()


def sink(db, check=None, stored=()):
  import duckdb
  from transforms import duckdb_sink
  con = duckdb.connect(db)
  ddl = N.duckdb_ddl()
  if check:
    ddl = ddl.replace('"n" BIGINT NOT NULL',
                      '"n" BIGINT NOT NULL CHECK (%s)' % check)
  con.execute(ddl)
  for n, message_id in stored:
    con.execute('INSERT INTO t (n, message_id) VALUES (?, ?)',
                [n, message_id])
  con.close()
  fn = duckdb_sink._InsertIntoDuckDB(db, N, 't', True, False)  # pylint: disable=protected-access
  fn.setup()
  fn.start_bundle()
  return fn


def sink_of(db):
  """The sink on an existing table ``t`` of ``db``."""
  from transforms import duckdb_sink
  fn = duckdb_sink._InsertIntoDuckDB(db, N, 't', True, False)  # pylint: disable=protected-access
  fn.setup()
  fn.start_bundle()
  return fn


def run_sink(fn, elements):
  window = beam.transforms.window.GlobalWindows.windowed_value(None)
  out = []
  for element in elements:
    out.extend(fn.process(element, window.with_value(element)))
  out.extend(fn.finish_bundle())
  return [o.value.value for o in out]


def test_refused_rows_of_column_blocks_are_halved_down_and_given_as_rows(
    tmp_path):
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db, check='n % 701 <> 5', stored=[(3, 'm3')])
  inserts = []
  insert = fn._insert  # pylint: disable=protected-access
  fn._insert = lambda c, rows: (inserts.append(len(rows)), insert(c, rows))  # pylint: disable=protected-access
  refused = run_sink(fn, [n_block(range(0, 1000)), n_block(range(1000, 2000))])
  assert [row for row, _ in refused] == [
      {'n': n, 'message_id': 'm%d' % n} for n in (5, 706, 1407)]
  assert all('CHECK constraint' in error for _, error in refused)
  assert len(inserts) < 100, inserts
  assert stored_n(db) == sorted(
      (n, 'm%d' % n) for n in range(2000) if n % 701 != 5)


def test_column_blocks_keep_the_first_row_of_a_key_and_skip_stored_keys(
    tmp_path):
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db, stored=[(-1, 'a')])
  # A new table's first batch: the insert is tried first, the stored key
  # 'a' refuses it, the look-up skips it; the next batch looks first.
  refused = run_sink(fn, [
      n_block([1, 2, 3, 4], ['a', 'b', 'b', 'c']),
      blocks.RowBlock([{'n': 5, 'message_id': 'c'},
                       {'n': 6, 'message_id': 'd'}]),
      n_block([7, 8], ['d', 'e'])])
  assert refused == []
  assert stored_n(db) == [(-1, 'a'), (2, 'b'), (4, 'c'), (6, 'd'), (8, 'e')]


def test_a_table_without_its_key_constraint_still_stores_a_key_once(tmp_path):
  """A table made before its message_id column (ALTER TABLE ADD COLUMN
  makes no key) refuses no stored key: the sink looks keys up first, so a
  replay run twice stores each row once, as the row path does."""
  import duckdb
  db = str(tmp_path / 'w.duckdb')
  con = duckdb.connect(db)
  con.execute('CREATE TABLE t (n BIGINT NOT NULL)')
  con.execute('ALTER TABLE t ADD COLUMN message_id VARCHAR')
  con.close()
  for _ in range(2):
    fn = sink_of(db)
    assert run_sink(fn, [n_block([1, 2]), n_block([2, 3])]) == []
    fn.teardown()
  assert stored_n(db) == [(1, 'm1'), (2, 'm2'), (3, 'm3')]


def test_the_sink_buffers_column_blocks_up_to_a_size_not_only_a_count(
    tmp_path):
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db)
  fn.MAX_BUFFER_BYTES = 1  # every block is a batch of its own
  inserts = []
  insert = fn._insert  # pylint: disable=protected-access
  fn._insert = lambda c, rows: (inserts.append(len(rows)), insert(c, rows))  # pylint: disable=protected-access
  assert run_sink(fn, [n_block([1, 2]), n_block([3]), n_block([4])]) == []
  assert inserts == [2, 1, 1]
  assert [n for n, _ in stored_n(db)] == [1, 2, 3, 4]


def test_blocks_go_to_a_free_writer_at_once_and_wait_for_it_past_a_batch(
    tmp_path):
  import threading
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db)
  fn.MAX_TABLE_ROWS = 3
  released = threading.Event()
  inserts = []
  insert = fn._insert  # pylint: disable=protected-access

  def held_insert(con, rows):
    inserts.append(len(rows))
    released.wait(30)  # the first batch holds the writer until released
    insert(con, rows)
  fn._insert = held_insert  # pylint: disable=protected-access
  timer = threading.Timer(0.5, released.set)
  timer.start()
  started = __import__('time').monotonic()
  refused = run_sink(fn, [n_block([n]) for n in range(1, 8)])
  timer.join()
  assert refused == []
  # The first block went to the free writer alone; the next three waited
  # in the buffer, and the one that filled it waited for the writer.
  assert inserts[:2] == [1, 3], inserts
  assert sum(inserts) == 7
  assert __import__('time').monotonic() - started >= 0.5
  assert [n for n, _ in stored_n(db)] == list(range(1, 8))


def test_the_payloads_kept_for_dead_letters_count_in_the_sink_s_buffer(
    tmp_path):
  """A row of a few bytes from a payload of a kilobyte (padding, unknown
  keys): the payloads a ColumnBlock keeps count against the buffer, so a
  writer held (an outage waited out) never lets a replay buffer without
  bound."""
  import threading
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db)
  fn.MAX_BUFFER_BYTES = 4000  # a padded block holds ~1,500 bytes
  released = threading.Event()
  inserts = []
  insert = fn._insert  # pylint: disable=protected-access

  def held_insert(con, rows):
    inserts.append(len(rows))
    released.wait(30)
    insert(con, rows)
  fn._insert = held_insert  # pylint: disable=protected-access

  def padded(n):
    block = n_block([n])
    for message in block.messages:
      message.data = b' ' * 1000 + message.data
    assert block.table.nbytes < 100 < 1000 < block.nbytes
    return block
  timer = threading.Timer(0.5, released.set)
  timer.start()
  refused = run_sink(fn, [padded(n) for n in range(1, 8)])
  timer.join()
  assert refused == []
  assert inserts[:2] == [1, 3], inserts  # the third block filled it
  assert [n for n, _ in stored_n(db)] == list(range(1, 8))


def test_a_key_another_writer_stores_mid_batch_is_skipped_in_either_mode(
    tmp_path):
  """Another writer stores one of a ColumnBlock's keys just before its
  insert, whether the sink tries the insert first or looks up first."""
  import duckdb
  from transforms import duckdb_sink
  for look_first in (False, True):
    db = str(tmp_path / ('w%d.duckdb' % look_first))
    con = duckdb.connect(db)
    con.execute(N.duckdb_ddl())
    table = n_block(range(20)).table

    class Racing(object):
      """Inserts m7 as another writer before this batch's first INSERT."""
      def __init__(self, cursor):
        self._cursor = cursor
        self.raced = False

      def execute(self, sql, *args):
        if not self.raced and sql.startswith('INSERT INTO "t"'):
          self.raced = True
          self._cursor.execute(
              "INSERT INTO t (n, message_id) VALUES (-7, 'm7')")
        return self._cursor.execute(sql, *args)

      def __getattr__(self, name):
        return getattr(self._cursor, name)

    racing = Racing(con)
    try:
      duckdb_sink.insert_table(racing, 't', N, table, look_first)
    except duckdb.ConstraintException:
      # Looked up first, then raced: the caller's halving finds it stored.
      assert look_first
      duckdb_sink.insert_table(con, 't', N, table, True)
    assert racing.raced
    got = sorted(con.execute('SELECT n, message_id FROM t').fetchall())
    con.close()
    assert got == sorted([(-7, 'm7')] + [(n, 'm%d' % n) for n in range(20)
                                          if n != 7])


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.integers(-5, 5),
                                   st.sampled_from('abcdefg')),
                         min_size=1, max_size=8), min_size=1, max_size=4),
       st.lists(st.sampled_from('abcdefg'), unique=True, max_size=3),
       st.booleans())
def test_a_table_batch_stores_what_its_rows_would(tmp_path_factory, batches,
                                                  stored, look_first):
  """insert_table and insert_rows store the same rows from the same batches
  into the same table (first of a key kept, stored keys skipped)."""
  import duckdb
  from transforms import duckdb_sink
  got = []
  for as_table in (True, False):
    con = duckdb.connect(':memory:')
    con.execute(N.duckdb_ddl())
    for k in stored:
      con.execute('INSERT INTO t VALUES (99, ?)', [k])
    for batch in batches:
      rows = [{'n': n, 'message_id': k} for n, k in batch]
      if as_table:
        duckdb_sink.insert_table(con, 't', N, N.to_arrow_table(rows),
                                 look_first)
      else:
        duckdb_sink.insert_rows(con, 't', N, rows)
    got.append(sorted(con.execute('SELECT * FROM t').fetchall()))
    con.close()
  assert got[0] == got[1]


# A column whose every value is the common form is read by Arrow in C
# (compiled_columns._timestamps, _numerics): the same values as the exact
# reader, value by value, or the exact reader decides.
def column_outcome(finish, values):
  try:
    return ('values', [strict(v) for v in finish(values).to_pylist()])
  except Exception as e:  # pylint: disable=broad-except
    return ('raises', type(e).__name__)


def arrow_of(field_type, mode, texts):
  """The exact path's values of ``texts`` in one column, as Arrow gives
  them back, or None when it refuses any."""
  field = schemas.Field('c', field_type, mode)
  converter = json_rows.RowConverter([field])
  rows = []
  for text in texts:
    try:
      row = converter(exact_obj(text))
    except json_rows.Refused:
      return None
    rows.append(row)
  table = schemas.TableSchema('t', (field,)).to_arrow_table(rows)
  return [strict(v) for v in table.column('c').to_pylist()]


def exact_obj(text):
  from transforms import exact_json
  obj, _ = exact_json.loads(b'{"c": %s}' % text.encode('utf-8'))
  return obj


RFC3339 = st.builds(
    lambda y, mo, d, h, mi, s, frac, zone: '"%04d-%02d-%02dT%02d:%02d:%02d%s%s"'
    % (y, mo, d, h, mi, s, frac, zone),
    st.sampled_from([1, 2, 1970, 2016, 2017, 9998, 9999]), st.integers(1, 12),
    st.integers(1, 31), st.integers(0, 23), st.integers(0, 59),
    st.integers(0, 59), st.sampled_from(['', '.5', '.123456', '.000001',
                                         '.1234567', '.']),
    st.sampled_from(['Z', '+01:00', '-23:59', '+23:59', '-00:00', '+00:30',
                     'z', '+0100', '']))


@settings(max_examples=400, deadline=None)
@given(st.lists(RFC3339 | st.sampled_from(
    ['"2017-10-17t20:57:17z"', '"2017-10-17 20:57:17Z"', 'null',
     '"0001-01-01T00:00:00+01:00"', '"9999-12-31T23:59:59-01:00"',
     '"0001-01-01T00:00:00Z"', '"9999-12-31T23:59:59.999999Z"',
     '"2017-02-29T00:00:00Z"', '"2017-10-17T20:57:60Z"']),
                min_size=1, max_size=4),
       st.sampled_from(['NULLABLE', 'REQUIRED']))
def test_timestamps_read_in_c_are_the_exact_reader_s(texts, mode):
  import msgspec
  from transforms import compiled_columns
  import pyarrow as pa
  expected = arrow_of('TIMESTAMP', mode, texts)
  values = [None if t == 'null' else msgspec.json.decode(t.encode())
            for t in texts]
  if mode == 'REQUIRED' and None in values:
    return  # msgspec's type refuses a null before any column is read
  each_calls = []

  def each(vs):
    each_calls.append(vs)
    return pa.array([None if v is None else
                     compiled_columns.compiled_rows.read_timestamp(v)
                     for v in vs], pa.timestamp('us', tz='UTC'))
  outcome = column_outcome(compiled_columns._timestamps(  # pylint: disable=protected-access
      pa.timestamp('us', tz='UTC'), each), values)
  if not each_calls:  # read in C: exactly the exact path's values
    assert expected is not None and outcome == ('values', expected), texts
  elif outcome[0] == 'values':  # by the readers: theirs, as always
    assert outcome == ('values', expected), texts


def is_json(text):
  try:
    json.loads(text)
    return True
  except ValueError:
    return False


PLAIN = st.builds(
    lambda sign, whole, frac, quoted: ('"%s"' if quoted else '%s') % (
        sign + whole + ('.' + frac if frac is not None else '')),
    st.sampled_from(['', '-']),
    st.sampled_from(['0', '00', '1', '21', '9' * 26, '9' * 27, '1' * 28]),
    st.sampled_from([None, '', '0', '5', '50', '123456789', '1234567891']),
    st.booleans()).filter(lambda text: is_json(text))


@settings(max_examples=400, deadline=None)
@given(st.lists(PLAIN | st.sampled_from(['null', '1E+2', '"1_000.5"',
                                         '" 21.5 "', '"NaN"', '"\\u0661.5"']),
                min_size=1, max_size=4),
       st.sampled_from(['NULLABLE', 'REQUIRED']))
def test_numerics_read_in_c_are_the_exact_reader_s(texts, mode):
  import msgspec
  from transforms import compiled_columns
  import pyarrow as pa
  expected = arrow_of('NUMERIC', mode, texts)
  read = compiled_columns.compiled_rows._raw_reader(  # pylint: disable=protected-access
      'NUMERIC', mode == 'NULLABLE')
  values = [msgspec.json.decode(t.encode(), type=msgspec.Raw) for t in texts]
  each_calls = []

  def each(vs):
    each_calls.append(vs)
    return pa.array([None if v is None else read(v) for v in vs],
                    pa.decimal128(38, 9))
  outcome = column_outcome(compiled_columns._numerics(  # pylint: disable=protected-access
      pa.decimal128(38, 9), each, mode == 'NULLABLE'), values)
  if not each_calls:
    assert expected is not None and outcome == ('values', expected), texts
  elif outcome[0] == 'values':
    assert outcome == ('values', expected), texts


def test_raw_texts_joined_as_binary_are_the_texts(tmp_path):
  import msgspec
  from transforms import compiled_columns
  texts = [b'"21.50"', b'1.5', b'null', b'"\xc3\xa9"', b'""']
  raws = [msgspec.json.decode(t, type=msgspec.Raw) for t in texts]
  assert compiled_columns._binary(raws).to_pylist() == texts  # pylint: disable=protected-access
  assert compiled_columns._binary(raws[:2] + [None]).to_pylist() == [  # pylint: disable=protected-access
      b'"21.50"', b'1.5', None]
  assert compiled_columns._binary([]).to_pylist() == []  # pylint: disable=protected-access


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.text(max_size=3)
    | st.integers(-2 ** 70, 2 ** 70) | st.sampled_from(
        [exact_json.Number(t) for t in ('1.5', '1e400', '-0.0', '0.1000000000'
                                        '000000000001', '1' * 30 + '.5')])
    | st.sampled_from(['\ud800', 'a\udfff']),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=500, deadline=None)
@given(st.lists(JSON_VALUES | st.dictionaries(
    st.text(max_size=2), st.none() | st.booleans() | st.text(max_size=2)),
                min_size=1, max_size=5))
def test_a_json_column_s_texts_are_each_value_s_text_or_its_refusal(values):
  """``json_texts`` checks a column at once where it can: the same texts
  as ``_json`` of each, or a refusal when ``_json`` refuses one (the
  caller then finds which message by the row path)."""
  from transforms import bigquery_values
  expected = []
  for value in values:
    try:
      expected.append(bigquery_values._json(value, None))  # pylint: disable=protected-access
    except bigquery_values.Refused:
      expected = 'refused'
      break
  try:
    outcome = bigquery_values.json_texts(values)
  except bigquery_values.Refused:
    outcome = 'refused'
  assert outcome == expected


def test_a_column_block_s_bytes_are_its_table_s_and_what_its_source_holds():
  """Its table, and its source: payloads, attributes, ids, and each
  message's overhead once made (Pub/Sub allows ~128 KB of attributes
  beside a payload of a few bytes)."""
  over = blocks.MESSAGE_OVERHEAD
  table = N.to_arrow_table([{'n': 1, 'message_id': 'm1'}])
  lines = blocks.LineBlock('/x.jsonl', [b'ab', b'cde'], [1, 2])
  column = blocks.ColumnBlock(table, lines, [0])
  assert column.nbytes == table.nbytes + 5
  lines.messages()
  assert column.nbytes == table.nbytes + 5 + 2 * (over + len('/x.jsonl'))
  records = blocks.RecordBlock([{'data': b'xy', 'message_id': 'm',
                                 'ordering_key': '', 'publish_time': None,
                                 'attributes': {'a' * 1000: 'b' * 2000}}])
  held = 2 + over + 1 + 3000
  assert blocks.ColumnBlock(table, records).nbytes == table.nbytes + held
  records.messages()
  assert blocks.ColumnBlock(table, records).nbytes == table.nbytes + 2 * held
  cut, = blocks.record_blocks(records.records)
  assert cut.nbytes == held
  messages = blocks.MessageBlock([PubsubMessage(b'abcd', {}),
                                  PubsubMessage(None, {'k': 'v'})])
  assert blocks.ColumnBlock(table, messages).nbytes == (
      table.nbytes + 4 + over + over + 2)



def test_rows_of_large_payloads_are_stored_before_their_count_fills_the_buffer(
    tmp_path):
  """The row path (a UDF's replay) buffers up to 20,000 rows, and also up
  to MAX_BUFFER_BYTES of the payloads they came from: 20,000 rows of 3 MB
  messages are never held at once."""
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db)
  fn.MAX_BUFFER_BYTES = 1000
  inserts = []
  insert = fn._insert  # pylint: disable=protected-access
  fn._insert = lambda c, rows: (inserts.append(len(rows)), insert(c, rows))  # pylint: disable=protected-access

  def rows_of(n):
    rows = blocks.RowBlock([{'n': n, 'message_id': 'm%d' % n}])
    rows.nbytes = 600
    return rows
  assert run_sink(fn, [rows_of(n) for n in range(1, 6)]) == []
  assert inserts == [2, 2, 1]
  assert [n for n, _ in stored_n(db)] == [1, 2, 3, 4, 5]


def test_a_block_s_rows_carry_its_payload_bytes_even_across_a_process():
  fn = json_messages.ParseJsonMessageFn(N)
  parse = blocks.ParseBlocksFn(fn)
  parse.setup()
  parse.start_bundle()
  lines = blocks.LineBlock('/x.jsonl', [b'{"n": 1}', b'{"n": 2}  ', b'{'],
                           [1, 2, 3])
  window = beam.transforms.window.GlobalWindows.windowed_value(None)
  outputs = list(parse.process(lines, window.timestamp))
  rows, = [o for o in outputs if type(o) is blocks.RowBlock]  # pylint: disable=unidiomatic-typecheck
  assert [r['n'] for r in rows] == [1, 2] and rows.nbytes == 8 + 10 + 1
  coder = blocks.BlockCoder()
  again = coder.decode(coder.encode(rows))
  assert type(again) is blocks.RowBlock and again == rows  # pylint: disable=unidiomatic-typecheck
  assert again.nbytes == rows.nbytes


def test_a_writer_waiting_out_an_outage_gives_up_at_teardown(tmp_path):
  """A pipeline that fails while the writer thread waits out a full disk
  must end: teardown stops the wait (what the batch held is not stored,
  and a rerun stores it once)."""
  import errno
  import threading
  import time
  db = str(tmp_path / 'w.duckdb')
  fn = sink(db)
  attempts = []
  outage = threading.Event()
  outage.set()
  insert = fn._insert  # pylint: disable=protected-access

  def full_disk(con, rows):
    attempts.append(len(rows))
    if outage.is_set():
      raise OSError(errno.ENOSPC, 'No space left on device')
    insert(con, rows)
  fn._insert = full_disk  # pylint: disable=protected-access
  window = beam.transforms.window.GlobalWindows.windowed_value(None)
  block = n_block([1, 2])
  assert list(fn.process(block, window.with_value(block))) == []
  while not attempts:  # the writer has it, and waits the outage out
    time.sleep(0.01)
  future = fn._storing[0]  # pylint: disable=protected-access
  started = time.monotonic()
  ended = threading.Event()
  threading.Thread(target=lambda: (fn.teardown(), ended.set()),
                   daemon=True).start()
  try:
    assert ended.wait(10), 'teardown waited on the outage'
  finally:
    outage.clear()  # a writer that did not give up ends: no hung suite
  assert time.monotonic() - started < 5
  assert isinstance(future.exception(), OSError)
  again = sink_of(db)
  assert run_sink(again, [n_block([1, 2])]) == []
  again.teardown()
  assert [n for n, _ in stored_n(db)] == [1, 2]


EXIT_DURING_OUTAGE = '''
import errno, sys, time
import apache_beam as beam
from tests.test_compiled_columns import n_block, sink
fn = sink(sys.argv[1])
attempts = []
def full_disk(con, rows):
  attempts.append(len(rows))
  raise OSError(errno.ENOSPC, 'No space left on device')
fn._insert = full_disk
window = beam.transforms.window.GlobalWindows.windowed_value(None)
block = n_block([1, 2])
assert list(fn.process(block, window.with_value(block))) == []
while not attempts:
  time.sleep(0.01)
print('waiting out the outage', flush=True)
# no teardown: the main thread ends, as an interrupted run's does
'''


def test_a_process_that_ends_without_teardown_during_an_outage_exits():
  """An interrupted run (Ctrl-C: no teardown) whose writer thread waits out
  a full disk still exits: the interpreter's join of the writer would
  otherwise wait for the disk for ever."""
  import subprocess
  import sys
  import tempfile
  import time
  with tempfile.TemporaryDirectory() as tmp:
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, '-c', EXIT_DURING_OUTAGE, tmp + '/w.duckdb'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
      out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
      proc.kill()
      out, err = proc.communicate()
      raise AssertionError('the process waited on the outage at exit: %s'
                           % err[-2000:])
  assert 'waiting out the outage' in out, err
  assert proc.returncode == 0, err
  assert time.monotonic() - started < 45
