"""The messages a stream pipeline reads, as PubsubMessages, from the source
its flags name: a Pub/Sub subscription or topic (Beam's ReadFromPubSub, with
attributes, ids and publish times) or JSON-lines files and archives (a
replay). A local run may read the subscription with a reader of its own in
place of Beam's read (``local_runner``): nothing here knows it."""

import copy
import logging

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import message_files
from transforms.blocks import MessageBlock
from transforms.blocks import ReadBlock
from transforms.blocks import messages_of


class ReadMessages(beam.PTransform):
  """PBegin -> PubsubMessages from ``input_file``, ``subscription`` or
  ``topic`` (exactly one). ``blocks``: a replay's messages come in
  MessageBlocks (``transforms.blocks``), for a graph that does not window."""
  def __init__(self, input_file=None, subscription=None, topic=None,
               timestamp_attribute=None, blocks=False, id_attribute=None):
    super().__init__()
    self._id_attribute = id_attribute
    self._blocks = bool(blocks and input_file)
    self.with_output_types(ReadBlock if self._blocks else PubsubMessage)
    self._input_file = input_file
    self._subscription = subscription
    self._topic = topic
    self._timestamp_attribute = timestamp_attribute

  @classmethod
  def from_flags(cls, opts, blocks=False):
    return cls(opts.input_file, opts.input_subscription, opts.input_topic,
               opts.timestamp_attribute, blocks,
               getattr(opts, 'id_attribute', None))

  @property
  def blocks(self):
    """Whether this read yields MessageBlocks (a replay asked for them)."""
    return self._blocks

  def expand(self, pbegin):
    if self._input_file:
      messages = pbegin | 'ReadMessageFiles' >> (
          message_files.ReadMessagesFromFiles(
              self._input_file, self._blocks))
    else:
      messages = pbegin | 'ReadFromPubSub' >> beam.io.ReadFromPubSub(
          subscription=self._subscription, topic=self._topic,
          with_attributes=True, timestamp_attribute=self._timestamp_attribute,
          id_label=self._id_attribute)
    if not self._id_attribute:
      return messages
    keyed = KeyedByAttribute(self._id_attribute)
    return messages | 'KeyByIdAttribute' >> beam.Map(
        keyed.block if self._blocks else keyed.message).with_output_types(
            ReadBlock if self._blocks else PubsubMessage)


class KeyedByAttribute(object):
  """A message with its ``name`` attribute as its message id (--id_attribute),
  as ``NAME=VALUE``: the event's own id, which a publisher's retry keeps
  under a new message id; everything downstream keys by it. The name keeps
  these keys apart from message ids (which never hold '='), so an attribute
  equal to another message's id cannot take that message's place. A copy:
  what the reader set beside the message (``given_up``, ``batch``) stays.
  Without the attribute (or with an empty one) the message keeps its id,
  said once in the log."""
  def __init__(self, name):
    self._name = name
    self._said = False

  def message(self, message):
    key = (message.attributes or {}).get(self._name)
    if not key:
      if not self._said:
        self._said = True
        logging.getLogger(__name__).warning(
            'a message has no %r attribute (--id_attribute): it keeps its '
            'message id %r (said once)', self._name, message.message_id)
      return message
    keyed = copy.copy(message)
    keyed.message_id = '%s=%s' % (self._name, key)
    return keyed

  def block(self, block):
    return MessageBlock(self.message(m) for m in messages_of(block))
