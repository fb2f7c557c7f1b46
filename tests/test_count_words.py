"""Word extraction and counting, alone on the DirectRunner (FnApiRunner)."""

import collections
import re

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from apache_beam.testing.util import equal_to

from transforms import text



def run_count(blocks, expected, **kwargs):
  with TestPipeline(runner='FnApiRunner') as p:
    counts = p | beam.Create(blocks) | text.CountWords(**kwargs)
    assert_that(counts, equal_to(list(expected.items())))


def test_unicode_digits_underscores_apostrophes():
  run_count(
      ["Café naïve don't x_1 42 — ½\n".encode('utf-8'), b'\n',
       'café  Café\n'.encode('utf-8')],
      {'Café': 2, 'naïve': 1, "don't": 1, 'x_1': 1, '42': 1, '½': 1, 'café': 1})


def test_empty_input_counts_nothing():
  run_count([b'', b'\n\n'], {})


def test_undecodable_bytes_do_not_crash():
  run_count([b'good \xff\xfe words\n'], {'good': 1, 'words': 1})


def test_lowercase_folds_with_casefold():
  run_count([b'The the THE Stra\xc3\x9fe STRASSE\n'],
            {'the': 3, 'strasse': 2}, lowercase=True)


def test_custom_pattern_runs_per_line():
  # [a-z]+\s? could glue words across a line break if run over a block.
  run_count([b'ab\ncd ef\n'], {'ab': 1, 'cd ': 1, 'ef': 1},
            pattern=r'[a-z]+ ?')


def test_pattern_with_groups_counts_whole_matches():
  run_count([b'k=1 k=2 j=1\n'], {'k=1': 1, 'k=2': 1, 'j=1': 1},
            pattern=r'(\w)=(\d)')


@pytest.mark.parametrize('pattern', [text.DEFAULT_WORD_PATTERN, r"[A-Za-z']+"])
def test_matches_line_by_line_findall(pattern):
  lines = ["It's 10 o'clock", '', 'émigré_s; ÉMIGRÉ', "''' x"]
  expected = collections.Counter(
      w for line in lines for w in re.findall(pattern, line) if w)
  run_count(['\n'.join(lines).encode('utf-8')], expected, pattern=pattern)


from hypothesis import given, settings, strategies as st  # noqa: E402

_TEXT = st.text(
    alphabet=st.sampled_from(list("ab Z_9'\n\r\t.-") + ['é', 'ß', '½', '\u2028']),
    max_size=200)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_block_counting_equals_regex_per_line(body):
  """Both the ASCII byte-split path and the regex path equal Beam's per-line findall."""
  block = body.encode('utf-8')
  expected = collections.Counter(
      w for line in block.split(b'\n')
      for w in re.findall(text.DEFAULT_WORD_PATTERN,
                          line.rstrip(b'\r').decode('utf-8')))
  counts = collections.Counter()
  text.WordCounter().count_block_into(counts, block)
  assert counts == expected
