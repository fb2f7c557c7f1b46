"""Publish sample sign-in messages, good and bad, with google-cloud-pubsub.

    python -m tools.publish_signins [--count N] [--bad-fraction F] [--topic T]
        [--project P] [--rate R] [--date ISO] [--subscription S]
        [--format json|avro|protobuf] [--encoding binary|json]

--format avro or protobuf encodes each sign-in under data/signin.avsc or
data/signin.proto, with the attributes Pub/Sub sets on a message of a topic
with a schema (googclient_schemaname, googclient_schemaencoding,
googclient_schemarevisionid); bad messages are then bytes that do not decode.

Talks to the emulator when PUBSUB_EMULATOR_HOST is set, else to real Pub/Sub
with your default credentials. Creates the topic (and --subscription) when
missing. Bad messages cycle through every kind the pipeline dead-letters.
"""

import argparse
import collections
import datetime
import json
import os
import random
import sys
import time

BAD_KINDS = ('not_utf8', 'not_json', 'not_object', 'missing_userid',
             'bad_userid', 'missing_date', 'bad_date', 'date_out_of_range',
             'too_large')
MAX_PENDING = 20000  # publish futures held at once


def good_payload(rng, date, users=50):
  return {'userid': str(rng.randint(10000000, 10000000 + users - 1)),
          'date': date}


def bad_payload(kind, rng, date, max_message_bytes, users=50):
  """Bytes that the pipeline must dead-letter with reason ``kind``."""
  good = good_payload(rng, date, users)
  as_json = {
      'not_object': ['93234234', date],
      'missing_userid': {'date': date},
      'bad_userid': {'userid': rng.choice([True, '   ', {'id': 1}, 1.5]),
                     'date': date},
      'missing_date': {'userid': good['userid']},
      'bad_date': {'userid': good['userid'],
                   'date': rng.choice(['yesterday', '17/10/2017', '2017-13-45'])},
      'date_out_of_range': {'userid': good['userid'],
                            'date': '0001-01-01T00:30:00+01:00'},
      'too_large': dict(good, padding='x' * max_message_bytes),
  }
  if kind == 'not_utf8':
    return b'\xff\xfe' + json.dumps(good).encode()
  if kind == 'not_json':
    return json.dumps(good).encode()[:-3]
  return json.dumps(as_json[kind]).encode()


def messages(count, bad_fraction, date, max_message_bytes, seed=7, users=50):
  """(payload bytes, expected reason or None) for ``count`` messages;
  ``date`` is one ISO date, a function of the message's index, or None (now)."""
  rng = random.Random(seed)
  bad_every = int(round(1 / bad_fraction)) if bad_fraction > 0 else 0
  bad_seen = 0
  for i in range(count):
    when = date(i) if callable(date) else (
        date or datetime.datetime.now(datetime.timezone.utc).isoformat())
    if bad_every and i % bad_every == bad_every - 1:
      kind = BAD_KINDS[bad_seen % len(BAD_KINDS)]
      bad_seen += 1
      yield bad_payload(kind, rng, when, max_message_bytes, users), kind
    else:
      yield json.dumps(good_payload(rng, when, users)).encode(), None


SCHEMA_FILES = {'avro': 'signin.avsc', 'protobuf': 'signin.proto'}
DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), 'data')


class SchemaEncoder(object):
  """Sign-ins -> payloads under the shipped topic schema, and the schema
  attributes Pub/Sub would set on them."""
  def __init__(self, fmt, encoding, project, revision='signin01'):
    from transforms import payload_schemas
    self.format, self.encoding = fmt, encoding.upper()
    path = os.path.join(DATA, SCHEMA_FILES[fmt])
    self.attributes = {
        'googclient_schemaname': 'projects/%s/schemas/signin' % project,
        'googclient_schemaencoding': self.encoding,
        'googclient_schemarevisionid': revision}
    if fmt == 'avro':
      import fastavro
      with open(path) as f:
        self._avro = fastavro.parse_schema(json.load(f))
    else:
      self._class = payload_schemas.read_protobuf(path, None)._class  # pylint: disable=protected-access

  def encode(self, signin):
    """{'userid', 'date' (ISO text)} -> payload bytes."""
    import io
    from dateutil import parser as date_parser
    when = date_parser.isoparse(signin['date'])
    if when.tzinfo is None:
      when = when.replace(tzinfo=datetime.timezone.utc)
    if self.format == 'avro':
      import fastavro
      record = {'userid': signin['userid'], 'date': when, 'device': 'WEB'}
      if self.encoding == 'BINARY':
        out = io.BytesIO()
        fastavro.schemaless_writer(out, self._avro, record)
        return out.getvalue()
      out = io.StringIO()
      fastavro.json_writer(out, self._avro, [record])
      return out.getvalue().strip().encode('utf-8')
    message = self._class(userid=signin['userid'], device=1)
    message.date.FromDatetime(when)
    if self.encoding == 'BINARY':
      return message.SerializeToString()
    from google.protobuf import json_format
    return json_format.MessageToJson(message).encode('utf-8')


