"""Per-message cost of turning a Pub/Sub message into a row, side by side in
one run: bare ``json.loads``, the sign-in parser, and the schema-driven
parser on a 10-field schema (nested record, repeated record, NUMERIC,
TIMESTAMP, DATE, BOOL, JSON).

    ./run.sh bench parse [--messages 20000] [--write-readme]
"""

import argparse
import gc
import json
import os
import sys
import time

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


class InProcessCalls(object):
  """``udf.Calls`` as the UDF ran before #28: in process, unbounded."""
  def __init__(self, function):
    from transforms import exact_json
    from transforms import udf
    self._function = function.function()
    self._objects = udf.objects
    self._loads = exact_json.loads

  def outcomes(self, datas):
    for data in datas:
      payload, checked = self._loads(data)
      yield ('ok', self._objects(self._function(payload)), checked)


def _typed_decoders():
  """msgspec decoders of the two messages' shapes, as issue 31 proposes:
  a Struct per record, typed fields (the reference for a compiled parse;
  it checks types, not BigQuery's values: timestamps stay text, since
  msgspec rounds a seventh fractional digit)."""
  import decimal
  from typing import List, Optional
  import msgspec

  class Signin(msgspec.Struct, forbid_unknown_fields=True):
    userid: str
    date: str

  class Customer(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    email: Optional[str] = None

  class Item(msgspec.Struct, forbid_unknown_fields=True):
    sku: str
    quantity: int

  class Order(msgspec.Struct, forbid_unknown_fields=True):
    order_id: str
    placed_at: str
    customer: Optional[Customer] = None
    items: Optional[List[Item]] = None
    total: Optional[decimal.Decimal] = None
    paid: Optional[bool] = None
    delivery_date: Optional[str] = None
    channel: Optional[str] = None
    weight_kg: Optional[float] = None
    extra: msgspec.Raw = msgspec.Raw(b'null')
  return {'signin': msgspec.json.Decoder(Signin),
          'orders': msgspec.json.Decoder(Order)}


TYPED = _typed_decoders()


def best(fn, repeat=5):
  """The fastest of ``repeat`` passes, each from a collected heap."""
  return best_of(fn, repeat)[0]


def best_of(fn, repeat=5):
  """(fastest wall-clock pass, fastest CPU-time pass) in seconds, each pass
  from a collected heap (a pass must not pay for the last one's garbage)."""
  wall, cpu = [], []
  for _ in range(repeat):
    gc.collect()
    started, started_cpu = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - started)
    cpu.append(time.process_time() - started_cpu)
  return min(wall), min(cpu)


def interleaved(cases, repeat=5):
  """{name: (fastest wall-clock pass, fastest CPU pass)}, the cases' passes
  taking turns (a slow minute of a noisy machine falls on all of them)."""
  wall = {name: [] for name in cases}
  cpu = {name: [] for name in cases}
  for _ in range(repeat):
    for name, fn in cases.items():
      gc.collect()
      started, started_cpu = time.perf_counter(), time.process_time()
      fn()
      wall[name].append(time.perf_counter() - started)
      cpu[name].append(time.process_time() - started_cpu)
  return {name: (min(wall[name]), min(cpu[name])) for name in cases}


BUNDLE = 2000  # what the ack-after-commit reader hands the runner at most


