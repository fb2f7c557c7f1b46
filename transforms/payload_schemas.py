"""Avro and Protocol Buffer schemas -> payload decoders (``payloads``) and
the BigQuery table they map to, as a BigQuery subscription with "use topic
schema" maps them (https://cloud.google.com/pubsub/docs/bigquery, "Schema
compatibility"; docs/payloads.md has the table and where we differ).

``--payload_schema`` is one file (``.avsc``; ``.proto`` with one top-level
message, as Pub/Sub requires; or a compiled descriptor set ``.pb``/``.desc``),
a folder of them named by revision id (``1a2b3c4d.avsc``), one per revision
a message may carry in ``googclient_schemarevisionid``, or a schema of
Pub/Sub's schema service (``projects/P/schemas/S``): every revision it
holds at launch, and a revision committed later fetched when a message
first names it (``SchemaService``).
"""

import json
import logging
import os
import re
import tempfile
import threading
import time

from transforms import payloads

AVRO_SUFFIXES = ('.avsc',)
PROTOBUF_SUFFIXES = ('.proto', '.pb', '.desc')


class SchemaError(ValueError):
  """A payload schema that cannot be read or mapped onto a table."""


_PRIMITIVE_NAMES = {'null', 'boolean', 'int', 'long', 'float', 'double',
                    'bytes', 'string'}


def _mode(nullable):
  return 'NULLABLE' if nullable else 'REQUIRED'


# ------------------------------------------------------------------- Avro

def avro_fields(schema):
  """An Avro record schema -> BigQuery fields (dicts)."""
  if not isinstance(schema, dict) or schema.get('type') != 'record':
    raise SchemaError('a Pub/Sub Avro schema is one record; this is %s'
                      % json.dumps(schema)[:80])
  named = {}
  return _avro_record_fields(schema, named, '', '', ())


def _avro_record_fields(schema, named, namespace, path, seen):
  name = payloads.full_name(schema['name'], schema.get('namespace', namespace))
  if name in seen:
    raise SchemaError('%s: a recursive type (%s) has no BigQuery type' % (
        path or name, name))
  named[name] = schema
  namespace = payloads.namespace_of(schema, namespace)
  return [_avro_field(f['name'], f['type'], named, namespace,
                      '%s.%s' % (path, f['name']) if path else f['name'],
                      seen=seen + (name,))
          for f in schema['fields']]


def _resolve(reference, named, namespace):
  """A named type's reference -> its full name, as the Avro spec resolves
  it (the enclosing namespace first), or None."""
  full = payloads.full_name(reference, namespace)
  if full in named:
    return full
  return reference if reference in named else None


