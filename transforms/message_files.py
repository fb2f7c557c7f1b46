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
"""

import os
from typing import Iterable

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import archive
from transforms import blocks


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


class ReadFileLines(beam.DoFn):
  """A matched file -> one PubsubMessage per non-empty line (raw bytes
  kept); an archive file (``transforms.archive``) -> the messages it keeps,
  with their own ids, publish times and attributes. With ``blocks``, the
  messages come in MessageBlocks (``transforms.blocks``). Counts (Beam
  metrics) the files read to their end and their bytes, for progress."""
  def __init__(self, blocks=False):
    self._blocks = blocks
    self.files = Metrics.counter('replay', 'files')
    self.file_bytes = Metrics.counter('replay', 'file_bytes')

  def process(self, metadata) -> Iterable[PubsubMessage]:
    messages = self._messages(metadata)
    yield from blocks.message_blocks(messages) if self._blocks else messages
    self.files.inc()
    self.file_bytes.inc(metadata.size_in_bytes)

  def _messages(self, metadata):
    if archive.is_archive(metadata.path):
      with FileSystems.open(metadata.path,
                            compression_type=CompressionTypes.UNCOMPRESSED) as f:
        yield from map(archive.message,
                       archive.read_records(f, metadata.path))
      return
    location = canonical_location(metadata.path)
    prefix = 'file:%s:' % location
    with FileSystems.open(metadata.path,
                          compression_type=CompressionTypes.AUTO) as f:
      # Beam's CompressedFile (.gz, .bz2, ...) has readline but no iterator.
      for number, line in enumerate(iter(f.readline, b''), start=1):
        data = line.rstrip(b'\r\n')
        if data.strip():
          yield PubsubMessage(
              data, {'source_file': location, 'line': str(number)},
              message_id=prefix + str(number))


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
                blocks.MessageBlock if self._blocks else PubsubMessage))
