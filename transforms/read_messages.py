"""The messages a stream pipeline reads, as PubsubMessages, from the source
its flags name: a Pub/Sub subscription or topic (Beam's ReadFromPubSub, with
attributes, ids and publish times), JSON-lines files (a replay), or a local
run's ack-after-commit reader in place of Beam's read."""

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

from transforms import message_files
from transforms.blocks import MessageBlock


class ReadMessages(beam.PTransform):
  """PBegin -> PubsubMessages from ``input_file``, ``subscription`` or
  ``topic`` (exactly one), or from ``local_reader`` (a PTransform) when a
  local run reads the subscription itself. ``count_files`` (a local run's)
  hears of each replayed file done. ``blocks``: a replay's messages come in
  MessageBlocks (``transforms.blocks``), for a graph that does not window."""
  def __init__(self, input_file=None, subscription=None, topic=None,
               timestamp_attribute=None, local_reader=None, count_files=None,
               blocks=False):
    super().__init__()
    self._blocks = bool(blocks and input_file)
    self.with_output_types(MessageBlock if self._blocks else PubsubMessage)
    self._count_files = count_files
    self._input_file = input_file
    self._subscription = subscription
    self._topic = topic
    self._timestamp_attribute = timestamp_attribute
    self._local_reader = local_reader

  @classmethod
  def from_flags(cls, opts, local_reader=None, count_files=None, blocks=False):
    return cls(opts.input_file, opts.input_subscription, opts.input_topic,
               opts.timestamp_attribute, local_reader, count_files, blocks)

  @property
  def blocks(self):
    """Whether this read yields MessageBlocks (a replay asked for them)."""
    return self._blocks

  def expand(self, pbegin):
    if self._input_file:
      return pbegin | 'ReadMessageFiles' >> (
          message_files.ReadMessagesFromFiles(
              self._input_file, self._count_files, self._blocks))
    if self._local_reader is not None:
      return pbegin | 'ReadFromPubSubAckOnCommit' >> self._local_reader
    return pbegin | 'ReadFromPubSub' >> beam.io.ReadFromPubSub(
        subscription=self._subscription, topic=self._topic,
        with_attributes=True, timestamp_attribute=self._timestamp_attribute)
