"""Per-message cost of an Avro or Protocol Buffer payload turned into a
validated row, side by side in one run with the bare decode of the same
messages: fastavro's schemaless read, protobuf's ParseFromString (issue 30:
at most 2x each).

    ./run.sh bench payload [--messages 20000] [--write-readme]
"""

import argparse
import datetime
import decimal
import io
import json
import os
import re
import sys
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

UTC = datetime.timezone.utc
# A 10-field order: a nested record, a repeated record, a decimal, a
# timestamp, a date, an enum, a nullable string, a double and a map.
ORDER_AVRO = {
    'type': 'record', 'name': 'Order', 'fields': [
        {'name': 'order_id', 'type': 'string'},
        {'name': 'placed_at', 'type': {'type': 'long',
                                       'logicalType': 'timestamp-micros'}},
        {'name': 'customer', 'type': {'type': 'record', 'name': 'Customer',
                                      'fields': [
                                          {'name': 'id', 'type': 'long'},
                                          {'name': 'email',
                                           'type': ['null', 'string']}]}},
        {'name': 'items', 'type': {'type': 'array', 'items': {
            'type': 'record', 'name': 'Item', 'fields': [
                {'name': 'sku', 'type': 'string'},
                {'name': 'quantity', 'type': 'int'}]}}},
        {'name': 'total', 'type': {'type': 'bytes', 'logicalType': 'decimal',
                                   'precision': 10, 'scale': 2}},
        {'name': 'paid', 'type': 'boolean'},
        {'name': 'delivery_date', 'type': {'type': 'int',
                                           'logicalType': 'date'}},
        {'name': 'channel', 'type': {'type': 'enum', 'name': 'Channel',
                                     'symbols': ['WEB', 'APP', 'SHOP']}},
        {'name': 'weight_kg', 'type': 'double'},
        {'name': 'tags', 'type': {'type': 'map', 'values': 'string'}},
    ]}
ORDER_PROTO = '''syntax = "proto3";
package bench;
import "google/protobuf/timestamp.proto";
message Order {
  message Customer { int64 id = 1; string email = 2; }
  message Item { string sku = 1; int32 quantity = 2; }
  enum Channel { WEB = 0; APP = 1; SHOP = 2; }
  string order_id = 1;
  google.protobuf.Timestamp placed_at = 2;
  Customer customer = 3;
  repeated Item items = 4;
  string total = 5;
  bool paid = 6;
  int32 delivery_days = 7;
  Channel channel = 8;
  double weight_kg = 9;
  map<string, string> tags = 10;
}
'''


def avro_orders(n):
  import fastavro
  parsed = fastavro.parse_schema(ORDER_AVRO)
  out = []
  for i in range(n):
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, {
        'order_id': 'A-%d' % i,
        'placed_at': datetime.datetime(2026, 11, 28, 9, 15, i % 60,
                                       tzinfo=UTC),
        'customer': {'id': i, 'email': 'c%d@example.com' % i},
        'items': [{'sku': 'tea', 'quantity': 2}, {'sku': 'cup',
                                                  'quantity': 1}],
        'total': decimal.Decimal('21.50'), 'paid': True,
        'delivery_date': datetime.date(2026, 12, 1), 'channel': 'WEB',
        'weight_kg': 1.25, 'tags': {'gift': 'yes'}})
    out.append(buf.getvalue())
  return out


def proto_orders(revision, n):
  out = []
  for i in range(n):
    m = revision._class(order_id='A-%d' % i, total='21.50', paid=True,  # pylint: disable=protected-access
                        delivery_days=20423, channel=1, weight_kg=1.25)
    m.placed_at.seconds = 1795857300 + i % 60
    m.customer.id = i
    m.customer.email = 'c%d@example.com' % i
    m.items.add(sku='tea', quantity=2)
    m.items.add(sku='cup', quantity=1)
    m.tags['gift'] = 'yes'
    out.append(m.SerializeToString())
  return out


def per_message(fn, items, repeat=5):
  best = min(timeit.repeat(lambda: fn(items), number=1, repeat=repeat))
  return best / len(items) * 1e6


