"""Reading byte ranges as blocks of whole lines: every line exactly once."""

import io

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from transforms import text


def lines_of(data):
  return data.split(b'\n') if data else []


def read_split(data, range_bytes, block_bytes):
  blocks = []
  for start in range(0, len(data), range_bytes):
    end = min(start + range_bytes, len(data))
    blocks.extend(
        text.read_line_blocks(io.BytesIO(data), start, end, block_bytes))
  return blocks


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b'a', b'bc', b'\n', b'\r\n', b'\xc3\xa9']),
                  max_size=80).map(b''.join),
    range_bytes=st.integers(1, 40),
    block_bytes=st.integers(1, 40))
def test_ranges_read_every_line_once(data, range_bytes, block_bytes):
  blocks = read_split(data, range_bytes, block_bytes)
  assert b''.join(blocks) == data
  # Blocks end at line ends (except the file's last line).
  for block in blocks[:-1]:
    assert block.endswith(b'\n')


def test_whole_stream_when_end_unknown():
  data = b'one\ntwo\nthree'
  blocks = list(text.read_line_blocks(io.BytesIO(data), 0, None, 4))
  assert blocks == [b'one\n', b'two\n', b'three']


def test_range_starting_mid_line_skips_to_next_line():
  data = b'first line\nsecond\n'
  assert list(text.read_line_blocks(io.BytesIO(data), 3, len(data))) == [
      b'second\n']
  assert list(text.read_line_blocks(io.BytesIO(data), 0, 3)) == [
      b'first line\n']


def test_decode_replaces_and_counts_bad_lines():
  decoded, bad = text.decode_block(b'good line\nbad \xff line\nok\n')
  assert bad == 1
  assert decoded == 'good line\nbad \ufffd line\nok\n'


def test_count_lines():
  assert text.count_lines(b'a\nb\n') == 2
  assert text.count_lines(b'a\nb') == 2
  assert text.count_lines(b'\n') == 1


def test_lines_longer_than_the_read_step():
  """Lines of 10 KB against 100-byte blocks: the line end is found over
  several small reads, in every range."""
  lines = [(b'%d' % i) * (10000 // len(b'%d' % i)) for i in range(1, 8)]
  data = b'\n'.join(lines) + b'\nshort\n'
  for range_bytes in (3000, 10001, len(data)):
    blocks = read_split(data, range_bytes, 100)
    assert b''.join(blocks) == data
    assert all(block.endswith(b'\n') for block in blocks)
    assert max(len(b) for b in blocks) <= 10001 + 100