def schema_messages(encoder, count, bad_fraction, date, users=50):
  """(payload, expected reason or None) under ``encoder``'s schema; a bad
  message is a valid one cut short (not_avro or not_protobuf)."""
  for data, kind in messages(count, bad_fraction, date, 1 << 20, users=users):
    signin = json.loads(data) if kind is None else None
    if signin is None:
      good = encoder.encode(good_payload(random.Random(len(data)), date if (
          isinstance(date, str)) else datetime.datetime.now(
              datetime.timezone.utc).isoformat()))
      yield good[:max(1, len(good) // 2)] + b'\x80', 'not_' + encoder.format
    else:
      yield encoder.encode(signin), None


def ensure_topic(publisher, topic_path, subscription_path=None):
  from google.api_core import exceptions
  try:
    publisher.create_topic(name=topic_path)
  except exceptions.AlreadyExists:
    pass
  if subscription_path:
    from google.cloud import pubsub_v1
    with pubsub_v1.SubscriberClient() as subscriber:
      try:
        subscriber.create_subscription(
            name=subscription_path, topic=topic_path, ack_deadline_seconds=10)
      except exceptions.AlreadyExists:
        pass


def publish(project, topic, count, bad_fraction=0.1, rate=None, date=None,
            subscription=None, max_message_bytes=1 << 20, users=50,
            fmt='json', encoding='binary', revision='signin01'):
  """Publishes and returns (number published, message ids, reasons by kind)."""
  encoder = None if fmt == 'json' else SchemaEncoder(fmt, encoding, project,
                                                     revision)
  from google.cloud import pubsub_v1
  publisher = pubsub_v1.PublisherClient(
      batch_settings=pubsub_v1.types.BatchSettings(
          max_messages=500, max_bytes=4 << 20, max_latency=0.05))
  topic_path = publisher.topic_path(project, topic)
  ensure_topic(publisher, topic_path, subscription and
               pubsub_v1.SubscriberClient.subscription_path(project, subscription))
  futures, ids, kinds = collections.deque(), [], {}
  started = time.monotonic()
  generated = messages(count, bad_fraction, date, max_message_bytes,
                       users=users) if encoder is None else schema_messages(
                           encoder, count, bad_fraction, date, users)
  attributes = encoder.attributes if encoder is not None else {}
  for i, (data, kind) in enumerate(generated):
    futures.append(publisher.publish(topic_path, data, sample_index=str(i),
                                     **attributes))
    # A long run keeps ids, not a million futures holding their messages.
    while len(futures) > MAX_PENDING or (futures and futures[0].done()):
      ids.append(futures.popleft().result(timeout=60))
    kinds[kind or 'valid'] = kinds.get(kind or 'valid', 0) + 1
    if rate:
      delay = started + (i + 1) / rate - time.monotonic()
      if delay > 0:
        time.sleep(delay)
  ids.extend(f.result(timeout=60) for f in futures)  # batched, not one by one
  return len(ids), ids, kinds


def main(argv=None):
  parser = argparse.ArgumentParser(prog='publish', description=__doc__.split(
      '\n\n')[0])
  parser.add_argument('--count', type=int, default=1000)
  parser.add_argument('--bad-fraction', type=float, default=0.1,
                      help='share of bad messages, cycling through every kind')
  parser.add_argument('--topic', default='signins')
  parser.add_argument('--project', default=os.environ.get(
      'PUBSUB_PROJECT_ID', 'local-project'))
  parser.add_argument('--subscription', default=None,
                      help='also create this subscription on the topic')
  parser.add_argument('--rate', type=float, default=None,
                      help='messages per second (default: as fast as possible)')
  parser.add_argument('--date', default=None,
                      help='date of every message (default: now, so live '
                      'windows fill)')
  parser.add_argument('--users', type=int, default=50,
                      help='how many distinct user ids the valid sign-ins use')
  parser.add_argument('--max-message-bytes', type=int, default=1 << 20,
                      help='the pipeline\'s limit; too_large messages exceed it')
  parser.add_argument('--format', default='json',
                      choices=['json', 'avro', 'protobuf'],
                      help='payloads as JSON, or under data/signin.avsc or '
                      'data/signin.proto with the schema attributes')
  parser.add_argument('--encoding', default='binary',
                      choices=['binary', 'json'],
                      help='Pub/Sub\'s encoding of avro and protobuf payloads')
  parser.add_argument('--schema-revision', default='signin01',
                      help='the googclient_schemarevisionid to set')
  args = parser.parse_args(argv)
  if not 0 <= args.bad_fraction <= 1:
    parser.error('--bad-fraction must be between 0 and 1')
  if args.count < 0:
    parser.error('--count must be 0 or more')
  if args.users < 1:
    parser.error('--users must be 1 or more')
  target = os.environ.get('PUBSUB_EMULATOR_HOST') or 'Google Cloud Pub/Sub'
  from google.api_core import exceptions
  try:
    n, ids, kinds = publish(args.project, args.topic, args.count,
                            args.bad_fraction, args.rate, args.date,
                            args.subscription, args.max_message_bytes,
                            args.users, args.format, args.encoding,
                            args.schema_revision)
  except (exceptions.GoogleAPIError, ValueError) as e:
    print('publish: error: %s' % str(e).splitlines()[0], file=sys.stderr)
    return 1
  print('published %d messages to projects/%s/topics/%s on %s: %s' % (
      n, args.project, args.topic, target,
      ', '.join('%s=%d' % kv for kv in sorted(kinds.items()))))
  if ids:
    print('message ids %s .. %s' % (min(ids, key=_id_key), max(ids, key=_id_key)))
  return 0


def _id_key(message_id):
  return (len(message_id), message_id)


if __name__ == '__main__':
  sys.exit(main())