def bundled(fn, items, outputs_of=None):
  """A pass over ``items`` as a stream runs them: the outputs of a bundle
  of BUNDLE kept until the bundle ends, then released downstream. With
  ``outputs_of`` (a DoFn's process) each call's outputs are taken as the
  runner takes them (here ``list``); else ``fn``'s result is the output."""
  def run():
    for start in range(0, len(items), BUNDLE):
      outputs = [fn(item) for item in items[start:start + BUNDLE]]
      del outputs  # the bundle's outputs go downstream

  def run_outputs():
    for start in range(0, len(items), BUNDLE):
      outputs = [list(outputs_of(item))
                 for item in items[start:start + BUNDLE]]
      del outputs
  return run if outputs_of is None else run_outputs


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--messages', type=int, default=20000)
  parser.add_argument('--write-readme', action='store_true')
  args = parser.parse_args(argv)
  # The collector as main.py sets it for every pipeline, before Beam loads.
  from pipelines.main import GC_THRESHOLD
  gc.set_threshold(*GC_THRESHOLD)
  from apache_beam.io.gcp.pubsub import PubsubMessage

  from transforms import json_messages
  from transforms import signin_messages
  from transforms import schemas
  n = args.messages
  signins = [d for d, _ in publish_signins.messages(n, 0.0, None, 4096)]
  orders = [order(i) for i in range(n)]
  as_messages = lambda payloads: [  # noqa: E731
      PubsubMessage(p, {}, message_id=str(i)) for i, p in enumerate(payloads)]
  # A stream's parse reads messages in the global window (a Pub/Sub read),
  # which ParseMessages tells its step: the stamp is then Beam's own
  # WindowedValue (event_time.in_global_window).
  signin_fn = signin_messages.ParseSigninFn()
  signin_fn.global_window = True
  signin_fn.setup()
  signin_fn.start_bundle()
  schema = schemas.table_from_bigquery_schema(TEN_FIELDS, 'orders')
  orders_fn = json_messages.ParseJsonMessageFn(
      schema, event_time_field='placed_at')
  orders_fn.global_window = True
  orders_fn.setup()
  orders_fn.start_bundle()
  from transforms import udf as udf_lib
  identity = udf_lib.Udf('identity.py:same', 'def same(order):\n  return order\n')
  udf_fn = json_messages.ParseJsonMessageFn(
      schema, event_time_field='placed_at', udf=identity)
  udf_fn.global_window = True
  udf_fn.setup()
  udf_fn.start_bundle()
  # Before #28 the UDF ran in process, unbounded: the same parse with its
  # calls made here, for the side-by-side cost of the worker process.
  in_process_fn = json_messages.ParseJsonMessageFn(
      schema, event_time_field='placed_at', udf=identity)
  in_process_fn.global_window = True
  in_process_fn.setup()
  in_process_fn.start_bundle()
  in_process_fn._udf_calls = InProcessCalls(identity)  # pylint: disable=protected-access
  from transforms import blocks
  # The block cases get steps of their own: a block's parse sets its step's
  # stamp_rows to False (a block has one timestamp), and the per-message
  # cases above must keep stamping each row with its event time, as a
  # stream does (sharing them measured the order without its stamp, until
  # 2026-12-06).
  block_fns = {}
  for name, udf in (('ours', None), ('udf', identity),
                    ('udf_in_process', identity)):
    fn = json_messages.ParseJsonMessageFn(
        schema, event_time_field='placed_at', udf=udf)
    block_fns[name] = json_messages._ParseJsonBlocksFn(fn)  # pylint: disable=protected-access
    block_fns[name].setup()
    block_fns[name].start_bundle()
    if name == 'udf_in_process':
      fn._udf_calls = InProcessCalls(identity)  # setup made a new one  # pylint: disable=protected-access
  signin_msgs, order_msgs = as_messages(signins), as_messages(orders)
  order_blocks = list(blocks.message_blocks(order_msgs))
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
        'msgspec typed (Struct per schema, decode only)': best(
            lambda kind=kind, payloads=payloads: [
                TYPED[kind].decode(p) for p in payloads]),
    }
  # The fixtures (100,000s of messages) are frozen out of the collector, as
  # main.py freezes what a batch run starts with: a pass pays for the
  # garbage its own outputs make, not for scanning the fixtures again.
  gc.collect()
  gc.freeze()
  parse = {}
  for kind, payloads, messages_, fn in (
      ('signin', signins, signin_msgs, signin_fn),
      ('orders', orders, order_msgs, orders_fn)):
    process = fn.process
    parse[kind] = interleaved({
        'json': bundled(json.loads, payloads),
        'ours': bundled(None, messages_, outputs_of=process),
        'json_kept': lambda payloads=payloads: [
            json.loads(p) for p in payloads],
        'ours_kept': lambda messages_=messages_, process=process: [
            list(process(m)) for m in messages_],
    }, repeat=15)
  results = {
      'orders_udf': best(lambda: [list(udf_fn.process(m))
                                  for m in order_msgs]),
      'orders_udf_in_process': best(lambda: [list(in_process_fn.process(m))
                                             for m in order_msgs]),
  }
  for name, fn in block_fns.items():
    results['blocks_' + name] = best(
        lambda fn=fn: [list(fn.process(b)) for b in order_blocks])
  results['orders_ours'] = parse['orders']['ours_kept'][0]  # as the UDF cases
  us = {k: v / n * 1e6 for k, v in results.items()}
  lines = [
      '| message | bare `json.loads` | ours (parse + validate + row) | '
      'ratio | CPU per message, ours | all outputs kept: json.loads / '
      'ours / ratio |',
      '| --- | ---: | ---: | ---: | ---: | ---: |']
  for kind, label in (('signin', 'sign-in (2 fields)'),
                      ('orders', 'order, 10-field schema (nested and '
                       'repeated records)')):
    m = {k: v[0] / n * 1e6 for k, v in parse[kind].items()}
    lines.append('| %s | %.2f us | %.2f us | %.2fx | %.2f us | %.2f / %.2f '
                 'us / %.2fx |' % (
                     label, m['json'], m['ours'], m['ours'] / m['json'],
                     parse[kind]['ours'][1] / n * 1e6, m['json_kept'],
                     m['ours_kept'], m['ours_kept'] / m['json_kept']))
  report = '\n'.join(lines)
  report += ('\n\nA UDF that returns its input (`--udf`), same orders, same '
             'run, per message; since #28 each call runs in a worker process '
             '(bounded by `--udf_timeout_seconds`), before it ran in process '
             'and unbounded:\n\n'
             '| parse of one order | one message an element (a stream) | '
             'blocks of 2,000 (a replay) |\n'
             '| --- | ---: | ---: |\n'
             '| no UDF | %.1f us | %.1f us |\n'
             '| UDF in process (before #28) | %.1f us (%.2fx) | %.1f us '
             '(%.2fx) |\n'
             '| UDF in a worker process (#28) | %.1f us (%.2fx) | %.1f us '
             '(%.2fx) |' % (
                 us['orders_ours'], us['blocks_ours'],
                 us['orders_udf_in_process'],
                 us['orders_udf_in_process'] / us['orders_ours'],
                 us['blocks_udf_in_process'],
                 us['blocks_udf_in_process'] / us['blocks_ours'],
                 us['orders_udf'], us['orders_udf'] / us['orders_ours'],
                 us['blocks_udf'], us['blocks_udf'] / us['blocks_ours']))
  names = list(libraries['signin'])
  report += '\n\nJSON parsers alone, same messages, same run:\n\n' + '\n'.join(
      ['| parser | sign-in | order | exact numbers |', '| --- | ---: | ---: | --- |'] +
      ['| %s | %.2f us | %.2f us | %s |' % (
          name, libraries['signin'][name] / n * 1e6,
          libraries['orders'][name] / n * 1e6,
          {'json.loads': 'no: floats as binary doubles',
           'json.loads(parse_float=Number)': 'yes, but accepts NaN and lone surrogates',
           'orjson.loads': 'no: floats as doubles, no hook; ints over 64 bits refused',
           'msgspec': 'no: floats as doubles',
           'msgspec typed (Struct per schema, decode only)':
               'yes (Decimal; timestamps as text)'}.get(name, 'yes'))
       for name in names])
  print(report)
  if args.write_readme:
    from results import replace_section
    replace_section('parse', 'Last run %s: `./run.sh bench parse --messages %d '
                    '--write-readme`\n\n%s\n' % (
                        time.strftime('%Y-%m-%d'), n, report))


if __name__ == '__main__':
  main()
