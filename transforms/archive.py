"""Pub/Sub messages kept exactly in archive files, and read back as the
same messages: payload bytes (any bytes), attributes, message id, publish
time and ordering key.

Formats (``--format``): ``avro`` (the default: what Google's "Pub/Sub to
Avro Files on Cloud Storage" template writes and BigQuery load jobs read
natively; a row-oriented container that appends message by message, bytes
kept as bytes), ``parquet`` (columnar: what DuckDB and analysts read best;
a file is written whole, as its footer comes last) and ``jsonl`` (one JSON
object a line, the payload in base64, gzip-compressed: the most readable,
the largest before compression). Files are named ``*.avro``,
``*.parquet`` and ``*.messages.jsonl.gz``.

``WriteArchiveFiles`` writes each bundle's messages of one event-time window
into one new file in the window's ``YYYY/MM/DD/HH/`` folder (UTC), named by
the window and the bundle: ``<prefix><start>--<end>-<bundle>.<ext>``.
A local file is written under a temporary name, flushed to disk and renamed;
a GCS object appears whole when its upload completes, before its bundle
ends: only then may a runner settle (acknowledge) its messages, so a crash
can write a message into two files (its bundle again, after redelivery)
but never lose one; a replay absorbs the copy by message id. A message is
kept as published whatever a reader thought of it (a timestamp attribute
that is not a timestamp: its window is its publish time's).
"""

import base64
import collections
import datetime
import io
import json
import logging
import os
import re
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.io.gcp.pubsub import PubsubMessage

from storage import outages

_LOG = logging.getLogger(__name__)
FORMATS = ('avro', 'parquet', 'jsonl')
EXTENSIONS = {'avro': '.avro', 'parquet': '.parquet',
              'jsonl': '.messages.jsonl.gz'}
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
AVRO_SCHEMA = {
    'type': 'record', 'name': 'PubsubMessage', 'namespace': 'beam_gcp_pipelines',
    'fields': [
        {'name': 'message_id', 'type': 'string'},
        {'name': 'publish_time', 'type': ['null', {
            'type': 'long', 'logicalType': 'timestamp-micros'}]},
        {'name': 'attributes', 'type': {'type': 'map', 'values': 'string'}},
        {'name': 'ordering_key', 'type': 'string'},
        {'name': 'data', 'type': 'bytes'},
    ]}


# A file still being written: its final name, '.', 8 random characters and
# '.tmp' (``_write`` below; ``archive_compaction.ShardWriter`` through
# mkstemp). A kill -9 can leave one; replays never read them.
TEMP_NAME = re.compile(
    r'(?:\.avro|\.parquet|\.messages\.jsonl\.gz)\.[A-Za-z0-9_]{8}\.tmp$')


def is_archive(path):
  return path.endswith(tuple(EXTENSIONS.values()))


def _micros(published):
  if published is None:
    return None
  if published.tzinfo is None:
    published = published.replace(tzinfo=UTC)
  return (published - EPOCH) // datetime.timedelta(microseconds=1)


def record(message):
  """A PubsubMessage -> the archive's record of it."""
  return {'message_id': message.message_id or '',
          'publish_time': _micros(message.publish_time),
          'attributes': dict(message.attributes or {}),
          'ordering_key': getattr(message, 'ordering_key', None) or '',
          'data': bytes(message.data or b'')}


def message(rec):
  """An archive record -> the PubsubMessage it was."""
  micros = rec['publish_time']
  if isinstance(micros, datetime.datetime):  # as fastavro reads timestamp-micros
    published = micros if micros.tzinfo is UTC else micros.astimezone(UTC)
  else:
    published = None if micros is None else EPOCH + datetime.timedelta(
        microseconds=micros)
  attributes = rec['attributes']
  if isinstance(attributes, list):  # Parquet maps read as (key, value) pairs
    attributes = dict(attributes)
  return PubsubMessage(bytes(rec['data']), dict(attributes or {}),
                       message_id=rec['message_id'] or None,
                       publish_time=published,
                       ordering_key=rec['ordering_key'] or '')


def parquet_schema():
  import pyarrow as pa
  return pa.schema([
      ('message_id', pa.string()),
      ('publish_time', pa.timestamp('us', tz='UTC')),
      ('attributes', pa.map_(pa.string(), pa.string())),
      ('ordering_key', pa.string()),
      ('data', pa.binary())])


def parquet_table(records):
  """Records -> an Arrow table of the Parquet archive's schema."""
  import pyarrow as pa
  columns = {
      'message_id': [r['message_id'] for r in records],
      'publish_time': [r['publish_time'] for r in records],
      'attributes': [_pairs(r['attributes']) for r in records],
      'ordering_key': [r['ordering_key'] for r in records],
      'data': [r['data'] for r in records]}
  return pa.table(columns, schema=parquet_schema())


def _pairs(attributes):
  """A record's attributes as (key, value) pairs (Parquet reads them so)."""
  return list(attributes.items()) if isinstance(attributes, dict) else list(
      attributes or ())


