"""An archive window's files merged into ``--num_shards`` shard files once
the window has closed: the live archiver writes one file per bundle (what
lets it acknowledge a message as soon as its file is whole), about 15 a
second at 5,000 msgs/s; a closed window keeps N.

Safe at any moment, and under two writers: a compaction lists the window's
files (bundle files and earlier shards, whole when visible), writes their
records into new shard files under names of its own (a message goes to
shard crc32(id) mod N), and deletes what it read only once every new file
is whole. A crash, or two compactions at once, can leave a message in two
files (replays absorb it by id), never in none. A compaction that fails
(a full disk, a dead network) is logged and leaves the files as they were.
"""

import gzip
import logging
import os
import shutil
import uuid
import zlib

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import archive

_LOG = logging.getLogger(__name__)
PARQUET_ROWS = 10000  # records per Parquet row group written


def shard_of(message_id, num_shards):
  return zlib.crc32((message_id or '').encode('utf-8')) % num_shards


def window_prefix(prefix, window_start, window_seconds):
  """The start of every file name of one window (bundle files and shards)."""
  start, end = archive.window_bounds(window_start, window_seconds)
  return '%s%s--%s-' % (prefix, start.strftime('%Y%m%dT%H%M%SZ'),
                        end.strftime('%Y%m%dT%H%M%SZ'))


def shard_path(directory, prefix, window_start, window_seconds, shard,
               num_shards, compaction, fmt):
  folder = os.path.dirname(archive.file_path(
      directory, prefix, window_start, window_seconds, 'x', fmt))
  return '%s/%s%05d-of-%05d-%s%s' % (
      folder, window_prefix(prefix, window_start, window_seconds), shard,
      num_shards, compaction, archive.EXTENSIONS[fmt])


def window_files(directory, prefix, window_start, window_seconds, fmt):
  """The ``fmt`` archive files of one window now in ``directory``."""
  folder = os.path.dirname(archive.file_path(
      directory, prefix, window_start, window_seconds, 'x', fmt))
  names = window_prefix(prefix, window_start, window_seconds)
  try:
    found = FileSystems.match([folder + '/*'])[0].metadata_list
  except Exception:  # pylint: disable=broad-except
    return []  # no folder (a local one not made yet)
  return sorted(m.path for m in found
                if m.path.endswith(archive.EXTENSIONS[fmt])
                and os.path.basename(m.path).startswith(names))


class ShardWriter(object):
  """One shard file, records streamed in; whole only once ``close``d (a
  local temp file, flushed to disk, then renamed or uploaded)."""
  def __init__(self, path, fmt):
    import tempfile
    self.path, self.count = path, 0
    self._fmt = fmt
    local = '://' not in path
    if local:
      os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, self._tmp = tempfile.mkstemp(
        suffix='.tmp', prefix=os.path.basename(path) + '.',
        dir=os.path.dirname(path) if local else None)
    self._pending = []
    if fmt == 'parquet':  # Arrow writes the file itself
      os.close(fd)
      self._file = None
      import pyarrow.parquet as pq
      self._writer = pq.ParquetWriter(self._tmp, archive.parquet_schema(),
                                      compression='zstd')
      return
    self._file = os.fdopen(fd, 'wb')
    if fmt == 'avro':
      import fastavro
      from fastavro.write import Writer
      self._writer = Writer(self._file, fastavro.parse_schema(
          archive.AVRO_SCHEMA), codec='deflate')
    else:
      self._writer = gzip.GzipFile(fileobj=self._file, mode='wb')

  def write(self, rec):
    self.count += 1
    if self._fmt == 'avro':
      self._writer.write(rec)
    elif self._fmt == 'parquet':
      self._pending.append(rec)
      if len(self._pending) >= PARQUET_ROWS:
        self._flush_parquet()
    else:
      self._writer.write(archive.jsonl_line(rec))

  def _flush_parquet(self):
    if self._pending:
      self._writer.write_table(archive.parquet_table(self._pending))
      self._pending = []

  def close(self):
    """Makes the file whole at its path."""
    if self._fmt == 'parquet':
      self._flush_parquet()
      self._writer.close()
    else:
      if self._fmt == 'avro':
        self._writer.flush()
      else:
        self._writer.close()  # the gzip trailer; the file stays open
      self._file.close()
    fd = os.open(self._tmp, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)
    if '://' not in self.path:
      os.replace(self._tmp, self.path)
      return
    with open(self._tmp, 'rb') as src, FileSystems.create(
        self.path, mime_type='application/octet-stream',
        compression_type='uncompressed') as dst:
      shutil.copyfileobj(src, dst, 1 << 20)
    os.remove(self._tmp)

  def abort(self):
    for closing in (self._writer, self._file):
      try:
        if closing is not None:
          closing.close()
      except Exception:  # pylint: disable=broad-except
        pass
    if os.path.exists(self._tmp):
      os.remove(self._tmp)


