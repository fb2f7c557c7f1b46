"""One cost of Beam's local runner that a long stream pays per bundle, removed.

Beam's DirectRunner re-inspects every DoFn's method signatures at each
bundle of each step (``userstate.get_dofn_specs``, called by
``is_stateful_dofn`` and ``validate_stateful_dofn``; the DoFn is a fresh
unpickled copy each time). In a live stream with keyed steps that is
thousands of times a second: 12% of a py-spy profile at 2,000 msgs/s
(benchmarks/README.md). A DoFn's state and timer specs come from its class's
method defaults, so they are computed once per class here. DoFns with bound
methods stored on the instance (which the scan would also see) are not
cached. Applied only by local streaming runs; Dataflow never loads it.
"""

import logging
import threading
import types

_LOG = logging.getLogger(__name__)
_applied = False
_lock = threading.Lock()


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


def apply():
  """Installs the cache in Beam's modules that call get_dofn_specs."""
  global _applied
  with _lock:
    if _applied:
      return
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