def _avro_field(name, schema, named, namespace, path, nullable=False,
                seen=()):
  if isinstance(schema, list):
    others = [b for b in schema if b != 'null']
    if len(others) != 1:
      raise SchemaError('%s: a union of %s has no BigQuery type (only a '
                        'union of null and one type maps, to NULLABLE)' % (
                            path, json.dumps(schema)[:80]))
    return _avro_field(name, others[0], named, namespace, path,
                       nullable=len(others) < len(schema), seen=seen)
  if isinstance(schema, str) and schema not in _PRIMITIVE_NAMES:
    full = _resolve(schema, named, namespace)
    if full is None:
      raise SchemaError('%s: Avro type %r is unknown' % (path, schema))
    if full in seen:
      raise SchemaError('%s: a recursive type (%s) has no BigQuery type' % (
          path, full))
    schema = named[full]
    namespace = full.rsplit('.', 1)[0] if '.' in full else ''
  kind = schema if isinstance(schema, str) else schema['type']
  if isinstance(kind, (dict, list)):
    return _avro_field(name, kind, named, namespace, path, nullable, seen)
  mode = _mode(nullable)
  logical = schema.get('logicalType') if isinstance(schema, dict) else None
  if isinstance(schema, dict) and schema.get('name') and kind in (
      'enum', 'fixed'):
    named[payloads.full_name(schema['name'], schema.get(
        'namespace', namespace))] = schema
  if logical == 'decimal' and kind in ('bytes', 'fixed'):
    try:
      precision = int(schema['precision'])
      scale = int(schema.get('scale', 0))
    except (KeyError, TypeError, ValueError):
      raise SchemaError('%s: a decimal needs an integer precision (and '
                        'scale)' % path)
    if precision - scale <= 29 and scale <= 9:
      bq = 'NUMERIC'
    elif precision - scale <= 38 and scale <= 38:
      bq = 'BIGNUMERIC'
    else:
      raise SchemaError('%s: decimal(%d, %d) does not fit NUMERIC or '
                        'BIGNUMERIC' % (path, precision, scale))
    return {'name': name, 'type': bq, 'mode': mode}
  if kind in ('int', 'long'):
    bq = {'timestamp-millis': 'TIMESTAMP', 'timestamp-micros': 'TIMESTAMP',
          'date': 'DATE', 'time-millis': 'TIME',
          'time-micros': 'TIME'}.get(logical, 'INTEGER')
    return {'name': name, 'type': bq, 'mode': mode}
  simple = {'boolean': 'BOOLEAN', 'float': 'FLOAT', 'double': 'FLOAT',
            'bytes': 'BYTES', 'string': 'STRING', 'fixed': 'BYTES',
            'enum': 'STRING'}
  if kind in simple:
    return {'name': name, 'type': simple[kind], 'mode': mode}
  if kind == 'record':
    return {'name': name, 'type': 'RECORD', 'mode': mode,
            'fields': _avro_record_fields(schema, named, namespace, path,
                                          seen)}
  if kind == 'array':
    if _takes_no_bytes(schema['items'], named, namespace):
      raise SchemaError('%s: an array of items that take no bytes (null, a '
                        'fixed of size 0, a record with no fields) would let '
                        'a message of a few bytes declare a billion items' %
                        path)
    item = _avro_field(name, schema['items'], named, namespace, path,
                       seen=seen)
    if item['mode'] == 'REPEATED':
      raise SchemaError('%s: an array of arrays has no BigQuery type' % path)
    return dict(item, mode='REPEATED')
  if kind == 'map':
    value = _avro_field('value', schema['values'], named, namespace,
                        path + '.value', seen=seen)
    if value['mode'] == 'REQUIRED':
      value['mode'] = 'NULLABLE'
    return {'name': name, 'type': 'RECORD', 'mode': 'REPEATED', 'fields': [
        {'name': 'key', 'type': 'STRING', 'mode': 'NULLABLE'}, value]}
  if kind == 'null':
    raise SchemaError('%s: a null-only field has no BigQuery type' % path)
  raise SchemaError('%s: Avro type %r is unknown' % (path, kind))


def _takes_no_bytes(schema, named, namespace, seen=()):
  """Whether a value of this Avro type can be encoded in zero bytes."""
  if isinstance(schema, list):
    return False  # a union writes its branch's index
  if isinstance(schema, str):
    if schema == 'null':
      return True
    if schema in _PRIMITIVE_NAMES:
      return False
    full = _resolve(schema, named, namespace)
    if full is None or full in seen:
      return False
    return _takes_no_bytes(named[full], named, full.rsplit('.', 1)[0] if (
        '.' in full) else '', seen + (full,))
  kind = schema.get('type')
  if isinstance(kind, (dict, list)):
    return _takes_no_bytes(kind, named, namespace, seen)
  if kind == 'fixed':
    return int(schema.get('size', 0)) == 0
  if kind == 'record':
    if schema.get('name'):
      named.setdefault(payloads.full_name(schema['name'], schema.get(
          'namespace', namespace)), schema)
    return all(_takes_no_bytes(f['type'], named, payloads.namespace_of(
        schema, namespace), seen) for f in schema.get('fields', ()))
  return kind == 'null'


def read_avro(text, where):
  try:
    schema = json.loads(text)
    import fastavro
    fastavro.parse_schema(schema)
  except Exception as e:  # pylint: disable=broad-except
    raise SchemaError('%s is not an Avro schema: %s' % (
        where, str(e).splitlines()[0] if str(e) else type(e).__name__))
  avro_fields(schema)  # refuses what no table holds, now
  return payloads.AvroRevision(schema)


# -------------------------------------------------------- Protocol Buffers

_WELL_KNOWN = {
    'google.protobuf.Timestamp': 'TIMESTAMP',
    'google.protobuf.Duration': 'NUMERIC',  # seconds, exact to the nano
    'google.protobuf.Struct': 'JSON', 'google.protobuf.Value': 'JSON',
    'google.protobuf.ListValue': 'JSON',
}
_WRAPPED = {'DoubleValue': 'FLOAT', 'FloatValue': 'FLOAT',
            'Int64Value': 'INTEGER', 'UInt64Value': 'NUMERIC',
            'Int32Value': 'INTEGER', 'UInt32Value': 'INTEGER',
            'BoolValue': 'BOOLEAN', 'StringValue': 'STRING',
            'BytesValue': 'BYTES'}


