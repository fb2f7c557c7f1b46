"""Every change this project makes to Beam's internals, in one place, behind
one switch: each is applied only on the Beam version it was written and
measured against (``TESTED_BEAM``); on any other the switch is off, with one
warning naming what is left as Beam does it. ``BEAM_PIPELINES_PATCH_BEAM=0``
turns it off by hand. The launcher calls these explicitly; nothing is
changed at import.

- ``use_emulator_clients`` (local runs with ``STORAGE_EMULATOR_HOST`` or
  ``BIGQUERY_EMULATOR_HOST`` set; launcher and local worker processes):
  Beam 2.77's GCS and BigQuery clients ignore ``--no_auth`` and retry
  Google's default credentials with backoff for ~20 s in every process
  (BigQuery then starts an interactive OAuth flow and dies on
  ``EOFError``): Beam's credential cache holds anonymous credentials
  instead. Beam's apitools BigQuery client has a fixed ``BASE_URL`` and its
  google-cloud-bigquery client asks for credentials: both go to the
  emulator, anonymously.
- ``speed_up_local_streams`` (local streaming runs): Beam's DirectRunner
  re-inspects every DoFn's method signatures at each bundle of each step
  (``userstate.get_dofn_specs``): 12% of a py-spy profile at 2,000 msgs/s
  (benchmarks/README.md); computed once per DoFn class here (DoFns with
  bound methods on the instance are not cached). And its streaming
  GroupByKey keeps a window's state for the life of the process (the
  heap grew ~9 MiB a minute at 2,000 msgs/s): a key's state for a window
  past its allowed lateness, with no timer pending (windows that merge are
  left alone), is dropped after each of the key's work items.
- ``settle_after_processing`` (local streams read by the project's own
  reader): the DirectRunner's ``EvaluationContext.handle_result``, where
  each evaluated bundle's outputs are committed to their consumers, is
  wrapped so that ``local_runner.delivery`` follows each served batch to
  the end of every step and the reader acknowledges it then. Beam's
  ``BigQueryWrapper.insert_rows`` is wrapped to say, in the progress line,
  when BigQuery does not answer.

Dataflow never loads any of it.
"""

import logging
import os
import threading
import types

import apache_beam

_LOG = logging.getLogger(__name__)
TESTED_BEAM = ('2.77.',)  # versions these changes were written against
_lock = threading.RLock()
_applied = set()
_warned = []
collected_windows = 0  # (key, window) states dropped, for tests


def enabled():
  """The one switch: on for the tested Beam versions, unless turned off."""
  if os.environ.get('BEAM_PIPELINES_PATCH_BEAM', '1') == '0':
    return False
  if apache_beam.__version__.startswith(TESTED_BEAM):
    return True
  with _lock:
    if not _warned:
      _warned.append(True)
      _LOG.warning(
          'Beam %s is not the version this project\'s changes to Beam\'s '
          'internals were tested on (%s): left off (emulator credentials, '
          'local stream speed-ups, the local reader\'s acknowledgements)',
          apache_beam.__version__, ', '.join(TESTED_BEAM))
  return False


def _once(name, apply):
  """Applies ``apply`` once per process when the switch is on; returns
  whether it is applied."""
  if not enabled():
    return False
  with _lock:
    if name not in _applied:
      if apply() is False:
        return False
      _applied.add(name)
    return True


# -- emulator clients ---------------------------------------------------------
EMULATOR_HOSTS = ('STORAGE_EMULATOR_HOST', 'BIGQUERY_EMULATOR_HOST')


def use_emulator_clients():
  """Points Beam's clients at the configured emulators, anonymously; True if
  an emulator is set and the switch is on."""
  if not any(os.environ.get(v) for v in EMULATOR_HOSTS):
    return False
  return _once('emulator_clients', _anonymous_emulator_clients)


def _anonymous_emulator_clients():
  from apache_beam.internal.gcp import auth
  from google.auth.credentials import AnonymousCredentials
  credentials = auth._Credentials  # pylint: disable=protected-access
  with credentials._credentials_lock:  # pylint: disable=protected-access
    credentials._credentials = auth._ApitoolsCredentialsAdapter(  # pylint: disable=protected-access
        AnonymousCredentials())
    credentials._credentials_init = True  # pylint: disable=protected-access
  if os.environ.get('BIGQUERY_EMULATOR_HOST'):
    _use_bigquery_emulator(os.environ['BIGQUERY_EMULATOR_HOST'])


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


# -- local stream speed-ups ---------------------------------------------------
def speed_up_local_streams():
  """The spec cache and the window-state collection in Beam's local runner."""
  return _once('local_streams', _speed_up_local_streams)


def _speed_up_local_streams():
  _collect_window_state()
  from apache_beam.runners.direct import transform_evaluator
  from apache_beam.transforms import userstate
  cached = _cached_specs(userstate.get_dofn_specs)
  userstate.get_dofn_specs = cached  # is_stateful_dofn, validate_...
  transform_evaluator.get_dofn_specs = cached