def compact(directory, prefix, window_start, window_seconds, num_shards, fmt):
  """Merges one window's ``fmt`` files into ``num_shards`` new shard files
  (files of another format, from a run with another --format, are left as
  they are); returns (the files written, the files removed)."""
  sources = window_files(directory, prefix, window_start, window_seconds, fmt)
  shard = '-of-%05d-' % num_shards
  if not sources or (len(sources) <= num_shards and all(
      shard in os.path.basename(s) for s in sources)):
    return [], []  # nothing there, or compacted already
  compaction = uuid.uuid4().hex[:8]
  writers = [ShardWriter(shard_path(directory, prefix, window_start,
                                    window_seconds, i, num_shards, compaction,
                                    fmt), fmt) for i in range(num_shards)]
  try:
    for source in sources:
      with FileSystems.open(source, compression_type='uncompressed') as f:
        for rec in archive.read_records(f, source):
          writers[shard_of(rec['message_id'], num_shards)].write(rec)
    written = []
    for writer in writers:
      if writer.count:
        writer.close()
        written.append(writer.path)
      else:
        writer.abort()
  except BaseException:
    for writer in writers:
      writer.abort()
    raise
  FileSystems.delete(sources)  # every record is in a whole file by now
  return written, sources


def compact_recent(directory, fmt, window_seconds, prefix, num_shards,
                   now=None):
  """After a local stream stopped: the windows still open (the last two by
  the clock; a stop does not close them) compacted too. Errors are logged;
  the files stay as they are."""
  import time
  micros = int((now or time.time()) * 1e6)
  size = int(window_seconds * 1e6)
  last = micros - micros % size
  for start in (last - size, last):
    try:
      written, removed = compact(directory, prefix, start, window_seconds,
                                 num_shards, fmt)
    except Exception as e:  # pylint: disable=broad-except
      _LOG.error('archive window %s not compacted at the stop, its files '
                 'kept: %s: %s', window_prefix(prefix, start, window_seconds),
                 type(e).__name__, e)
      continue
    if removed:
      _LOG.info('archive window %s at the stop: %d files -> %d', window_prefix(
          prefix, start, window_seconds).rstrip('-'), len(removed),
                len(written))


class CompactWindowFiles(beam.DoFn):
  """(key, paths written in a window), once the window closed -> the
  window's files merged into N shards; outputs the shard paths."""
  def __init__(self, directory, fmt, window_seconds, prefix, num_shards):
    self._args = (directory, prefix, window_seconds, num_shards, fmt)
    self.compacted = Metrics.counter('pubsub_to_gcs', 'windows_compacted')
    self.failed = Metrics.counter('pubsub_to_gcs', 'compactions_failed')

  def process(self, unused_element, window=beam.DoFn.WindowParam):
    directory, prefix, window_seconds, num_shards, fmt = self._args
    start = window.start.micros
    try:
      written, removed = compact(directory, prefix, start, window_seconds,
                                 num_shards, fmt)
    except Exception as e:  # pylint: disable=broad-except
      self.failed.inc()
      _LOG.error('archive window %s not compacted, its files kept as they '
                 'are: %s: %s', window_prefix(prefix, start, window_seconds),
                 type(e).__name__, e)
      return
    self.compacted.inc()
    _LOG.info('archive window %s: %d files -> %d', window_prefix(
        prefix, start, window_seconds).rstrip('-'), len(removed), len(written))
    yield from written


class CompactClosedWindows(beam.PTransform):
  """The paths the archiver wrote -> each window compacted once it closed."""
  def __init__(self, directory, fmt, window_seconds, prefix, num_shards):
    super().__init__()
    self._fn = CompactWindowFiles(directory, fmt, window_seconds, prefix,
                                  num_shards)
    self._window_seconds = window_seconds

  def expand(self, paths):
    return (paths
            | 'WindowOfFile' >> beam.WindowInto(
                beam.window.FixedWindows(self._window_seconds))
            | 'KeyByWindow' >> beam.Map(lambda path: ('window', path))
            | 'FilesPerWindow' >> beam.GroupByKey()
            | 'MergeIntoShards' >> beam.ParDo(self._fn))