def protobuf_fields(descriptor):
  """A message descriptor -> BigQuery fields (dicts)."""
  return [_protobuf_field(f, f.name, (descriptor.full_name,))
          for f in descriptor.fields]


def _protobuf_type(field, path, seen):
  from google.protobuf.descriptor import FieldDescriptor as F
  if field.type in (F.TYPE_MESSAGE, F.TYPE_GROUP):
    full = field.message_type.full_name
    if full in _WELL_KNOWN:
      return _WELL_KNOWN[full], None
    if full.startswith('google.protobuf.') and full.split('.')[-1] in _WRAPPED:
      return _WRAPPED[full.split('.')[-1]], None
    if full in seen:
      raise SchemaError('%s: a recursive message has no BigQuery type' % path)
    return 'RECORD', [_protobuf_field(f, '%s.%s' % (path, f.name),
                                      seen + (full,))
                      for f in field.message_type.fields]
  if field.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
    return 'NUMERIC', None  # past INT64: the page maps them to NUMERIC only
  return {
      F.TYPE_DOUBLE: 'FLOAT', F.TYPE_FLOAT: 'FLOAT', F.TYPE_BOOL: 'BOOLEAN',
      F.TYPE_STRING: 'STRING', F.TYPE_BYTES: 'BYTES', F.TYPE_ENUM: 'STRING',
  }.get(field.type, 'INTEGER'), None


def _protobuf_field(field, path, seen):
  name = field.name
  if payloads._is_map(field):  # pylint: disable=protected-access
    entry = field.message_type
    key_type, _ = _protobuf_type(entry.fields_by_name['key'], path, seen)
    value_type, value_fields = _protobuf_type(
        entry.fields_by_name['value'], path + '.value', seen)
    value = {'name': 'value', 'type': value_type, 'mode': 'NULLABLE'}
    if value_fields is not None:
      value['fields'] = value_fields
    return {'name': name, 'type': 'RECORD', 'mode': 'REPEATED', 'fields': [
        {'name': 'key', 'type': key_type, 'mode': 'NULLABLE'}, value]}
  kind, fields = _protobuf_type(field, path, seen)
  if payloads._is_repeated(field):  # pylint: disable=protected-access
    mode = 'REPEATED'
  elif getattr(field, 'is_required', False):
    mode = 'REQUIRED'
  else:
    mode = 'NULLABLE'
  out = {'name': name, 'type': kind, 'mode': mode}
  if fields is not None:
    out['fields'] = fields
  return out


def compile_proto(path):
  """A .proto file -> (FileDescriptorSet bytes, its one top-level message's
  full name), with the protoc that grpcio-tools ships (imports of Google's
  well-known types resolve from its bundled include folder)."""
  import importlib.util
  if importlib.util.find_spec('grpc_tools') is None:  # a child runs protoc
    raise SchemaError('%s: compiling a .proto needs grpcio-tools (pip '
                      'install -r requirements.txt), or give a descriptor '
                      'set (protoc --include_imports --descriptor_set_out)'
                      % path)
  import importlib.resources
  import subprocess
  import sys
  include = str(importlib.resources.files('grpc_tools') / '_proto')
  folder = os.path.dirname(os.path.abspath(path))
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'set.pb')
    # In a child process: protoc writes its errors to file descriptor 2 from
    # C++, which no Python redirect catches; here they are read, and the
    # first becomes the one-line error.
    done = subprocess.run(
        [sys.executable, '-m', 'grpc_tools.protoc', '-I', folder, '-I',
         include, '--include_imports', '--descriptor_set_out=' + out,
         os.path.basename(path)], capture_output=True, text=True,
        timeout=120)
    if done.returncode != 0 or not os.path.exists(out):
      said = [l.strip() for l in (done.stderr + done.stdout).splitlines()
              if l.strip()]
      raise SchemaError('%s does not compile: %s' % (
          path, said[0] if said else 'protoc failed'))
    with open(out, 'rb') as f:
      data = f.read()
  return data, _top_message(data, os.path.basename(path), path)


def _top_message(data, file_name, where):
  from google.protobuf import descriptor_pb2
  files = descriptor_pb2.FileDescriptorSet.FromString(data)
  mains = [f for f in files.file if f.name == file_name] or files.file[-1:]
  if not mains or len(mains[-1].message_type) != 1:
    raise SchemaError('%s: a Pub/Sub Protocol Buffer schema has exactly one '
                      'top-level message; this has %d' % (
                          where, len(mains[-1].message_type) if mains else 0))
  main = mains[-1]
  return '.'.join(p for p in (main.package, main.message_type[0].name) if p)


