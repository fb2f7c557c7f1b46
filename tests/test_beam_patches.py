"""Every change to Beam's internals sits behind one switch with a version
check, nothing is changed at import, and the per-class cache of DoFn
state/timer specs answers as Beam does."""

import logging
import os
import subprocess
import sys


import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to
from apache_beam.transforms import userstate
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.transforms.userstate import TimerSpec

from local_runner import beam_patches
from tests.conftest import ROOT
from transforms.signin_counts import ExpandChangedUsers


def test_the_switch_is_off_with_a_warning_on_another_beam(monkeypatch, caplog):
  import apache_beam
  assert beam_patches.enabled()  # the Beam these were written against
  monkeypatch.setattr(apache_beam, '__version__', '2.99.0')
  monkeypatch.setattr(beam_patches, '_warned', [])
  with caplog.at_level(logging.WARNING):
    assert not beam_patches.enabled()
    assert not beam_patches.enabled()
  warnings = [r for r in caplog.records if 'not the version' in r.message]
  assert len(warnings) == 1 and '2.99.0' in warnings[0].message
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', 'http://127.0.0.1:9')
  assert not beam_patches.use_emulator_clients()
  assert not beam_patches.speed_up_local_streams()
  assert not beam_patches.settle_after_processing()


def test_turned_off_by_hand(monkeypatch):
  monkeypatch.setenv('BEAM_PIPELINES_PATCH_BEAM', '0')
  assert not beam_patches.enabled()


