"""The per-class cache of DoFn state/timer specs answers as Beam does."""

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.userstate import TimerSpec

from pipelines import direct_runner_speedups
from transforms.signin_counts import ExpandChangedUsers


class RunningTotal(beam.DoFn):
  TOTAL = ReadModifyWriteStateSpec('total', VarIntCoder())
  FLUSH = TimerSpec('flush', userstate.TimeDomain.WATERMARK)

  def process(self, element, total=beam.DoFn.StateParam(TOTAL),
              unused_flush=beam.DoFn.TimerParam(FLUSH)):
    key, value = element
    now = (total.read() or 0) + value
    total.write(now)
    yield key, now

  @userstate.on_timer(FLUSH)
  def flush(self):
    pass


class Plain(beam.DoFn):
  def process(self, element):
    yield element


def test_cached_specs_equal_beams_for_stateful_and_plain_dofns():
  original = getattr(userstate.get_dofn_specs, 'original',
                     userstate.get_dofn_specs)
  cached = direct_runner_speedups._cached_specs(original)  # pylint: disable=protected-access
  for dofn in (RunningTotal(), RunningTotal(), Plain(), ExpandChangedUsers(6, True)):
    assert cached(dofn) == original(dofn)
  specs = cached(RunningTotal())
  specs[0].clear()  # a caller's copy: the cache is not changed by it
  assert cached(RunningTotal()) == original(RunningTotal())
  assert cached(RunningTotal())[0] and cached(RunningTotal())[1]


def test_a_dofn_with_bound_methods_on_the_instance_is_inspected_each_time():
  calls = []

  def counting(dofn):
    calls.append(dofn)
    return userstate.get_dofn_specs(dofn)
  cached = direct_runner_speedups._cached_specs(counting)  # pylint: disable=protected-access
  dofn = Plain()
  dofn.helper = RunningTotal().process  # a bound method the scan would see
  cached(dofn)
  cached(dofn)
  cached(Plain())
  cached(Plain())
  assert len(calls) == 3


def test_stateful_pipeline_runs_the_same_with_the_cache_installed():
  direct_runner_speedups.apply()
  assert hasattr(userstate.get_dofn_specs, 'original')
  with TestPipeline() as p:
    totals = (p | beam.Create([('a', 1), ('a', 2), ('b', 5)])
              | beam.ParDo(RunningTotal())
              | beam.combiners.Count.PerKey())
    assert_that(totals, equal_to([('a', 2), ('b', 1)]))
