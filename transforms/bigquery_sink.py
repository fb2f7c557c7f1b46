"""Rows -> a BigQuery table through Beam's WriteToBigQuery, the schema from
code (``schemas``), returning the rows BigQuery refused as ``(row, error
message)`` pairs where the method reports them."""

import datetime
import logging
from typing import Any, Mapping

import apache_beam as beam

Row = Mapping[str, Any]
BIGQUERY_METHODS = ('default', 'streaming_inserts', 'storage_write_api',
                    'file_loads')


@beam.typehints.with_input_types(Row)
class WriteRowsToBigQuery(beam.PTransform):
  """Rows (dicts with datetimes and bytes) -> a BigQuery table, schema from code.

  Returns the rows BigQuery refused as ``(row, error message)`` pairs where
  the method reports them (streaming inserts and the Storage Write API);
  transient errors are retried, a refused row is not. ``table_parameters``
  (``timePartitioning``, ``clustering``) shape the table when
  WriteToBigQuery creates it.
  """
  def __init__(self, table, schema, method='default', truncate=False,
               write_time_column=None, table_parameters=None):
    super().__init__()
    self._table_parameters = table_parameters or None
    self._table = table
    self._schema = schema
    self._method = method
    self._truncate = truncate
    self._write_time_column = write_time_column

  def expand(self, rows):
    _quiet_json_advice()
    # Imported here: BigQuery's client libraries cost memory and start-up
    # time that runs writing only text or DuckDB need not pay.
    from apache_beam.io.gcp.bigquery import BigQueryDisposition
    from apache_beam.io.gcp.bigquery import WriteToBigQuery
    from apache_beam.io.gcp.bigquery_tools import RetryStrategy
    schema = self._schema
    # Beam's default for a bounded input is file loads.
    load_files = self._method == 'file_loads' or (
        self._method == 'default' and rows.is_bounded)
    result = (
        rows
        | 'ToBigQueryJson' >> beam.ParDo(_ToBigQueryJsonFn(
            schema, self._write_time_column, load_files))
        | 'WriteToBigQuery' >> WriteToBigQuery(
            table=self._table,
            schema=schema.bigquery_schema(),
            create_disposition=BigQueryDisposition.CREATE_IF_NEEDED,
            write_disposition=(
                BigQueryDisposition.WRITE_TRUNCATE if self._truncate else
                BigQueryDisposition.WRITE_APPEND),
            insert_retry_strategy=RetryStrategy.RETRY_ON_TRANSIENT_ERROR,
            additional_bq_parameters=self._table_parameters,
            method=self._method.upper()))
    if load_files:
      # File loads report no per-row failures: a load job fails as a whole.
      return rows.pipeline | 'NoRefusedRows' >> beam.Create([])
    return (
        result.failed_rows_with_errors
        | 'RefusedRows' >> beam.Map(_refused_row))


JSON_ADVICE = 'Found JSON type in TableSchema for "File_LOADS"'


class _NoJsonAdvice(logging.Filter):
  """Drops the warning Beam's WriteToBigQuery logs for every schema with a
  JSON column (issue 29): it asks for raw JSON values in load files, which
  _ToBigQueryJsonFn gives (tests/test_bigquery_emulator.py reads them back
  as JSON, not strings), so a user can do nothing about it."""
  def filter(self, record):
    return not str(record.msg).startswith(JSON_ADVICE)


def _quiet_json_advice():
  root = logging.getLogger()
  if not any(isinstance(f, _NoJsonAdvice) for f in root.filters):
    root.addFilter(_NoJsonAdvice())


class _ToBigQueryJsonFn(beam.DoFn):
  """Row -> BigQuery's JSON form (the write time set, if asked); for a load
  file, JSON columns as raw JSON values."""
  def __init__(self, schema, write_time_column, load_file=False):
    self._schema = schema
    self._write_time_column = write_time_column
    self._load_file = load_file

  def process(self, row):
    if self._write_time_column:
      row = dict(row, **{self._write_time_column: datetime.datetime.now(
          datetime.timezone.utc)})
    yield self._schema.to_bigquery_json(row, self._load_file)


def _refused_row(failure):
  """BigQuery's (destination, row, errors) -> (row, error message)."""
  _, row, errors = failure
  return row, str(errors)