def read_protobuf(path, data):
  """A .proto file's path, or a descriptor set's bytes -> ProtobufRevision."""
  if path.endswith('.proto'):
    if data is not None:  # not a local file (gs://): compile a local copy
      with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(path))
        with open(local, 'wb') as f:
          f.write(data)
        descriptor_set, name = compile_proto(local)
    else:
      descriptor_set, name = compile_proto(path)
  else:
    try:
      name = _top_message(data, None, path)
    except SchemaError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise SchemaError('%s is not a descriptor set: %s' % (path, e))
    descriptor_set = data
  return read_protobuf_set(descriptor_set, name, path)


def read_protobuf_set(descriptor_set, name, where):
  try:
    revision = payloads.ProtobufRevision(descriptor_set, name)
  except Exception as e:  # pylint: disable=broad-except
    raise SchemaError('%s: %s' % (where, str(e).splitlines()[0]))
  protobuf_fields(revision.descriptor)  # refuses what no table holds, now
  return revision


# ------------------------------------------------------------------ files

def fields_of(revision):
  if isinstance(revision, payloads.AvroRevision):
    return avro_fields(revision.schema)
  return protobuf_fields(revision.descriptor)


def merged_fields(revisions):
  """One table for every revision: each field any revision has (in the
  order first seen), NULLABLE unless REQUIRED in all; types must agree."""
  merged = None
  for rid in sorted(revisions, key=lambda r: (r is None, r or '')):
    fields = fields_of(revisions[rid])
    merged = fields if merged is None else _merge(merged, fields, rid)
  return merged


def _merge(left, right, rid, path=''):
  by_name = {f['name']: f for f in right}
  out = []
  for f in left:
    g = by_name.pop(f['name'], None)
    where = '%s.%s' % (path, f['name']) if path else f['name']
    if g is None:
      out.append(dict(f, mode='NULLABLE') if f['mode'] == 'REQUIRED' else f)
      continue
    if f['type'] != g['type'] or (f['mode'] == 'REPEATED') != (
        g['mode'] == 'REPEATED'):
      raise SchemaError('revision %s: field %s is %s %s, another revision '
                        'has %s %s: one table cannot hold both' % (
                            rid, where, g['mode'], g['type'], f['mode'],
                            f['type']))
    merged = dict(f)
    if f['mode'] != g['mode']:
      merged['mode'] = 'NULLABLE'
    if 'fields' in f:
      merged['fields'] = _merge(f['fields'], g['fields'], rid, where)
    out.append(merged)
  out += [dict(g, mode='NULLABLE') if g['mode'] == 'REQUIRED' else g
          for g in by_name.values()]
  return out


SERVICE_SCHEMA = re.compile(r'projects/[^/@]+/schemas/[^/@]+')
_SERVICE_TYPES = {'avro': 'AVRO', 'protobuf': 'PROTOCOL_BUFFER'}


def revision_from_definition(format_name, definition, where):
  """A schema service revision's definition text -> its revision."""
  if format_name == 'avro':
    return read_avro(definition, where)
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, 'schema.proto')
    with open(local, 'w', encoding='utf-8') as f:
      f.write(definition)
    descriptor_set, name = compile_proto(local)
  return read_protobuf_set(descriptor_set, name, where)


REVISION_ID = re.compile(r'[0-9a-f]{8}')  # Pub/Sub's: eight hex characters


