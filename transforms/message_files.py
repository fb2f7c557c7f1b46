"""JSON-lines files -> PubsubMessages, so a file replay (a backfill, the offline
demo) runs through the very same transforms as a live Pub/Sub stream.

Each non-empty line is one message; its id is ``file:PATH:LINE`` (1-based)
with PATH the file's canonical location, so the warehouse's message-id key
makes a second replay of the same file add nothing, however it is named:
a local file is the same file under any spelling (relative from another
folder, ``..``, through a symlink) because PATH is its real path; a GCS
object is ``gs://BUCKET/OBJECT``. A copy at another location is another
file. Archive files (``*.avro``, ``*.parquet``, ``*.messages.jsonl.gz``,
as pubsub_to_gcs writes them) are read as the messages they keep, with
their original ids: replaying the archive into a table the live stream
filled adds nothing.

An archive replay reads archive files only (``classify``, which the
pipelines' checks run before anything is stored):

- the archiver's temporary files (``NAME.avro.XXXXXXXX.tmp``, a write a
  kill -9 cut short; ``archive.TEMP_NAME``) are never read: skipped, with
  one warning line from the checks;
- when the files include archive files, any other file (``weather.parquet``
  with other columns, ``notes.jsonl``) is refused: a one-line error naming
  it, exit 2, before anything is stored. Refused rather than skipped: the
  glob is the user's statement of what to replay, and a file in it that is
  not an archive file is either a mistake in the glob or data that someone
  expects to land; reading it stores junk, skipping it silently could lose
  what they meant. A narrower glob (``'DIR/**.avro'``) says which;
- a file named as the archiver names them is trusted by its name; another
  name with an archive extension is an archive file when its records have
  the archive's fields (its header, footer or first line read once).

A file that vanishes between the listing and its read (a ``--num_shards``
compaction merged its window into new shard files and deleted it) is read
from where its messages went: its window's files as they are now (a
message read twice is one row: replays are exact by message id). A file
whose messages cannot be found again (not an archive file, or its window
gone) is one error line, never a traceback.
"""

import itertools
import logging
import os
import re
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import archive
from transforms import blocks

_LOG = logging.getLogger(__name__)
# An archive file's name as the archiver writes it (``archive.file_path``,
# ``archive_compaction.shard_path``): the window part ends at ``--END-``.
_ARCHIVER_NAME = re.compile(r'^(?P<window>.*\d+T\d{6}Z--\d+T\d{6}Z-).+$')
ARCHIVE_FIELDS = tuple(f['name'] for f in archive.AVRO_SCHEMA['fields'])
RELIST_ROUNDS = 3  # a window compacted again while its files are re-read


def canonical_location(path):
  """The location that names one file however it is spelled: a local path's
  real path (symlinks and relative parts resolved), a URI as it is; any
  undecodable byte of a local name escaped, so the id is valid text."""
  from transforms import exact_json
  if '://' in path:
    return path
  return exact_json.printable(os.path.realpath(path))


def file_message_id(path, line_number):
  return 'file:%s:%d' % (canonical_location(path), line_number)


def is_temp_file(path):
  """A file the archiver was still writing (never read by a replay)."""
  return bool(archive.TEMP_NAME.search(path))


def _record_fields(path):
  """The field names of an archive-named file's records, read from its
  header (Avro), footer (Parquet) or first line (JSON lines); None for a
  JSON-lines file with no record."""
  with FileSystems.open(path,
                        compression_type=CompressionTypes.UNCOMPRESSED) as f:
    if path.endswith('.avro'):
      import fastavro
      schema = fastavro.reader(f).writer_schema
      return [field['name'] for field in schema.get('fields', ())]
    if path.endswith('.parquet'):
      import pyarrow.parquet as pq
      return list(pq.ParquetFile(f).schema_arrow.names)
    for rec in archive.read_records(f, path):
      return list(rec)
  return None


def archive_file_problem(path):
  """Why ``path`` is not an archive file, or None when it is one: named as
  the archiver names them, or named ``*.avro``/``*.parquet``/
  ``*.messages.jsonl.gz`` with records of the archive's fields."""
  if not archive.is_archive(path):
    return 'not named *%s' % ', *'.join(archive.EXTENSIONS.values())
  if _ARCHIVER_NAME.match(os.path.basename(path)):
    return None
  try:
    fields = _record_fields(path)
  except Exception as e:  # pylint: disable=broad-except
    return 'cannot be read as one: %s' % (
        str(e).splitlines()[0] if str(e) else type(e).__name__)
  missing = [name for name in ARCHIVE_FIELDS if fields is not None and (
      name not in fields)]
  if missing:
    return 'its records have no %s' % ', '.join(missing)
  return None


def classify(paths):
  """A replay's matched ``paths`` -> (to read, the archiver's temporary
  files, [(foreign file, why)]). When any path has an archive file's
  extension, every file to read must be an archive file; else they are
  JSON lines, as always."""
  temp = [p for p in paths if is_temp_file(p)]
  read = [p for p in paths if not is_temp_file(p)]
  foreign = []
  if any(archive.is_archive(p) for p in read):
    for p in read:
      why = archive_file_problem(p)
      if why:
        foreign.append((p, why))
  return read, temp, foreign


