"""Clients of our own (checks, table set-up, queries, replay merges) for
BigQuery and GCS: anonymous against a local emulator (``BIGQUERY_EMULATOR_HOST``,
``STORAGE_EMULATOR_HOST``), Google's default credentials otherwise. Beam's own
clients are pointed at the emulators by ``local_runner.beam_patches``, which
the launcher calls (and local worker processes, through the plugin in
``local_runner.emulator_plugin``)."""

import os


def bigquery_client(project=None):
  """A google-cloud-bigquery client: anonymous on the emulator."""
  from google.cloud import bigquery
  if os.environ.get('BIGQUERY_EMULATOR_HOST'):
    from google.auth.credentials import AnonymousCredentials
    return bigquery.Client(
        project=project or os.environ.get('GOOGLE_CLOUD_PROJECT'),
        credentials=AnonymousCredentials())
  return bigquery.Client(project=project)


def storage_client(project=None):
  """A google-cloud-storage client: anonymous on the emulator."""
  from google.cloud import storage
  if os.environ.get('STORAGE_EMULATOR_HOST'):
    from google.auth.credentials import AnonymousCredentials
    return storage.Client(project=project, credentials=AnonymousCredentials())
  return storage.Client(project=project)