def jsonl_line(rec):
  """A record -> its line of a ``.messages.jsonl.gz`` file (payload in base64)."""
  return json.dumps(dict(rec, data=base64.b64encode(rec['data']).decode(
      'ascii')), sort_keys=True).encode('utf-8') + b'\n'


def encode(records, fmt):
  """Records -> the bytes of one archive file."""
  out = io.BytesIO()
  if fmt == 'avro':
    import fastavro
    fastavro.writer(out, fastavro.parse_schema(AVRO_SCHEMA), records,
                    codec='deflate')
  elif fmt == 'parquet':
    import pyarrow.parquet as pq
    pq.write_table(parquet_table(records), out, compression='zstd')
  else:
    import gzip
    with gzip.GzipFile(fileobj=out, mode='wb') as gz:
      for r in records:
        gz.write(jsonl_line(r))
  return out.getvalue()


def read_records(f, path):
  """An open archive file -> an iterator of its records."""
  if path.endswith('.avro'):
    import fastavro
    return iter(fastavro.reader(f))
  if path.endswith('.parquet'):
    import pyarrow.parquet as pq
    return iter(pq.read_table(io.BytesIO(f.read())).to_pylist())
  return _jsonl_records(f)


def _jsonl_records(f):
  import gzip
  with gzip.GzipFile(fileobj=f) as gz:
    for line in gz:
      if line.strip():
        rec = json.loads(line)
        rec['data'] = base64.b64decode(rec['data'])
        yield rec


def window_bounds(window_start, window_seconds):
  """A window's (start, end) as UTC datetimes, held to the calendar's years
  1-9999: a message stamped near either end (a timestamp attribute) still
  has a file to go to, named by the part of its window a date can name."""
  lowest = datetime.datetime.min.replace(tzinfo=UTC)
  highest = datetime.datetime.max.replace(tzinfo=UTC)
  micros = datetime.timedelta(microseconds=1)
  low, high = (lowest - EPOCH) // micros, (highest - EPOCH) // micros
  end = window_start + int(window_seconds * 1e6)
  start = EPOCH + datetime.timedelta(
      microseconds=min(max(window_start, low), high))
  return start, EPOCH + datetime.timedelta(microseconds=min(max(end, low), high))


def file_path(directory, prefix, window_start, window_seconds, bundle, fmt):
  start, end = window_bounds(window_start, window_seconds)
  return '/'.join([directory.rstrip('/'), start.strftime('%Y/%m/%d/%H'),
                   '%s%s--%s-%s%s' % (prefix, start.strftime('%Y%m%dT%H%M%SZ'),
                                      end.strftime('%Y%m%dT%H%M%SZ'), bundle,
                                      EXTENSIONS[fmt])])


class WriteArchiveFiles(beam.DoFn):
  """Messages -> archive files, one per (bundle, window), each whole before
  its bundle ends; outputs the paths written. Counts (Beam metrics) the
  messages archived."""
  def __init__(self, directory, fmt='avro', window_seconds=300, prefix=''):
    self.messages = Metrics.counter('pubsub_to_gcs', 'messages')
    self._directory = directory
    self._fmt = fmt
    self._window_micros = int(window_seconds * 1e6)
    self._window_seconds = window_seconds
    self._prefix = prefix

  def start_bundle(self):
    self._by_window = collections.defaultdict(list)

  def process(self, msg, timestamp=beam.DoFn.TimestampParam):
    micros = timestamp.micros
    self._by_window[micros - micros % self._window_micros].append(msg)

  def finish_bundle(self):
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import Timestamp
    from apache_beam.utils.windowed_value import WindowedValue
    by_window, self._by_window = self._by_window, collections.defaultdict(list)
    bundle = uuid.uuid4().hex[:12]
    for start, messages in sorted(by_window.items()):
      path = file_path(self._directory, self._prefix, start,
                       self._window_seconds, bundle, self._fmt)
      data = encode([record(m) for m in messages], self._fmt)
      outages.wait_out('archive %s' % self._directory,
                       lambda: _write(path, data))
      self.messages.inc(len(messages))
      yield WindowedValue(path, Timestamp(micros=start), [GlobalWindow()])


def _write(path, data):
  """The whole file at ``path``, or none of it."""
  from apache_beam.io.filesystems import FileSystems
  if '://' in path:
    with FileSystems.create(path, mime_type='application/octet-stream',
                            compression_type='uncompressed') as f:
      f.write(data)
    return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = '%s.%s.tmp' % (path, uuid.uuid4().hex[:8])  # TEMP_NAME
  try:
    with open(tmp, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(os.path.dirname(path))  # the rename survives a power loss
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _sync_folder(folder):
  descriptor = os.open(folder, os.O_RDONLY)
  try:
    os.fsync(descriptor)
  finally:
    os.close(descriptor)


class ArchiveMessages(beam.PTransform):
  """PubsubMessages -> archive files in ``directory`` (local or gs://);
  returns the paths written."""
  def __init__(self, directory, fmt='avro', window_seconds=300, prefix=''):
    super().__init__()
    self._fn = WriteArchiveFiles(directory, fmt, window_seconds, prefix)

  def expand(self, messages):
    return messages | 'WriteArchiveFiles' >> beam.ParDo(self._fn)
