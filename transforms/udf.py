"""A user's Python function applied to each message's JSON object before the
schema check (``--udf FILE.py:function``), as Google's Pub/Sub-to-BigQuery
template applies its UDF.

The function takes the object and returns an object (one row), a list of
objects (one message -> several rows) or None (drop the message; counted).
It sees numbers as the message wrote them: integers as ``int``, every other
number as ``exact_json.Number``, a ``str`` holding the number's text (use
``decimal.Decimal(n)`` or ``float(n)`` to compute); it may return ints,
floats, Decimals and strings for numeric columns. Its source is read once at
launch (a local path or gs://) and travels with the job, so it runs the same
on Dataflow as locally; an exception, or a result of another kind, is a
``udf_error`` dead letter with the stack trace.
"""

import decimal

from transforms.exact_json import Number


class BadResult(ValueError):
  """The function returned something that is not an object, a list of
  objects or None."""


class Udf(object):
  """``FILE.py:function``'s source and name; picklable (the source text
  travels with the job), compiled where it runs (``function``)."""
  def __init__(self, spec, source):
    self.spec = spec
    self.path, self.name = split_spec(spec)
    self.source = source

  @classmethod
  def load(cls, spec, read):
    """``read(path) -> bytes``; ValueError (one line) when the file cannot be
    read or compiled, or does not define the function."""
    path, name = split_spec(spec)
    try:
      source = read(path).decode('utf-8')
    except (OSError, IOError, UnicodeDecodeError) as e:
      raise ValueError('cannot read %r: %s' % (path, str(e).splitlines()[0]))
    udf = cls(spec, source)
    udf.function()  # compiles and runs the module once: errors now, not later
    return udf

  def function(self):
    """The function, from a fresh module namespace of its own."""
    namespace = {'__name__': 'udf', '__file__': self.path}
    try:
      exec(compile(self.source, self.path, 'exec'), namespace)  # pylint: disable=exec-used
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError('%s does not load: %s: %s' % (
          self.path, type(e).__name__, str(e).splitlines()[0] if str(e) else ''))
    function = namespace.get(self.name)
    if not callable(function):
      raise ValueError('%s defines no function %r' % (self.path, self.name))
    return function


def split_spec(spec):
  path, sep, name = spec.rpartition(':')
  if not sep or not path or not name.isidentifier():
    raise ValueError('%r is not FILE.py:function' % spec)
  return path, name


def objects(result):
  """The function's result -> the objects to store ([] when dropped)."""
  if result is None:
    return []
  if isinstance(result, dict):
    return [_exact(result)]
  if isinstance(result, list) and all(isinstance(r, dict) for r in result):
    return [_exact(r) for r in result]
  raise BadResult('the UDF returned %s, not an object, a list of objects or '
                  'None' % type(result).__name__)


_DECIMAL = decimal.Decimal
_CONTAINERS = (dict, list, tuple)


def _exact(value):
  """Decimals the function computed -> their exact text, as a JSON number
  arrives; tuples -> lists. What holds none is returned as it is, uncopied
  (an identity UDF costs a walk, not a copy)."""
  kind = type(value)
  if kind is dict:
    changed = None
    for key, item in value.items():
      if type(item) in _CONTAINERS or isinstance(item, _DECIMAL):
        new = _exact(item)
        if new is not item:
          if changed is None:
            changed = dict(value)
          changed[key] = new
    return value if changed is None else changed
  if kind is list or kind is tuple:
    changed = None
    for i, item in enumerate(value):
      if type(item) in _CONTAINERS or isinstance(item, _DECIMAL):
        new = _exact(item)
        if new is not item:
          if changed is None:
            changed = list(value)
          changed[i] = new
    if changed is None:
      return value if kind is list else list(value)
    return changed
  if isinstance(value, _DECIMAL):
    return Number(str(value))
  return value