class SchemaService(object):
  """Revisions of a schema in Pub/Sub's schema service: ``revisions()``
  lists them (at launch); ``revision(rid)`` fetches one a message names
  that the run did not know (committed since). Messages cannot drive it:
  an id not shaped as Pub/Sub's is not looked up, at most one lookup runs
  every FETCH_SECONDS (others wait for the next message), a failure is
  remembered for RETRY_SECONDS (at most MAX_REMEMBERED of them), and a
  failure is logged at most once a minute. Pickled by name: each worker
  makes its client."""
  RETRY_SECONDS = 60
  FETCH_SECONDS = 1.0
  MAX_REMEMBERED = 1000

  def __init__(self, name, format_name):
    self.name = name
    self.format = format_name
    self._client = None
    self._lock = threading.Lock()
    self._failed = {}
    self._last_fetch = self._last_warning = float('-inf')
    self._unsaid = 0

  def __getstate__(self):
    return {'name': self.name, 'format': self.format}

  def __setstate__(self, state):
    self.__init__(state['name'], state['format'])

  def client(self):
    if self._client is None:
      from google.pubsub_v1.services.schema_service import SchemaServiceClient
      self._client = SchemaServiceClient()
    return self._client

  def _checked(self, schema):
    kind = schema.type_.name
    if kind != _SERVICE_TYPES[self.format]:
      raise SchemaError('%s is a %s schema, not %s (--payload_format)' % (
          self.name, kind, self.format))
    return revision_from_definition(
        self.format, schema.definition, '%s@%s' % (self.name,
                                                   schema.revision_id))

  def revisions(self):
    """{revision id: revision} of every revision the service holds."""
    from google.api_core import exceptions
    from google.pubsub_v1.types import SchemaView
    try:
      listed = list(self.client().list_schema_revisions(
          request={'name': self.name, 'view': SchemaView.FULL}))
    except exceptions.NotFound:
      raise SchemaError('%s: no such schema in Pub/Sub' % self.name)
    except exceptions.GoogleAPIError as e:
      raise SchemaError('%s: Pub/Sub\'s schema service: %s' % (
          self.name, str(e).splitlines()[0]))
    return {s.revision_id: self._checked(s) for s in listed}

  def revision(self, rid):
    """The revision ``rid`` of this schema, or None (not there, not shaped
    as an id, not asked now, or the service did not answer)."""
    if not isinstance(rid, str) or not REVISION_ID.fullmatch(rid):
      return None
    with self._lock:
      now = time.monotonic()
      failed = self._failed.get(rid)
      if failed is not None and now - failed < self.RETRY_SECONDS:
        return None
      if now - self._last_fetch < self.FETCH_SECONDS:
        return None
      self._last_fetch = now
      try:
        from google.pubsub_v1.types import SchemaView
        schema = self.client().get_schema(
            request={'name': '%s@%s' % (self.name, rid),
                     'view': SchemaView.FULL})
        revision = self._checked(schema)
      except Exception as e:  # pylint: disable=broad-except
        if len(self._failed) >= self.MAX_REMEMBERED:
          self._failed.clear()
        self._failed[rid] = now
        self._unsaid += 1
        if now - self._last_warning >= 60:
          logging.getLogger(__name__).warning(
              'schema revision %s@%s: %s (%d failed lookups since the last '
              'such line)', self.name, rid,
              str(e).splitlines()[0] if str(e) else type(e).__name__,
              self._unsaid)
          self._last_warning, self._unsaid = now, 0
        return None
      logging.getLogger(__name__).info(
          'schema revision %s@%s fetched (committed after the launch)',
          self.name, rid)
      return revision


def load(path, format_name, read):
  """--payload_schema -> {revision id or None: revision}. ``read(path)``
  gives a file's bytes (local or gs://); a local folder holds revisions; a
  schema service name gives its revisions."""
  if SERVICE_SCHEMA.fullmatch(path):
    revisions = SchemaService(path, format_name).revisions()
    merged_fields(revisions)
    return revisions
  suffixes = AVRO_SUFFIXES if format_name == 'avro' else PROTOBUF_SUFFIXES
  if os.path.isdir(path):
    names = sorted(n for n in os.listdir(path) if n.endswith(suffixes))
    if format_name == 'protobuf':  # a file another imports is not a revision
      imported = set()
      for n in names:
        if n.endswith('.proto'):
          with open(os.path.join(path, n), encoding='utf-8',
                    errors='replace') as f:
            imported.update(re.findall(
                r'\bimport\s+(?:public\s+|weak\s+)?"([^"]+)"', f.read()))
      names = [n for n in names if n not in imported]
    if not names:
      raise SchemaError('%s holds no %s file (one per revision, named by its '
                        'revision id)' % (path, ' or '.join(suffixes)))
    files = {os.path.splitext(n)[0]: os.path.join(path, n) for n in names}
  else:
    if not path.endswith(suffixes):
      raise SchemaError('%s: a %s schema is a %s file, or a folder of them' % (
          path, format_name, ' or '.join(suffixes)))
    files = {None: path}
  revisions = {}
  for rid, file_path in files.items():
    if format_name == 'avro':
      revisions[rid] = read_avro(read(file_path).decode('utf-8'), file_path)
    elif file_path.endswith('.proto') and os.path.exists(file_path):
      revisions[rid] = read_protobuf(file_path, None)
    else:
      revisions[rid] = read_protobuf(file_path, read(file_path))
  merged_fields(revisions)  # one table holds them all, or say why now
  return revisions
