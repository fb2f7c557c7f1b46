"""A JSON object -> a row for a BigQuery table schema, with the exact value
BigQuery would store (``bigquery_values`` reads each type), or a refusal
naming the field and why. Keys match columns ignoring ASCII case, as
BigQuery's column names do (their letters are A-Z and a-z; a key that names
a column only under Unicode case rules, such as the Kelvin sign for ``k``,
is another key). Reasons: missing_field, bad_value, out_of_range,
unknown_field, duplicate_field.
"""

import string

from transforms import bigquery_values
from transforms import exact_json
from transforms.bigquery_values import ALIASES  # noqa: F401 (this module's API too)
from transforms.bigquery_values import INT64_MAX
from transforms.bigquery_values import INT64_MIN
from transforms.bigquery_values import REASONS  # noqa: F401
from transforms.bigquery_values import TYPES  # noqa: F401
from transforms.bigquery_values import Refused


_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(name):
  """A key or column name with only A-Z lowered: str.lower would also fold
  the Kelvin sign (U+212A) into 'k' and other letters BigQuery does not."""
  return name.lower() if name.isascii() else name.translate(_ASCII_LOWER)


def _join(prefix, name):
  return '%s.%s' % (prefix, name) if prefix else name


def _scalar_converter(field, unknown):
  """field -> convert(value, path): the type's reader, or a RECORD's fields."""
  if field.type != 'RECORD':
    return bigquery_values.value_reader(field.type)
  convert = RowConverter(field.fields, unknown)._convert  # pylint: disable=protected-access

  def record(v, path):
    if type(v) is not dict:  # pylint: disable=unidiomatic-typecheck
      raise bigquery_values.not_an_object(path, v)
    return convert(v, path)
  return record


def _fast_reader(field, unknown):
  """field -> read(value, None) for a value that is not None: the type's
  reader, or a RECORD's fast conversion (``_Slow`` for a non-object)."""
  if field.type != 'RECORD':
    return bigquery_values.value_reader(field.type)
  fast = RowConverter(field.fields, unknown)._fast  # pylint: disable=protected-access

  def record(v, _):
    if type(v) is not dict:  # pylint: disable=unidiomatic-typecheck
      raise _Slow
    return fast(v)
  return record


def _field_converter(field, unknown):
  """field -> convert(value, prefix): mode handling around the type's reader."""
  scalar = _scalar_converter(field, unknown)
  name = field.name
  if field.mode == 'REPEATED':
    def repeated(value, prefix):
      if value is None:
        return []
      if type(value) is list:  # pylint: disable=unidiomatic-typecheck
        try:  # paths are built only to name a refused item (below)
          return [scalar(item, None) for item in value]
        except Refused:
          pass
      path = _join(prefix, name)
      if type(value) is not list:  # pylint: disable=unidiomatic-typecheck
        raise bigquery_values.not_an_array(path, value)
      out = []
      for i, item in enumerate(value):
        item_path = '%s[%d]' % (path, i)
        if item is None:
          raise Refused('bad_value', item_path, 'null in an array')
        out.append(scalar(item, item_path))
      return out
    return repeated
  required = field.mode == 'REQUIRED'
  nested = field.type == 'RECORD'  # its fields' paths need this one's

  def single(value, prefix):
    if value is None:
      if required:
        raise Refused('missing_field', _join(prefix, name),
                      'required, absent or null')
      return None
    try:
      return scalar(value, _join(prefix, name) if nested else None)
    except Refused as e:
      if e.path is None:  # raised at this level: name the field now
        raise Refused(e.reason, _join(prefix, name), str(e))
      raise
  return single


# Inline checks for the common value of a type: when the check holds, the
# value is stored as it is, with no call; otherwise the field's converter
# decides (None, other forms, refusals with their path).
_INLINE = {
    'STRING': 'type({v}) is str',
    'BOOLEAN': 'type({v}) is bool',
    'INTEGER': 'type({v}) is int and {min} <= {v} <= {max}',
}


class _Slow(Exception):
  """The fast conversion met what only the named one decides (a null where
  one is refused, a type that is not the field's)."""


def _slow():
  raise _Slow  # a new one each time: a raised instance keeps its traceback