def parse_step(fmt, revisions):
  from apache_beam.utils.timestamp import Timestamp
  from transforms import json_messages
  from transforms import payload_schemas
  from transforms import payloads
  from transforms import schemas
  schema = schemas.table_from_bigquery_schema(
      payload_schemas.merged_fields(revisions), 'orders')
  fn = json_messages.ParseJsonMessageFn(
      schema, payloads=payloads.SchemaPayloads(fmt, revisions))
  fn.setup()
  fn.start_bundle()
  now = Timestamp(0)

  def run(messages):
    for message in messages:
      fn._one(message, now)  # pylint: disable=protected-access
  return run, fn


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--messages', type=int, default=20000)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  import tempfile
  import fastavro
  from apache_beam.io.gcp.pubsub import PubsubMessage
  from transforms import payload_schemas
  n = args.messages
  avro_revisions = {None: payload_schemas.read_avro(json.dumps(ORDER_AVRO),
                                                    'order.avsc')}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'order.proto')
    with open(path, 'w') as f:
      f.write(ORDER_PROTO)
    proto_revision = payload_schemas.read_protobuf(path, None)
  proto_revisions = {None: proto_revision}
  results = []

  datas = avro_orders(n)
  messages = [PubsubMessage(d, {}, message_id=str(i))
              for i, d in enumerate(datas)]
  parsed = fastavro.parse_schema(ORDER_AVRO)

  def bare_avro(items):
    read = fastavro.schemaless_reader
    for d in items:
      read(io.BytesIO(d), parsed, None)
  ours, fn = parse_step('avro', avro_revisions)
  ours(messages[:50])
  assert fn._rows == 50, 'the benchmark orders must be rows'  # pylint: disable=protected-access
  results.append(('Avro, binary (10 fields)', 'fastavro schemaless_reader',
                  per_message(bare_avro, datas), per_message(ours, messages)))

  datas = proto_orders(proto_revision, n)
  messages = [PubsubMessage(d, {}, message_id=str(i))
              for i, d in enumerate(datas)]
  cls = proto_revision._class  # pylint: disable=protected-access

  def bare_proto(items):
    for d in items:
      cls().ParseFromString(d)
  from google.protobuf import json_format

  def proto_to_dict(items):
    for d in items:
      json_format.MessageToDict(cls.FromString(d),
                                preserving_proto_field_name=True)
  ours, fn = parse_step('protobuf', proto_revisions)
  ours(messages[:50])
  assert fn._rows == 50, 'the benchmark orders must be rows'  # pylint: disable=protected-access
  mine = per_message(ours, messages)
  results.append(('Protocol Buffers, binary (10 fields)', 'ParseFromString',
                  per_message(bare_proto, datas), mine))
  results.append(('Protocol Buffers, binary (10 fields)',
                  'ParseFromString + json_format.MessageToDict',
                  per_message(proto_to_dict, datas), mine))

  lines = ['| payload | bare decode | bare | ours (decode + validate + row) '
           '| ratio |', '| --- | --- | ---: | ---: | ---: |']
  for name, bare_name, bare, ours in results:
    lines.append('| %s | %s | %.2f us | %.2f us | %.2fx |' % (
        name, bare_name, bare, ours, ours / bare))
  from google.protobuf.internal import api_implementation
  text = '\n'.join(lines) + (
      '\n\nprotobuf runtime: %s; %d messages, best of 5 passes each.' % (
          api_implementation.Type(), n))
  print(text)
  if args.write_readme:
    readme = os.path.join(HERE, 'README.md')
    with open(readme, encoding='utf-8') as f:
      old = f.read()
    block = ('<!-- payload results -->\nLast run %s: `./run.sh bench payload '
             '--messages %d --write-readme`\n\n%s\n<!-- end payload results -->'
             % (datetime.date.today().isoformat(), n, text))
    new = re.sub(r'<!-- payload results -->.*<!-- end payload results -->',
                 lambda _: block, old, flags=re.S)
    with open(readme, 'w', encoding='utf-8') as f:
      f.write(new)


if __name__ == '__main__':
  main()
