"""Reading the status file a local user_signin run writes (--status_file)."""

import json
import time


def read(path):
  """The latest status, or {} while there is none (it is replaced atomically)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def wait_for(path, done, running, timeout, interval=0.2):
  """Polls until done(status), the process stops running() or the timeout;
  returns (status, whether done)."""
  deadline = time.monotonic() + timeout
  status = {}
  while time.monotonic() < deadline and running():
    status = read(path)
    if done(status):
      return status, True
    time.sleep(interval)
  status = read(path)
  return status, done(status)
