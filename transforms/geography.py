"""GEOGRAPHY values as BigQuery reads them: WKT, WKB in hex, or GeoJSON
geometry text, on the WGS84 sphere (longitude -180..180, latitude -90..90),
2D and valid; kept as canonical WKT (what DuckDB's ST_GeomFromText and
BigQuery both read), every coordinate written so that it reads back as the
same double. shapely (GEOS) does the parsing and the checks."""

import json
import math
import re

WKT_DECIMALS = 30  # enough for any double's shortest round-trip text
_HEX = re.compile(r'(?:[0-9A-Fa-f]{2})+')
_GEOJSON_GEOMETRIES = ('Point', 'MultiPoint', 'LineString', 'MultiLineString',
                       'Polygon', 'MultiPolygon', 'GeometryCollection')


def _parse(text):
  import shapely
  if text.startswith('{'):
    try:
      kind = json.loads(text).get('type')
    except (ValueError, AttributeError, RecursionError):
      raise ValueError('not GeoJSON')
    if kind not in _GEOJSON_GEOMETRIES:
      raise ValueError('GeoJSON type %r is not a geometry' % str(kind)[:40])
    return shapely.from_geojson(text)
  if _HEX.fullmatch(text):
    return shapely.from_wkb(bytes.fromhex(text))
  return shapely.from_wkt(text)


def canonical_wkt(text):
  """text -> canonical WKT; ValueError saying what is wrong."""
  import shapely
  text = text.strip()
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    raise ValueError('holds a lone surrogate escape, which is not text')
  try:
    geometry = _parse(text)
  except (shapely.errors.GEOSException, ValueError, TypeError) as e:
    raise ValueError((str(e).splitlines() or ['unreadable'])[0][:200]
                     or 'unreadable')
  if geometry is None:
    raise ValueError('unreadable')
  if shapely.has_z(geometry):
    raise ValueError('GEOGRAPHY is 2D: no Z coordinates')
  coords = shapely.get_coordinates(geometry)
  for lon, lat in coords.tolist():
    if not (math.isfinite(lon) and math.isfinite(lat)):
      raise ValueError('coordinates must be finite')
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
      raise ValueError('(%r, %r) is outside longitude -180..180, latitude '
                       '-90..90' % (lon, lat))
  if not shapely.is_valid(geometry):
    raise ValueError('invalid geometry: %s' % shapely.is_valid_reason(geometry))
  # GEOS's "trim" writes the shortest text that reads back as the double
  # when allowed enough decimals; its default (-1) stops at 16 significant
  # digits (0.001227796386726803 became 0.0012277963867268).
  wkt = shapely.to_wkt(geometry, rounding_precision=WKT_DECIMALS, trim=True)
  if shapely.get_coordinates(shapely.from_wkt(wkt)).tolist() != coords.tolist():
    raise ValueError('its coordinates cannot be written exactly as WKT')
  return wkt
