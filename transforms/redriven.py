"""What a redrive feeds the pipeline's own graph, and how it settles the dead
letters it moved: stored dead letters back into the messages they were, and,
in the transaction that stores a redriven message's rows in DuckDB, its dead
letter marked ``redriven_at`` (so rows + waiting dead letters = messages at
every instant, even after a kill -9).

A dead letter keeps the whole message (payload, attributes, id) except for
``too_large`` (a prefix) and ``sink_rejected`` (the refused row): those two
are never redriven.
"""

import datetime

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage

NOT_REDRIVEN = ('too_large', 'sink_rejected')


def message_of(letter):
  """A stored dead letter (a dict by column) -> the message it was."""
  return PubsubMessage(bytes(letter.get('payloadBytes') or b''), {
      a['key']: a['value'] for a in (letter.get('attributes') or [])},
                       message_id=letter['message_id'])


class DeadLetterMessages(beam.PTransform):
  """PBegin -> the messages of ``letters`` (stored dead letters, read by the
  redrive before the run), in place of a pipeline's Pub/Sub or file read.
  ``message_ids``: theirs, for settling them with their rows."""
  def __init__(self, letters):
    super().__init__()
    self._messages = [message_of(letter) for letter in letters]
    self.message_ids = frozenset(m.message_id for m in self._messages)
    self.blocks = False  # what ReadMessages says of a replay's read

  def expand(self, pbegin):
    return pbegin | 'DeadLetters' >> beam.Create(
        self._messages, reshuffle=False).with_output_types(PubsubMessage)


def base_id(row_id, message_ids):
  """The redriven message a stored row's id names, or None: a row's id is
  its message's, or ``ID#N`` for the N-th row of a message a UDF fanned
  out. An id that could be either (message ``A#0`` and a fan-out of ``A``
  both redriven) is ambiguous: None."""
  if row_id is None:
    return None
  base, sep, _ = row_id.rpartition('#')
  fanned = bool(sep) and base in message_ids
  if row_id in message_ids:
    return None if fanned else row_id
  return base if fanned else None


def single_row_ids(row_ids, message_ids):
  """The redriven messages among ``message_ids`` whose one row is among
  ``row_ids``: what the rows' transaction may mark. A fanned-out message is
  marked after the run, once all its rows are stored (a kill -9 between two
  of its rows' inserts leaves it waiting, and the next redrive adds the
  rest)."""
  return {r for r in row_ids if base_id(r, message_ids) == r}


def stayed_messages(stayed_ids, message_ids):
  """The redriven messages a dead letter of the run names: its own id, and
  for a refused fan-out row ``ID#N`` its message ``ID`` (a message stays
  when any of its rows is refused)."""
  found = set()
  for dead_id in stayed_ids:
    if dead_id in message_ids:
      found.add(dead_id)
    if dead_id is not None:
      base, sep, _ = dead_id.rpartition('#')
      if sep and base in message_ids:
        found.add(base)  # ambiguous ids: both stay (never marked wrongly)
  return found


class MarkRedrivenWithTheRows(object):
  """A DuckDB rows sink's ``with_inserted``: marks the dead letters of the
  redriven messages whose rows were just stored, in the same transaction,
  then calls ``then`` (the pipeline's own, e.g. the counts)."""
  def __init__(self, dead_letter_table, message_ids, then=None):
    self._table = dead_letter_table
    self._ids = frozenset(message_ids)
    self._then = then

  def __call__(self, con, rows):
    if self._then is not None:
      self._then(con, rows)
    ids = single_row_ids((r.get('message_id') for r in rows), self._ids)
    if ids:
      mark_duckdb(con, self._table, ids)


def mark_duckdb(con, table, ids, now=None):
  """Marks the waiting dead letters of ``ids`` in DuckDB table ``table``."""
  con.execute(
      'UPDATE "%s" SET redriven_at = ? WHERE redriven_at IS NULL AND '
      'message_id IN (SELECT unnest(?))' % table,
      [now or datetime.datetime.now(datetime.timezone.utc), sorted(ids)])
