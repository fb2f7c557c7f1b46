"""Local emulators need no credentials, and Beam's BigQuery client does not
know about the BigQuery emulator: fix both, in one place, only when an
emulator's environment variable is set.

- Beam 2.77's GCS and BigQuery clients ignore ``--no_auth`` and retry Google's
  default credentials with backoff for ~20 s in every process (BigQuery then
  starts an interactive OAuth flow and dies on ``EOFError``). With
  ``STORAGE_EMULATOR_HOST`` or ``BIGQUERY_EMULATOR_HOST`` set, Beam's
  credential cache holds anonymous credentials instead.
- ``google-cloud-bigquery`` honours ``BIGQUERY_EMULATOR_HOST`` but still asks
  for default credentials; Beam's apitools client (tables, datasets, load
  jobs) has a fixed ``BASE_URL``. With ``BIGQUERY_EMULATOR_HOST`` set, both go
  to the emulator, anonymously.

Importing ``transforms`` (which launcher and worker processes both do)
applies this, so no process waits and nothing leaves the machine.
"""

import os
import types

EMULATOR_HOSTS = ('STORAGE_EMULATOR_HOST', 'BIGQUERY_EMULATOR_HOST')


def use_emulators():
  """Points Beam's clients at the configured emulators; True if any is set."""
  if not any(os.environ.get(v) for v in EMULATOR_HOSTS):
    return False
  try:
    from apache_beam.internal.gcp import auth
    from google.auth.credentials import AnonymousCredentials
  except ImportError:
    return False
  credentials = auth._Credentials  # pylint: disable=protected-access
  with credentials._credentials_lock:  # pylint: disable=protected-access
    credentials._credentials = auth._ApitoolsCredentialsAdapter(  # pylint: disable=protected-access
        AnonymousCredentials())
    credentials._credentials_init = True  # pylint: disable=protected-access
  if os.environ.get('BIGQUERY_EMULATOR_HOST'):
    _use_bigquery_emulator(os.environ['BIGQUERY_EMULATOR_HOST'])
  return True


def _use_bigquery_emulator(host):
  from apache_beam.io.gcp import bigquery_tools
  from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client
  from google.auth.credentials import AnonymousCredentials
  from google.cloud import bigquery
  bigquery_v2_client.BigqueryV2.BASE_URL = host.rstrip('/') + '/bigquery/v2/'
  if getattr(bigquery_tools.gcp_bigquery, 'EMULATED', False):
    return

  class AnonymousClient(bigquery.Client):
    """google-cloud-bigquery's client, anonymous, for the emulator's project."""
    def __init__(self, *args, **kwargs):
      kwargs.setdefault('credentials', AnonymousCredentials())
      kwargs.setdefault('project', os.environ.get('GOOGLE_CLOUD_PROJECT'))
      super().__init__(*args, **kwargs)

  # Beam builds its client as ``gcp_bigquery.Client(client_info=...)``: give
  # its module a copy of the package whose Client is anonymous, leaving the
  # real package alone for everyone else.
  emulated = types.ModuleType(bigquery.__name__)
  emulated.__dict__.update(bigquery.__dict__)
  emulated.Client = AnonymousClient
  emulated.EMULATED = True
  bigquery_tools.gcp_bigquery = emulated


def bigquery_client(project=None):
  """A google-cloud-bigquery client: anonymous on the emulator, else default
  credentials (for checks and queries of our own)."""
  from google.cloud import bigquery
  if os.environ.get('BIGQUERY_EMULATOR_HOST'):
    from google.auth.credentials import AnonymousCredentials
    return bigquery.Client(
        project=project or os.environ.get('GOOGLE_CLOUD_PROJECT'),
        credentials=AnonymousCredentials())
  return bigquery.Client(project=project)
