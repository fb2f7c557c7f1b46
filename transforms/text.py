"""Reading text files in large line-aligned blocks, and counting the words in them.

Beam's ``ReadFromText`` makes one element per line, and each element costs a few
microseconds in every step it passes through. Here a file is cut into byte
ranges (the way Hadoop's line reader splits files), each range is read in
blocks of whole lines, and words are counted per bundle before the shuffle, so
a 50 MB corpus becomes a handful of elements instead of a million.
"""

import collections
import logging
import re

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

_LOG = logging.getLogger(__name__)

# What Beam's own apache_beam.examples.wordcount calls a word.
DEFAULT_WORD_PATTERN = r"[\w']+"

RANGE_BYTES = 8 << 20  # how much of an uncompressed file one reader takes
BLOCK_BYTES = 32 << 10  # how much text one counting pass sees

# For ASCII text, DEFAULT_WORD_PATTERN's matches are exactly the runs left by
# mapping every other byte to a space and splitting: ~1.6x faster than the regex.
_ASCII_WORD_BYTES = frozenset(
    b'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_\'')
_ASCII_NON_WORD_TO_SPACE = bytes(
    c if c in _ASCII_WORD_BYTES else 0x20 for c in range(256))


def read_line_blocks(stream, start, end, block_bytes=BLOCK_BYTES):
  """Yields byte blocks holding exactly the lines that start in [start, end).

  ``stream`` is positioned at 0 or seekable; ``end`` None means to the end of
  the stream (compressed files). A line belongs to the range its first byte is
  in, so adjacent ranges together read every line exactly once. Memory stays
  near ``block_bytes``: the end of a block's last line is looked for in small
  reads, and the buffer is only compacted when it is refilled.
  """
  step = max(block_bytes // 4, 4096)
  if start > 0:
    stream.seek(start - 1)
    while True:
      chunk = stream.read(step)
      if not chunk:
        return
      newline = chunk.find(b'\n')
      if newline >= 0:
        buf, off = chunk, newline + 1
        pos = start + newline  # file offset of buf[off]
        break
      start += len(chunk)
  else:
    buf, off, pos = b'', 0, 0
  eof = False
  while end is None or pos < end:
    target = block_bytes if end is None else min(block_bytes, end - pos)
    if len(buf) - off < target and not eof:
      parts, size = [buf[off:]], len(buf) - off
      while size < target and not eof:
        more = stream.read(target - size)
        eof = not more
        parts.append(more)
        size += len(more)
      buf, off = b''.join(parts), 0
    # The block ends with the line holding its byte target-1.
    newline = buf.find(b'\n', off + target - 1)
    if newline < 0 and not eof:
      parts, size = [buf[off:]], len(buf) - off
      while newline < 0:
        more = stream.read(step)
        if not more:
          eof = True
          break
        found = more.find(b'\n')
        if found >= 0:
          newline = size + found
        parts.append(more)
        size += len(more)
      buf, off = b''.join(parts), 0
    cut = len(buf) if newline < 0 else newline + 1
    if cut == off:
      return
    yield buf[off:cut]
    pos += cut - off
    off = cut
    if eof and off == len(buf):
      return


class SplitIntoRanges(beam.DoFn):
  """Matched file -> (path, start, end) ranges; compressed files are one range."""
  def __init__(self, range_bytes=RANGE_BYTES):
    self._range_bytes = range_bytes

  def process(self, metadata):
    path, size = metadata.path, metadata.size_in_bytes
    if CompressionTypes.detect_compression_type(path) != (
        CompressionTypes.UNCOMPRESSED):
      yield path, 0, None
      return
    for start in range(0, size, self._range_bytes):
      yield path, start, min(start + self._range_bytes, size)


class ReadLineBlocks(beam.PTransform):
  """Files matching a pattern (local, gs://, compressed) -> blocks of whole lines as bytes.

  A pattern that matches nothing yields nothing here; callers that want an
  error should check first (see ``pipelines.wordcount``).
  """
  def __init__(self, file_pattern, range_bytes=RANGE_BYTES,
               block_bytes=BLOCK_BYTES):
    super().__init__()
    self._pattern = file_pattern
    self._range_bytes = range_bytes
    self._block_bytes = block_bytes

  def expand(self, pbegin):
    return (
        pbegin
        | 'FilePattern' >> beam.Create([self._pattern])
        | 'MatchFiles' >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
        | 'SplitIntoRanges' >> beam.ParDo(SplitIntoRanges(self._range_bytes))
        | 'SpreadRanges' >> beam.Reshuffle()
        | 'ReadRanges' >> beam.ParDo(ReadRange(self._block_bytes)))


class ReadRange(beam.DoFn):
  """(path, start, end) -> blocks of the lines that start in that byte range."""
  def __init__(self, block_bytes=BLOCK_BYTES):
    self._block_bytes = block_bytes

  def process(self, path_range):
    path, start, end = path_range
    compression = (
        CompressionTypes.AUTO if end is None else CompressionTypes.UNCOMPRESSED)
    with FileSystems.open(path, compression_type=compression) as stream:
      yield from read_line_blocks(stream, start, end, self._block_bytes)


def decode_block(block):
  """UTF-8 bytes -> (text, lines that were not valid UTF-8).

  Undecodable lines are decoded with U+FFFD replacement characters, so their
  valid words still count.
  """
  try:
    return block.decode('utf-8'), 0
  except UnicodeDecodeError:
    pass
  bad = 0
  lines = []
  for line in block.split(b'\n'):
    try:
      lines.append(line.decode('utf-8'))
    except UnicodeDecodeError:
      bad += 1
      lines.append(line.decode('utf-8', errors='replace'))
  return '\n'.join(lines), bad


def count_lines(block):
  """How many lines a block holds (a last line without a newline counts)."""
  return block.count(b"\n") + (0 if not block or block.endswith(b"\n") else 1)


class WordCounter(object):
  """Counts words in text with a regex, the way Beam's wordcount example does.

  The default pattern cannot match a line break, so it runs over a whole block
  at once (and over ASCII blocks as a byte split, same result); any other
  pattern runs line by line, as it would after ReadFromText.
  """
  def __init__(self, pattern=DEFAULT_WORD_PATTERN, lowercase=False):
    self.pattern = pattern
    self.lowercase = lowercase
    self._regex = re.compile(pattern)
    self._per_line = pattern != DEFAULT_WORD_PATTERN

  def count_block_into(self, counts, block):
    """Adds the words of a block of UTF-8 lines to the Counter ``counts``.
    Returns how many lines were not valid UTF-8."""
    if not self._per_line and block.isascii():
      counts.update(
          block.translate(_ASCII_NON_WORD_TO_SPACE).decode('ascii').split())
      return 0
    text, bad = decode_block(block)
    self.count_into(counts, text)
    return bad

  def words(self, text):
    """The words in ``text``, in order (empty matches dropped)."""
    chunks = (line.rstrip('\r') for line in text.split('\n')
              ) if self._per_line else (text, )
    for chunk in chunks:
      if self._regex.groups:
        found = (m.group(0) for m in self._regex.finditer(chunk))
      else:
        found = self._regex.findall(chunk)
      for word in found:
        if word:
          yield word

  def count_into(self, counts, text):
    """Adds the words of ``text`` to the Counter ``counts``."""
    if not self._per_line and not self._regex.groups:
      counts.update(self._regex.findall(text))
      counts.pop('', None)
    else:
      counts.update(self.words(text))

  def finish(self, counts):
    """The (word, count) pairs to emit: case-folded per distinct word (not
    per word) when asked."""
    if not self.lowercase:
      return counts.items()
    folded = collections.Counter()
    for word, n in counts.items():
      folded[word.casefold()] += n
    return folded.items()


class CountWordsInBlocks(beam.DoFn):
  """Blocks of lines -> (word, count) pairs, counted per bundle before the shuffle.

  Emits in ``finish_bundle`` in the global window: a batch-only step.
  """
  def __init__(self, pattern=DEFAULT_WORD_PATTERN, lowercase=False):
    self._counter_args = (pattern, lowercase)
    self.lines = Metrics.counter('wordcount', 'lines_read')
    self.undecodable = Metrics.counter('wordcount', 'undecodable_lines')
    self.words = Metrics.counter('wordcount', 'words')

  def setup(self):
    self._counter = WordCounter(*self._counter_args)

  def start_bundle(self):
    self._counts = collections.Counter()

  def process(self, block):
    self.lines.inc(count_lines(block))
    bad = self._counter.count_block_into(self._counts, block)
    if bad:
      self.undecodable.inc(bad)
      _LOG.debug('%d undecodable line(s) read with replacement', bad)

  def finish_bundle(self):
    self.words.inc(self._counts.total())
    window = GlobalWindow()
    for pair in self._counter.finish(self._counts):
      yield WindowedValue(pair, window.max_timestamp(), [window])
    self._counts = None


class CountWords(beam.PTransform):
  """Blocks of lines (bytes) -> (word, total count), one element per distinct word."""
  def __init__(self, pattern=DEFAULT_WORD_PATTERN, lowercase=False):
    super().__init__()
    self._pattern = pattern
    self._lowercase = lowercase

  def expand(self, blocks):
    return (
        blocks
        | 'CountPerBundle' >> beam.ParDo(
            CountWordsInBlocks(self._pattern, self._lowercase))
        | 'SumPerWord' >> beam.CombinePerKey(sum))