def _cached_specs(original):
  cache = {}

  def get_dofn_specs(dofn):
    if any(isinstance(v, types.MethodType)
           for v in getattr(dofn, '__dict__', {}).values()):
      return original(dofn)
    key = type(dofn)
    specs = cache.get(key)
    if specs is None:
      specs = cache[key] = original(dofn)  # raises for invalid DoFns: not kept
    # Fresh sets: callers own what they get, as from Beam's function.
    return set(specs[0]), set(specs[1])
  get_dofn_specs.original = original
  return get_dofn_specs


def expired_windows(state, input_watermark, allowed_lateness):
  """{window: its state ids} of ``state`` (Beam's InMemoryUnmergedState, its
  windows numbered by the trigger driver's MergeableStateAdapter) for the
  windows past their allowed lateness at ``input_watermark``, with no timer
  pending."""
  from apache_beam.transforms.trigger import MergeableStateAdapter
  ids_by_window = state.get_global_state(MergeableStateAdapter.WINDOW_IDS, {})
  return {w: ids for w, ids in ids_by_window.items()
          if input_watermark > w.end + allowed_lateness and
          not any(state.timers.get(i) for i in ids)}


def drop_windows(state, expired):
  """Drops the ``expired`` windows' state, timers and ids from ``state``."""
  from apache_beam.transforms.trigger import MergeableStateAdapter
  tag = MergeableStateAdapter.WINDOW_IDS
  state.set_global_state(tag, {
      w: ids for w, ids in state.get_global_state(tag, {}).items()
      if w not in expired})
  for ids in expired.values():
    for i in ids:
      state.state.pop(i, None)
      state.timers.pop(i, None)


def _collecting_expired_windows(original):
  def process_element(self, element):
    original(self, element)
    windowing = self._applied_ptransform.transform.windowing
    if windowing.windowfn.is_merging():  # an old window may still merge
      return
    encoded_k = element.value.encoded_key
    state = self._step_context.get_keyed_state(encoded_k)
    watermarks = self._evaluation_context._watermark_manager.get_watermarks(
        self._applied_ptransform)
    expired = expired_windows(state, watermarks.input_watermark,
                              windowing.allowed_lateness)
    if expired:
      global collected_windows  # pylint: disable=global-statement
      drop_windows(state, expired)
      with _lock:  # evaluators run in the runner's worker threads
        collected_windows += len(expired)
      self.keyed_holds[encoded_k] = state.get_earliest_hold()
  process_element.original = original
  return process_element


def _collect_window_state():
  from apache_beam.runners.direct import transform_evaluator
  evaluator = getattr(transform_evaluator,
                      '_StreamingGroupAlsoByWindowEvaluator', None)
  if evaluator is None or not hasattr(evaluator, 'process_element'):
    _LOG.info('Beam changed its streaming GroupByKey; window state kept')
    return
  if hasattr(evaluator.process_element, 'original'):
    return
  evaluator.process_element = _collecting_expired_windows(
      evaluator.process_element)


# -- delivery: settling what the reader served ------------------------------
def settle_after_processing():
  """Follows the local reader's batches through the runner's bundles
  (``local_runner.delivery``); False if the switch is off (then nothing
  would be settled: the reader refuses to start)."""
  return _once('settle_after_processing', _follow_bundles)


def _follow_bundles():
  from apache_beam.runners.direct import evaluation_context
  from apache_beam.runners.direct.test_stream_impl import _TestStream
  from local_runner import delivery
  context = evaluation_context.EvaluationContext
  handle_result = context.handle_result

  def is_reader(applied_ptransform):
    return isinstance(applied_ptransform.transform, _TestStream)

  def following_handle_result(self, completed_bundle, completed_timers,
                              result):
    committed = handle_result(self, completed_bundle, completed_timers, result)
    consumers = self._value_to_consumers  # pylint: disable=protected-access
    delivery.handled(completed_bundle, result, committed,
                     lambda pcollection: len(consumers.get(pcollection, ())),
                     is_reader)
    return committed
  following_handle_result.original = handle_result
  context.handle_result = following_handle_result
  _wrap_insert_rows()


def _wrap_insert_rows():
  """Beam's streaming inserts retry a BigQuery that does not answer inside
  ``insert_rows``: the local run's progress says it is waiting."""
  from apache_beam.io.gcp import bigquery_tools
  from storage import outages
  wrapper = bigquery_tools.BigQueryWrapper
  insert_rows = wrapper.insert_rows
  if hasattr(insert_rows, 'original'):
    return

  def insert_rows_said(self, project_id, dataset_id, table_id, rows, *args,
                       **kwargs):
    with outages.pending('BigQuery %s.%s' % (dataset_id, table_id)):
      return insert_rows(self, project_id, dataset_id, table_id, rows, *args,
                         **kwargs)
  insert_rows_said.original = insert_rows
  wrapper.insert_rows = insert_rows_said