class RowConverter(object):
  """Fields -> a callable converting one JSON object, built once per schema:
  a function generated for these fields (common values checked inline, the
  rest through each field's converter) instead of a call per field. Keys
  match columns ignoring ASCII case (``fold``); two keys naming one column
  are duplicate_field.

  Two functions are generated: a fast one that calls the value readers
  directly and names nothing, and the named one, which builds each field's
  path for its refusal. The fast one runs first; on anything it does not
  accept, the named one decides (the same readers: the same values)."""
  def __init__(self, fields, unknown='ignore'):
    self._names = frozenset(f.name for f in fields)
    self._by_fold = {fold(f.name): f.name for f in fields}
    self._reject = unknown == 'reject'
    self._convert = self._generate(fields, unknown)
    self._fast = self._generate_fast(fields, unknown)

  def _compile(self, header, prefix, fields, body_of, scope):
    """A generated converter: ``header``, the payload keyed by column (with
    ``prefix`` naming a refusal), each field's value ``v<i>`` through the
    lines ``body_of(i, field)`` gives, and the row of them all."""
    scope.update(names=self._names, by_column=self._by_column)
    lines = ['def %s:' % header,
             '  if not names.issuperset(payload):',
             '    payload = by_column(payload, %s)' % prefix,
             '  get = payload.get']
    for i, field in enumerate(fields):
      lines.append('  v%d = get(%r)' % (i, field.name))
      lines += body_of(i, field)
    lines.append('  return {%s}' % ', '.join(
        '%r: v%d' % (f.name, i) for i, f in enumerate(fields)))
    exec('\n'.join(lines), scope)  # pylint: disable=exec-used
    return scope[header.split('(')[0]]

  def _generate_fast(self, fields, unknown):
    scope = {'slow': _slow}

    def body(i, field):
      v = 'v%d' % i
      scope['s%d' % i] = _fast_reader(field, unknown)
      if field.mode == 'REPEATED':
        return ['  if %s is None:' % v, '    %s = []' % v,
                '  elif type(%s) is list:' % v,
                '    %s = [s%d(x, None) if x is not None else slow() '
                'for x in %s]' % (v, i, v),
                '  else:', '    slow()']
      inline = _INLINE.get(field.type)
      return ['  if %s is None:' % v,
              '    slow()' if field.mode == 'REQUIRED' else '    pass',
              ('  elif not (%s):' % inline.format(
                  v=v, min=INT64_MIN, max=INT64_MAX)) if inline else '  else:',
              '    %s = s%d(%s, None)' % (v, i, v)]
    return self._compile('fast(payload)', "''", fields, body, scope)

  def _generate(self, fields, unknown):
    scope = {}

    def body(i, field):
      v = 'v%d' % i
      scope['c%d' % i] = _field_converter(field, unknown)
      inline = _INLINE.get(field.type) if field.mode != 'REPEATED' else None
      call = '%s = c%d(%s, prefix)' % (v, i, v)
      if inline:
        return ['  if not (%s):' % inline.format(
            v=v, min=INT64_MIN, max=INT64_MAX), '    ' + call]
      return ['  ' + call]
    return self._compile('convert(payload, prefix)', 'prefix', fields, body,
                         scope)

  def __call__(self, payload, prefix=''):
    try:
      return self._fast(payload)
    except (Refused, _Slow):
      return self._convert(payload, prefix)  # names the field, or accepts

  def _by_column(self, payload, prefix):
    """The payload keyed by column names; refuses unknown keys (when asked)
    and two keys that name one column."""
    out = {}
    for key, value in payload.items():
      column = key if key in self._names else self._by_fold.get(
          key.lower() if key.isascii() else key.translate(_ASCII_LOWER))
      if column is None:
        if self._reject:
          raise Refused('unknown_field', _join(prefix, key), 'not in the schema')
        continue
      if column in out:
        raise Refused('duplicate_field', _join(prefix, column),
                      'two keys name this column (column names ignore '
                      'ASCII case)')
      out[column] = value
    return out


def first_unencodable(row):
  """The path of a string in a converted row that holds a lone surrogate."""
  return exact_json.first_unencodable(row)


def surrogate_refusal(path):
  return Refused('bad_value', path, 'holds a lone surrogate escape, which is '
                 'not Unicode text')


def convert_object(payload, fields, unknown='ignore', prefix=''):
  """A JSON object -> {column: Python value} for ``fields``; raises Refused."""
  return RowConverter(fields, unknown)(payload, prefix)
