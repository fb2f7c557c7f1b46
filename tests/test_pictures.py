"""Each pipeline's picture in docs/pipelines is its graph as it is now
(issue 29): redrawn offline and compared with the committed layout."""

from tools import pictures


def test_the_pictures_of_the_pipelines_are_not_stale():
  assert pictures.stale() == [], (
      'redraw them: python -m tools.pictures')
