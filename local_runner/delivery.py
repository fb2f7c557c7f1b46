"""When a served message is done with: the local runner follows each batch of
messages its reader served through the runner's own bundles, and settles the
batch once no bundle that descends from it is waiting for any step.

Beam's BundleBasedDirectRunner evaluates a step on one committed bundle at a
time and hands its output bundles to every step that consumes them
(``EvaluationContext.handle_result``, which ``beam_patches`` wraps to call
``Lineage.handled``). A step's output bundle inherits the batches of the
bundle it came from; a bundle leaves its batches' count once each consumer
has handled it. So a batch is settled exactly when everything its messages
became has been through every step to its end: rows and dead letters stored
(the sinks commit before their bundle is done), a UDF's drop (nothing
follows), a fan-out (both rows' bundles), a refused row (its dead letter's
bundle). Nothing in the graph reports anything: the graph does not know it
runs here.

What a GroupByKey keeps for a later pane (windowed counts, archive
compaction) is derived data and does not hold a batch: a grouping step's
bundle is done when the step has handled it, as any other. Beam's streaming
BigQuery inserts group with an ``Always`` trigger (Reshuffle), which emits in
the same evaluation, so a batch written to BigQuery is settled after the
insert. Pane output fired later by a timer has no batch.
"""

import threading

_lock = threading.Lock()
# id(bundle) -> [bundle, the batches it descends from, consumers not done]
_bundles = {}


class Batch(object):
  """Served messages settled together: ``settle()`` is called once when
  nothing descending from them is left in the runner."""
  __slots__ = ('settle', 'pending')

  def __init__(self, settle):
    self.settle = settle
    self.pending = 0


def batch_of(event_values):
  """The Batch the served messages among ``event_values`` carry (the
  reader sets one ``batch`` per element event), or None."""
  for value in event_values:
    batch = getattr(value, 'batch', None)
    if batch is not None:
      return batch
  return None


def handled(completed_bundle, result, committed_bundles, consumers_of,
            is_reader):
  """The runner handled ``completed_bundle`` (None for a root step) into
  ``committed_bundles``; ``consumers_of(pcollection)`` counts the steps
  that will each handle an output bundle; ``is_reader(applied_ptransform)``
  tells a TestStream step, whose output bundles may start new batches."""
  with _lock:
    entry = _bundles.get(id(completed_bundle)) if (
        completed_bundle is not None) else None
    batches = entry[1] if entry is not None else ()
  if not batches and is_reader(result.transform):
    batches = _new_batches(committed_bundles)
  settled = []
  with _lock:
    if batches:
      for bundle in committed_bundles:
        n = consumers_of(bundle.pcollection)
        if n:
          _bundles[id(bundle)] = [bundle, batches, n]
          for batch in batches:
            batch.pending += n
    if entry is not None:
      entry[2] -= 1
      if entry[2] <= 0:
        del _bundles[id(completed_bundle)]
      for batch in batches:
        batch.pending -= 1
        if batch.pending <= 0:
          settled.append(batch)
    elif batches:  # a new batch no step consumes
      settled.extend(b for b in batches if b.pending <= 0)
  for batch in settled:
    batch.settle()


def _new_batches(bundles):
  batches = []
  for bundle in bundles:
    for windowed in bundle.get_elements_iterable():
      values = getattr(windowed.value, 'timestamped_values', None)
      if values:
        batch = batch_of(tv.value for tv in values)
        if batch is not None and batch not in batches:
          batches.append(batch)
  return tuple(batches)


def tracked_bundles():
  """How many bundles are followed now (for tests: none once idle)."""
  with _lock:
    return len(_bundles)
