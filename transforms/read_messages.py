"""The messages a stream pipeline reads, as PubsubMessages, from the source
its flags name: a Pub/Sub subscription or topic (Beam's ReadFromPubSub, with
attributes, ids and publish times) or JSON-lines files and archives (a
replay). A local run may read the subscription with a reader of its own in
place of Beam's read (``local_runner``): nothing here knows it."""

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import message_files
from transforms.blocks import MessageBlock


class ReadMessages(beam.PTransform):
  """PBegin -> PubsubMessages from ``input_file``, ``subscription`` or
  ``topic`` (exactly one). ``blocks``: a replay's messages come in
  MessageBlocks (``transforms.blocks``), for a graph that does not window."""
  def __init__(self, input_file=None, subscription=None, topic=None,
               timestamp_attribute=None, blocks=False):
    super().__init__()
    self._blocks = bool(blocks and input_file)
    self.with_output_types(MessageBlock if self._blocks else PubsubMessage)
    self._input_file = input_file
    self._subscription = subscription
    self._topic = topic
    self._timestamp_attribute = timestamp_attribute

  @classmethod
  def from_flags(cls, opts, blocks=False):
    return cls(opts.input_file, opts.input_subscription, opts.input_topic,
               opts.timestamp_attribute, blocks)

  @property
  def blocks(self):
    """Whether this read yields MessageBlocks (a replay asked for them)."""
    return self._blocks

  def expand(self, pbegin):
    if self._input_file:
      return pbegin | 'ReadMessageFiles' >> (
          message_files.ReadMessagesFromFiles(
              self._input_file, self._blocks))
    return pbegin | 'ReadFromPubSub' >> beam.io.ReadFromPubSub(
        subscription=self._subscription, topic=self._topic,
        with_attributes=True, timestamp_attribute=self._timestamp_attribute)
