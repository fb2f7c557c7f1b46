"""The BigQuery tables of a run, ready before its first write: their
datasets exist (as on BigQuery, a one-line error says how to make one); a
missing table is made from its schema with its layout (partitioning and
clustering); an existing one is brought up to the schema (``schema_changes``)
and its layout checked, never changed (BigQuery cannot repartition a table
in place)."""

import logging
import os

from pipelines.errors import UsageError
from pipelines import schema_changes
from storage import table_specs

_LOG = logging.getLogger(__name__)


def prepare(client, destinations, create=True):
  """Checks the datasets, then makes (``create``) or evolves each table of
  ``destinations``. UsageError (one line) for what cannot work."""
  from google.api_core import exceptions
  for destination in destinations:
    project, dataset, _ = table_specs.parse_table_spec(
        destination.spec, client.project)
    try:
      client.get_dataset('%s.%s' % (project, dataset))
    except exceptions.NotFound:
      how = ('./run.sh emulators dataset %s:%s' if os.environ.get(
          'BIGQUERY_EMULATOR_HOST') else 'bq mk --dataset %s:%s') % (
              project, dataset)
      raise UsageError('%s: dataset %s:%s does not exist; create it first: %s'
                       % (destination.flag, project, dataset, how))
    except Exception as e:  # pylint: disable=broad-except
      raise UsageError('%s: cannot reach BigQuery: %s' % (
          destination.flag, str(e).splitlines()[0]))
  for destination in destinations:
    name = table_specs.dotted(destination.spec, client.project)
    try:
      existing = client.get_table(name)
    except exceptions.NotFound:
      if create:
        client.create_table(new_table(name, destination))
      continue
    schema_changes.evolve_bigquery_table(client, existing, destination.schema)
    check_layout(existing, destination)


def new_table(name, destination):
  """A google-cloud-bigquery Table of ``destination``'s schema and layout."""
  from google.cloud import bigquery
  table = bigquery.Table(name, schema=[
      bigquery.SchemaField.from_api_repr(f)
      for f in destination.schema.bigquery_schema()['fields']])
  layout = destination.layout
  if layout.partition_field:
    table.time_partitioning = bigquery.TimePartitioning(
        type_=layout.granularity,
        field=None if layout.partition_field == '_PARTITIONTIME' else
        layout.partition_field)
  if layout.cluster_fields:
    table.clustering_fields = list(layout.cluster_fields)
  return table


def _layout_of(table):
  partitioning = table.time_partitioning
  return (
      (partitioning.field or '_PARTITIONTIME', partitioning.type_)
      if partitioning else (None, None),
      tuple(table.clustering_fields or ()))


def check_layout(table, destination):
  """An existing table laid out otherwise than asked: a one-line error when
  the flags asked, a warning when it is this project's default."""
  layout = destination.layout
  want = ((layout.partition_field, layout.granularity)
          if layout.partition_field else (None, None),
          tuple(layout.cluster_fields))
  have = _layout_of(table)
  if have == want:
    return
  (field, granularity), cluster = have
  said = ' and '.join(filter(None, (
      field and 'partitioned by %s (%s)' % (field, granularity),
      cluster and 'clustered by %s' % ', '.join(cluster)))) or (
          'neither partitioned nor clustered')
  message = ('table %s is %s, not %s: BigQuery cannot change that in place '
             '(copy it into a new table made with the layout to get it)' % (
                 table.full_table_id, said, layout.describe()))
  if layout.explicit:
    raise UsageError('%s: %s' % (destination.flag, message))
  _LOG.warning('%s', message)
