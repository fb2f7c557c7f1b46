"""Local emulators need no credentials: when STORAGE_EMULATOR_HOST is set, tell
Beam's GCS client to connect anonymously.

Beam 2.77's GCS client ignores ``--no_auth`` and retries Google's default
credentials with backoff for ~20 s in every process before giving up and
connecting anonymously. Importing ``transforms`` (which launcher and worker
processes both do) applies this, so no process waits.
"""

import os


def use_anonymous_gcs_credentials_for_emulator():
  """Marks Beam's credential cache as 'anonymous' if a GCS emulator is configured."""
  if not os.environ.get('STORAGE_EMULATOR_HOST'):
    return False
  try:
    from apache_beam.internal.gcp import auth
  except ImportError:
    return False
  credentials = auth._Credentials  # pylint: disable=protected-access
  with credentials._credentials_lock:  # pylint: disable=protected-access
    credentials._credentials = None  # pylint: disable=protected-access
    credentials._credentials_init = True  # pylint: disable=protected-access
  return True
