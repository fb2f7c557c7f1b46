"""JSON-lines files -> PubsubMessages, so a file replay (a backfill, the offline
demo) runs through the very same transforms as a live Pub/Sub stream.

Each non-empty line is one message; its id is ``file:PATH:LINE`` (1-based),
stable across replays of the same path, so the warehouse's message-id key
makes a second replay add nothing.
"""

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.gcp.pubsub import PubsubMessage


def file_message_id(path, line_number):
  return 'file:%s:%d' % (path, line_number)


class ReadFileLines(beam.DoFn):
  """A matched file -> one PubsubMessage per non-empty line (raw bytes kept)."""
  def process(self, metadata):
    with FileSystems.open(metadata.path,
                          compression_type=CompressionTypes.AUTO) as f:
      # Beam's CompressedFile (.gz, .bz2, ...) has readline but no iterator.
      for number, line in enumerate(iter(f.readline, b''), start=1):
        data = line.rstrip(b'\r\n')
        if data.strip():
          yield PubsubMessage(
              data, {'source_file': metadata.path, 'line': str(number)},
              message_id=file_message_id(metadata.path, number))


class ReadMessagesFromFiles(beam.PTransform):
  """A file pattern (local or gs://, compressed or not) -> PubsubMessages."""
  def __init__(self, file_pattern):
    super().__init__()
    self._pattern = file_pattern

  def expand(self, pbegin):
    return (
        pbegin
        | 'FilePattern' >> beam.Create([self._pattern])
        | 'MatchFiles' >> fileio.MatchAll()
        | 'SpreadFiles' >> beam.Reshuffle()
        | 'ReadLines' >> beam.ParDo(ReadFileLines()))
