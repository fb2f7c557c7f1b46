"""Two costs of Beam's local runner that a long stream pays, removed.

Beam's DirectRunner re-inspects every DoFn's method signatures at each
bundle of each step (``userstate.get_dofn_specs``, called by
``is_stateful_dofn`` and ``validate_stateful_dofn``; the DoFn is a fresh
unpickled copy each time). In a live stream with keyed steps that is
thousands of times a second: 12% of a py-spy profile at 2,000 msgs/s
(benchmarks/README.md). A DoFn's state and timer specs come from its class's
method defaults, so they are computed once per class here. DoFns with bound
methods stored on the instance (which the scan would also see) are not
cached.

Beam's local streaming GroupByKey keeps a window's state (every element of
an accumulating pane: here each bundle's partial counts) for the life of the
process: its trigger driver ignores elements once the watermark is past the
window's end + allowed lateness, but nothing drops what the window holds.
A live stream's Python heap grew ~9 MiB a minute at 2,000 msgs/s with it,
for as long as it ran. Here a key's state for such a window (no timer
pending; windows that merge are left alone) is dropped after each of the
key's work items: no element, timer or pane can reach it again. Measured:
the heap stops growing once the first windows pass their lateness.

Applied only by local streaming runs; Dataflow never loads it.
"""

import logging
import threading
import types

_LOG = logging.getLogger(__name__)
_applied = False
_lock = threading.Lock()
collected_windows = 0  # (key, window) states dropped, for tests


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
      global collected_windows
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


def apply():
  """Installs the spec cache and the window-state collection in Beam's
  local runner."""
  global _applied
  with _lock:
    if _applied:
      return
    _collect_window_state()
    from apache_beam.runners.direct import transform_evaluator
    from apache_beam.transforms import userstate
    original = getattr(userstate, 'get_dofn_specs', None)
    if original is None or getattr(transform_evaluator, 'get_dofn_specs',
                                   None) is not original:
      _LOG.info('Beam changed get_dofn_specs; local runner left as it is')
      return
    cached = _cached_specs(original)
    userstate.get_dofn_specs = cached  # is_stateful_dofn, validate_...
    transform_evaluator.get_dofn_specs = cached
    _applied = True