def test_importing_our_code_changes_nothing_in_beam():
  """Emulator wiring is the launcher's explicit call, never an import's."""
  code = (
      'import apache_beam, transforms, pipelines.user_signin, '
      'pipelines.wordcount, pipelines.pubsub_to_bigquery\n'
      'from apache_beam.internal.gcp import auth\n'
      'from apache_beam.io.gcp import bigquery_tools\n'
      'from apache_beam.io.gcp.internal.clients.bigquery import bigquery_v2_client\n'
      'from apache_beam.runners.direct import transform_evaluator\n'
      'print(auth._Credentials._credentials_init, '
      'getattr(bigquery_tools.gcp_bigquery, "EMULATED", False), '
      '"127.0.0.1" in bigquery_v2_client.BigqueryV2.BASE_URL, '
      'hasattr(transform_evaluator._StreamingGroupAlsoByWindowEvaluator.'
      'process_element, "original"))')
  env = dict(os.environ, STORAGE_EMULATOR_HOST='http://127.0.0.1:9',
             BIGQUERY_EMULATOR_HOST='http://127.0.0.1:9', PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split() == ['False', 'False', 'False', 'False']


def test_the_launcher_names_the_emulator_plugin_for_local_workers(monkeypatch):
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.options.pipeline_options import SetupOptions

  from pipelines import launcher
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', 'http://127.0.0.1:9')
  options = PipelineOptions([])
  launcher.Job('wordcount', options, [])
  plugins = options.view_as(SetupOptions).beam_plugins
  assert plugins == [launcher.EMULATOR_PLUGIN]
  __import__(launcher.EMULATOR_PLUGIN)  # what a worker process does


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
  cached = beam_patches._cached_specs(original)  # pylint: disable=protected-access
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
  cached = beam_patches._cached_specs(counting)  # pylint: disable=protected-access
  dofn = Plain()
  dofn.helper = RunningTotal().process  # a bound method the scan would see
  cached(dofn)
  cached(dofn)
  cached(Plain())
  cached(Plain())
  assert len(calls) == 3


def test_stateful_pipeline_runs_the_same_with_the_cache_installed():
  beam_patches.speed_up_local_streams()
  assert hasattr(userstate.get_dofn_specs, 'original')
  with TestPipeline() as p:
    totals = (p | beam.Create([('a', 1), ('a', 2), ('b', 5)])
              | beam.ParDo(RunningTotal())
              | beam.combiners.Count.PerKey())
    assert_that(totals, equal_to([('a', 2), ('b', 1)]))


def _late_counts(events, expected):
  """Runs per-key sums in 60 s windows (lateness 120 s, a late pane per late
  element, accumulating) of a TestStream and checks them, as (key, sum,
  window start, timing), against ``expected``."""
  from apache_beam.options.pipeline_options import PipelineOptions
  from apache_beam.options.pipeline_options import StandardOptions
  from apache_beam.testing.test_stream import TestStream
  from apache_beam.transforms import trigger
  from apache_beam.transforms import window
  stream = TestStream()
  for kind, arg in events:
    if kind == 'add':
      stream = stream.add_elements(
          [window.TimestampedValue(kv, ts) for kv, ts in arg])
    else:
      stream = stream.advance_watermark_to(arg)
  stream = stream.advance_watermark_to_infinity()
  options = PipelineOptions()
  options.view_as(StandardOptions).streaming = True

  class Describe(beam.DoFn):
    def process(self, kv, win=beam.DoFn.WindowParam,
                pane=beam.DoFn.PaneInfoParam):
      yield kv[0], kv[1], int(win.start), pane.timing

  with TestPipeline(options=options) as p:
    out = (p | stream
           | beam.WindowInto(
               window.FixedWindows(60),
               trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
               allowed_lateness=120,
               accumulation_mode=trigger.AccumulationMode.ACCUMULATING)
           | beam.CombinePerKey(sum)
           | beam.ParDo(Describe()))
    assert_that(out, equal_to(expected))


def test_window_state_past_its_lateness_is_dropped_and_panes_stay_the_same():
  from apache_beam.utils.windowed_value import PaneInfoTiming as T
  beam_patches.speed_up_local_streams()
  before = beam_patches.collected_windows
  events = [
      ('add', [(('a', 1), 10), (('b', 2), 20), (('a', 3), 70)]),
      ('watermark', 65),        # window 0 fires on time: a=1, b=2
      ('add', [(('a', 5), 30)]),  # late, within lateness: a=6 (accumulated)
      ('watermark', 200),       # window 60 on time: a=3; window 0 expires
      ('add', [(('a', 100), 40), (('a', 7), 190)]),  # window 0: too late
      ('watermark', 260),
      ('add', [(('a', 1), 250)]),  # window 60 expired; window 180 new
  ]
  expected = [('a', 1, 0, T.ON_TIME), ('b', 2, 0, T.ON_TIME),
              ('a', 6, 0, T.LATE), ('a', 3, 60, T.ON_TIME),
              ('a', 7, 180, T.ON_TIME), ('a', 1, 240, T.ON_TIME)]
  _late_counts(events, expected)
  assert beam_patches.collected_windows > before


def test_expired_windows_are_past_lateness_and_without_timers():
  from apache_beam.transforms.trigger import _ListStateTag
  from apache_beam.transforms.trigger import InMemoryUnmergedState
  from apache_beam.transforms.trigger import MergeableStateAdapter
  from apache_beam.transforms.window import IntervalWindow
  from apache_beam.utils.timestamp import Duration
  from apache_beam.utils.timestamp import Timestamp
  raw = InMemoryUnmergedState()
  state = MergeableStateAdapter(raw)  # how Beam's trigger driver keeps it
  tag = _ListStateTag('elements')
  old, pending, current = (IntervalWindow(0, 60), IntervalWindow(60, 120),
                           IntervalWindow(240, 300))
  for w in (old, pending, current):
    state.add_state(w, tag, 1)
  state.set_timer(pending, 'trigger', 'WATERMARK', Timestamp(119))
  lateness = Duration(120)
  assert beam_patches.expired_windows(
      raw, Timestamp(180), lateness) == {}  # at the bound: still open
  expired = beam_patches.expired_windows(
      raw, Timestamp(181), lateness)
  assert list(expired) == [old]
  beam_patches.drop_windows(raw, expired)
  assert sorted(raw.state) == sorted(
      MergeableStateAdapter(raw).window_ids[w][0] for w in (pending, current))
  after = MergeableStateAdapter(raw)
  assert after.known_windows() == [pending, current]
  assert after.get_state(current, tag) == [1]