def _window_files_now(path):
  """The archive files of ``path``'s window (same folder, prefix, window and
  format) as they are now, or None when ``path`` is not named as the
  archiver names its files."""
  name = _ARCHIVER_NAME.match(os.path.basename(path))
  if not archive.is_archive(path) or not name:
    return None
  folder = path[:len(path) - len(os.path.basename(path))].rstrip('/')
  extension = next(e for e in archive.EXTENSIONS.values() if path.endswith(e))
  try:
    found = FileSystems.match([folder + '/*'])[0].metadata_list
  except Exception:  # pylint: disable=broad-except
    return []
  return sorted(m.path for m in found
                if os.path.basename(m.path).startswith(name.group('window'))
                and m.path.endswith(extension) and not is_temp_file(m.path))


def _exists(path):
  try:
    return FileSystems.exists(path)
  except Exception:  # pylint: disable=broad-except
    return True  # cannot tell: the read's own error stands


class ReadFileLines(beam.DoFn):
  """A matched file -> one PubsubMessage per non-empty line (raw bytes
  kept); an archive file (``transforms.archive``) -> the messages it keeps,
  with their own ids, publish times and attributes. With ``blocks``, the
  messages come in MessageBlocks (``transforms.blocks``). Counts (Beam
  metrics) the files read to their end and their bytes, for progress; the
  archiver's temporary files skipped, and files that vanished before
  their read (re-read from their window's files, or not found again)."""
  def __init__(self, blocks=False):
    self._blocks = blocks
    self.files = Metrics.counter('replay', 'files')
    self.file_bytes = Metrics.counter('replay', 'file_bytes')
    self.temp_files = Metrics.counter('replay', 'temp_files_skipped')
    self.relisted = Metrics.counter('replay', 'files_relisted')
    self.vanished = Metrics.counter('replay', 'files_vanished')

  def process(self, metadata) -> Iterable[PubsubMessage]:
    if is_temp_file(metadata.path):
      # The checks said so once; a worker says it in its own log only.
      _LOG.debug('%s: the archiver\'s temporary file, not read', metadata.path)
      self.temp_files.inc()
      return
    for block in self._blocks_of(metadata.path):
      if self._blocks:
        yield block
      else:
        yield from blocks.messages_of(block)
    self.files.inc()
    self.file_bytes.inc(metadata.size_in_bytes)

  def _blocks_of(self, path, rounds=RELIST_ROUNDS):
    """``path``'s messages in file order, in blocks: LineBlocks of a
    JSON-lines file, MessageBlocks of an archive's."""
    try:
      yield from self._read(path)
    except Exception:  # pylint: disable=broad-except
      if _exists(path):
        raise
      yield from self._vanished(path, rounds)

  def _vanished(self, path, rounds):
    """``path`` was listed and is gone: its window's files now, when a
    compaction put its messages there (those read already are read again:
    one row each, by message id); else one error line."""
    found = _window_files_now(path) if rounds else None
    if not found:
      self.vanished.inc()
      _LOG.error('%s vanished before this replay read it and its messages '
                 'are not found elsewhere: they are not in this replay',
                 path)
      return
    self.relisted.inc()
    _LOG.info('%s vanished before this replay read it (a compaction merged '
              'its window): reading the window\'s %d files now', path,
              len(found))
    for other in found:
      yield from self._blocks_of(other, rounds - 1)

  def _read(self, path):
    if archive.is_archive(path):
      with FileSystems.open(path,
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        records = archive.read_records(f, path)
        first = next(records, None)
        if first is None:
          return
        missing = [n for n in ARCHIVE_FIELDS if n not in first]
        if missing:
          raise ValueError('%s is not an archive file: its records have no '
                           '%s' % (path, ', '.join(missing)))
        yield from blocks.record_blocks(itertools.chain([first], records))
      return
    location = canonical_location(path)
    with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as f:
      for datas, numbers, size in line_pieces(f):
        yield from blocks.line_blocks(location, datas, numbers, size)


PIECE_BYTES = 4 << 20  # read at a time from a JSON-lines file


def line_pieces(f, piece_bytes=PIECE_BYTES):
  """A JSON-lines file open as ``f`` -> (payloads, their line numbers,
  their bytes) for each ``piece_bytes`` read: a payload for each line that
  is not blank (the line's end, ``\n`` after any ``\r``, taken off),
  numbered from 1. Read a piece at a time and split in C (1M lines: 1.0 s
  through readline calls, 0.33 s iterated, less split); a line longer than
  a piece is joined once, not copied per read."""
  number, pending = 0, []  # the lines before; the start of a line not ended
  while True:
    chunk = f.read(piece_bytes)
    if not chunk:
      if not pending:
        return
      lines, pending = [b''.join(pending)], []
    elif b'\n' not in chunk:
      pending.append(chunk)
      continue
    else:
      lines = chunk.split(b'\n')
      if pending:
        pending.append(lines[0])
        lines[0] = b''.join(pending)
      last = lines.pop()
      pending = [last] if last else []
    datas, numbers = [], []
    for line in lines:
      number += 1
      data = line.rstrip(b'\r')
      if data and not data.isspace():
        datas.append(data)
        numbers.append(number)
    yield datas, numbers, sum(map(len, datas))


class ReadMessagesFromFiles(beam.PTransform):
  """A file pattern (local or gs://, compressed or not) -> PubsubMessages,
  or with ``blocks`` MessageBlocks of them."""
  def __init__(self, file_pattern, blocks=False):
    super().__init__()
    self._pattern = file_pattern
    self._blocks = blocks

  def expand(self, pbegin):
    return (
        pbegin
        | 'FilePattern' >> beam.Create([self._pattern])
        | 'MatchFiles' >> fileio.MatchAll()
        | 'SpreadFiles' >> beam.Reshuffle()
        | 'ReadLines' >> beam.ParDo(
            ReadFileLines(self._blocks)).with_output_types(
                blocks.ReadBlock if self._blocks else PubsubMessage))
