"""Per-message cost of turning a Pub/Sub message into a row, side by side in
one run: bare ``json.loads``, the sign-in parser, and the schema-driven
parser on a 10-field schema (nested record, repeated record, NUMERIC,
TIMESTAMP, DATE, BOOL, JSON).

    ./run.sh bench parse [--messages 20000] [--write-readme]
"""

import argparse
import json
import os
import sys
import time
import timeit

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from tools import publish_signins  # noqa: E402

TEN_FIELDS = [
    {'name': 'order_id', 'type': 'STRING', 'mode': 'REQUIRED'},
    {'name': 'placed_at', 'type': 'TIMESTAMP', 'mode': 'REQUIRED'},
    {'name': 'customer', 'type': 'RECORD', 'fields': [
        {'name': 'id', 'type': 'INT64', 'mode': 'REQUIRED'},
        {'name': 'email', 'type': 'STRING'}]},
    {'name': 'items', 'type': 'RECORD', 'mode': 'REPEATED', 'fields': [
        {'name': 'sku', 'type': 'STRING', 'mode': 'REQUIRED'},
        {'name': 'quantity', 'type': 'INT64', 'mode': 'REQUIRED'}]},
    {'name': 'total', 'type': 'NUMERIC'},
    {'name': 'paid', 'type': 'BOOL'},
    {'name': 'delivery_date', 'type': 'DATE'},
    {'name': 'channel', 'type': 'STRING'},
    {'name': 'weight_kg', 'type': 'FLOAT64'},
    {'name': 'extra', 'type': 'JSON'},
]


def order(i):
  return json.dumps({
      'order_id': 'A-%d' % i, 'placed_at': '2026-11-28T09:15:%02dZ' % (i % 60),
      'customer': {'id': i, 'email': 'c%d@example.com' % i},
      'items': [{'sku': 'tea', 'quantity': 2}, {'sku': 'cup', 'quantity': 1}],
      'total': '21.50', 'paid': True, 'delivery_date': '2026-12-01',
      'channel': 'web', 'weight_kg': 1.25, 'extra': {'gift': i % 2 == 0},
  }).encode()


def best(fn, repeat=5):
  return min(timeit.repeat(fn, number=1, repeat=repeat))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--messages', type=int, default=20000)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  from apache_beam.io.gcp.pubsub import PubsubMessage

  from transforms import json_messages
  from transforms import signin_messages
  from transforms import schemas
  n = args.messages
  signins = [d for d, _ in publish_signins.messages(n, 0.0, None, 4096)]
  orders = [order(i) for i in range(n)]
  as_messages = lambda payloads: [  # noqa: E731
      PubsubMessage(p, {}, message_id=str(i)) for i, p in enumerate(payloads)]
  signin_fn = signin_messages.ParseSigninFn()
  signin_fn.setup()
  signin_fn.start_bundle()
  schema = schemas.table_from_bigquery_schema(TEN_FIELDS, 'orders')
  orders_fn = json_messages.ParseJsonMessageFn(
      schema, event_time_field='placed_at')
  orders_fn.setup()
  orders_fn.start_bundle()
  from transforms import udf as udf_lib
  identity = udf_lib.Udf('identity.py:same', 'def same(order):\n  return order\n')
  udf_fn = json_messages.ParseJsonMessageFn(
      schema, event_time_field='placed_at', udf=identity)
  udf_fn.setup()
  udf_fn.start_bundle()
  signin_msgs, order_msgs = as_messages(signins), as_messages(orders)
  import msgspec
  import orjson
  from transforms import exact_json
  libraries = {}
  for kind, payloads in (('signin', signins), ('orders', orders)):
    libraries[kind] = {
        'json.loads': best(lambda: [json.loads(p) for p in payloads]),
        'json.loads(parse_float=Number)': best(
            lambda: [json.loads(p, parse_float=exact_json.Number) for p in payloads]),
        'orjson.loads': best(lambda: [orjson.loads(p) for p in payloads]),
        'msgspec': best(lambda: [msgspec.json.decode(p) for p in payloads]),
        'exact_json.loads (msgspec, number text kept)': best(
            lambda: [exact_json.loads(p) for p in payloads]),
    }
  results = {
      'signin_json': best(lambda: [json.loads(p) for p in signins]),
      'signin_ours': best(lambda: [list(signin_fn.process(m))
                                   for m in signin_msgs]),
      'orders_json': best(lambda: [json.loads(p) for p in orders]),
      'orders_ours': best(lambda: [list(orders_fn.process(m))
                                   for m in order_msgs]),
      'orders_udf': best(lambda: [list(udf_fn.process(m))
                                  for m in order_msgs]),
  }
  us = {k: v / n * 1e6 for k, v in results.items()}
  report = '\n'.join([
      '| message | bare `json.loads` | ours (parse + validate + row) | ratio |',
      '| --- | ---: | ---: | ---: |',
      '| sign-in (2 fields) | %.1f us | %.1f us | %.1fx |' % (
          us['signin_json'], us['signin_ours'],
          us['signin_ours'] / us['signin_json']),
      '| order, 10-field schema (nested and repeated records) | %.1f us | '
      '%.1f us | %.1fx |' % (us['orders_json'], us['orders_ours'],
                             us['orders_ours'] / us['orders_json']),
  ])
  report += ('\n\nA UDF that returns its input (`--udf`), same orders, same '
             'run: %.1f us against %.1f us without, %.2fx the parse step '
             '(goal: at most 1.5x).' % (
                 us['orders_udf'], us['orders_ours'],
                 us['orders_udf'] / us['orders_ours']))
  names = list(libraries['signin'])
  report += '\n\nJSON parsers alone, same messages, same run:\n\n' + '\n'.join(
      ['| parser | sign-in | order | exact numbers |', '| --- | ---: | ---: | --- |'] +
      ['| %s | %.2f us | %.2f us | %s |' % (
          name, libraries['signin'][name] / n * 1e6,
          libraries['orders'][name] / n * 1e6,
          {'json.loads': 'no: floats as binary doubles',
           'json.loads(parse_float=Number)': 'yes, but accepts NaN and lone surrogates',
           'orjson.loads': 'no: floats as doubles, no hook; ints over 64 bits refused',
           'msgspec': 'no: floats as doubles'}.get(name, 'yes'))
       for name in names])
  print(report)
  if args.write_readme:
    from results import replace_section
    replace_section('parse', 'Last run %s: `./run.sh bench parse --messages %d '
                    '--write-readme`\n\n%s\n' % (
                        time.strftime('%Y-%m-%d'), n, report))


if __name__ == '__main__':
  main()
