"""Storing what a message pipeline produced: rows to their table, and every
dead letter (the parse step's, and each row the warehouse refused, as
``sink_rejected``) to the dead-letter table. Nothing is dropped silently: a
dead letter the dead-letter table itself refuses is logged as an error.

A destination is a BigQuery table spec or a local DuckDB file (the same
schema either way).
"""

import logging
from typing import Tuple

import apache_beam as beam

from storage import table_specs
from transforms import bigquery_sink
from transforms import blocks
from transforms import dead_letter_topic
from transforms import dead_letters
from transforms import duckdb_sink

_LOG = logging.getLogger(__name__)
Row = dead_letters.Row
RowBlock = blocks.RowBlock


@beam.typehints.with_input_types(Row)
class WriteTable(beam.PTransform):
  """Rows -> the table of ``destination`` (BigQuery or DuckDB); returns the
  refused rows as (row, error) pairs. ``duckdb_options`` go to WriteToDuckDB
  when the table is local; ``bigquery_method`` and ``truncate`` to
  WriteRowsToBigQuery (a local table is emptied before the run instead).
  ``blocks``: the input is RowBlocks (``transforms.blocks``)."""
  def __init__(self, destination, bigquery_method='default', replace=False,
               write_time_column=None, duckdb_options=None, truncate=False,
               blocks=False):
    super().__init__()
    self._blocks = blocks
    if blocks:
      self.with_input_types(RowBlock)
    self._truncate = truncate
    self._destination = destination
    self._method = bigquery_method
    self._replace = replace
    self._write_time_column = write_time_column
    self._duckdb_options = duckdb_options or {}

  def expand(self, rows):
    spec, schema = self._destination.spec, self._destination.schema
    if table_specs.is_local_warehouse(spec):
      options = dict({'replace': self._replace, 'hold_connection': True},
                     **self._duckdb_options)
      return rows | 'WriteToDuckDB' >> duckdb_sink.WriteToDuckDB(
          spec, schema, write_time_column=self._write_time_column,
          blocks=self._blocks,
          **options)
    if self._blocks:
      rows = rows | 'UnblockRows' >> beam.FlatMap(
          blocks.unblocked).with_output_types(Row)
    return rows | 'WriteToBigQuery' >> bigquery_sink.WriteRowsToBigQuery(
        spec, schema, self._method, truncate=self._truncate,
        write_time_column=self._write_time_column,
        table_parameters=self._destination.layout.bigquery_parameters())


class StoreRowsAndDeadLetters(beam.PTransform):
  """(rows, dead letters) -> their tables (and the dead letters to
  ``dead_letter_topic`` first, when given); returns every dead letter
  stored or tried (the parse step's and the warehouse's refusals).
  ``row_blocks``: the rows come in RowBlocks (a bounded replay's).
  ``settles_dead_letters``: the message ids a redrive feeds back; in DuckDB
  their dead letters are marked redriven in the transaction that stores
  their rows (``transforms.redriven``)."""
  def __init__(self, rows_to, dead_letters_to, bigquery_method='default',
               write_time_column=None, rows_duckdb_options=None,
               dead_letter_topic=None, row_blocks=False,
               settles_dead_letters=None):
    super().__init__()
    if settles_dead_letters is not None and table_specs.is_local_warehouse(
        rows_to.spec):
      from transforms import redriven
      rows_duckdb_options = dict(rows_duckdb_options or {})
      rows_duckdb_options['with_inserted'] = redriven.MarkRedrivenWithTheRows(
          dead_letters_to.schema.name, settles_dead_letters,
          then=rows_duckdb_options.get('with_inserted'))
    self._row_blocks = row_blocks
    self._topic = dead_letter_topic
    self._rows_to = rows_to
    self._dead_letters_to = dead_letters_to
    self._method = bigquery_method
    self._write_time_column = write_time_column
    self._rows_duckdb_options = rows_duckdb_options

  def expand(self, rows_and_dead_letters):
    rows, dead = rows_and_dead_letters
    refused_rows = rows | 'WriteRows' >> WriteTable(
        self._rows_to, self._method, write_time_column=self._write_time_column,
        duckdb_options=self._rows_duckdb_options, blocks=self._row_blocks)
    refused_dead = (
        refused_rows
        | 'RefusedRowsToDeadLetters' >> beam.Map(
            dead_letters.refused_row_dead_letter))
    all_dead = (dead, refused_dead) | 'AllDeadLetters' >> beam.Flatten()
    to_table = all_dead
    if self._topic:  # the topic first: the table after it
      to_table = all_dead | 'PublishDeadLetters' >> (
          dead_letter_topic.PublishDeadLetters(self._topic))
    lost = to_table | 'WriteDeadLetters' >> WriteTable(
        self._dead_letters_to, self._method)
    _ = lost | 'LogRefusedDeadLetters' >> beam.Map(_log_refused_dead_letter)
    return all_dead


def _log_refused_dead_letter(refused: Tuple[Row, str]) -> None:
  row, error = refused
  _LOG.error('the dead-letter table refused message %s (%s): %s',
             row.get('message_id'), row.get('reason'), error)
