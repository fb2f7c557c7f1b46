#!/usr/bin/env bash
# The local loop. ./run.sh demo | test [pytest args] | bench | help
# Creates the virtualenv on first use and reinstalls only when the
# requirements or setup.py change (a hash stamp), so later runs start at once.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
ROOT=$PWD
VENV=${VENV:-$ROOT/.venv}
PY=$VENV/bin/python
OUT=$ROOT/output

# Local runs and tests talk to loopback only: Google auth must not probe the
# link-local metadata server, and gcloud must not look for updates.
export NO_GCE_CHECK=true GCE_METADATA_HOST=127.0.0.1:9 GCE_METADATA_IP=127.0.0.1:9
export CLOUDSDK_CORE_DISABLE_PROMPTS=1 CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK=true
export CLOUDSDK_CORE_DISABLE_USAGE_REPORTING=true
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}

say() { printf '\n== %s\n' "$*"; }

ensure_venv() {
  local stamp
  stamp=$(cat requirements.txt requirements-test.txt setup.py | sha256sum | cut -c1-16)
  if [ -x "$PY" ] && [ "$(cat "$VENV/.requirements-stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  say "installing into $VENV (first run: a few minutes; apache-beam[gcp] is large)"
  [ -x "$PY" ] || python3 -m venv "$VENV"
  "$PY" -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
  echo "$stamp" > "$VENV/.requirements-stamp"
}

# The BigQuery emulator lives in a venv of its own (its DuckDB pin differs
# from ours); DuckDB extensions are installed from the PyPI wheels with a
# private HOME, which is also its HOME when it runs (tools/emulators.py).
export BQEMULATOR_VENV=${BQEMULATOR_VENV:-$ROOT/.local/bqemulator}

ensure_bqemulator() {
  local stamp bq_py=$BQEMULATOR_VENV/bin/python
  stamp=$(sha256sum < requirements-bqemulator.txt | cut -c1-16)
  if [ -x "$bq_py" ] && [ "$(cat "$BQEMULATOR_VENV/.requirements-stamp" 2>/dev/null)" = "$stamp" ]; then
    return
  fi
  say "installing the BigQuery emulator into $BQEMULATOR_VENV (first run: about a minute)"
  [ -x "$bq_py" ] || python3 -m venv "$BQEMULATOR_VENV"
  "$bq_py" -m pip install --quiet --disable-pip-version-check -r requirements-bqemulator.txt
  mkdir -p "$BQEMULATOR_VENV/home"
  HOME=$BQEMULATOR_VENV/home "$bq_py" - <<'PYEOF'
import glob, os, duckdb
site = os.path.dirname(os.path.dirname(duckdb.__file__))
con = duckdb.connect()
for name in ('spatial', 'avro'):
  path, = glob.glob(os.path.join(site, 'duckdb_extension_%s' % name, 'extensions',
                                 '*', '%s.duckdb_extension' % name))
  con.execute("INSTALL '%s'" % path)
PYEOF
  echo "$stamp" > "$BQEMULATOR_VENV/.requirements-stamp"
}

ensure_graphviz() {
  command -v dot >/dev/null && return
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing graphviz (dot) for --render_output"
    (apt-get install -y -qq graphviz >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq graphviz >/dev/null; }) ||
      echo "could not install graphviz: --render_output will not work" >&2
  else
    echo "graphviz (dot) is missing: install it for --render_output" >&2
  fi
}

demo_wordcount() {
  say "wordcount on the bundled sample text (data/devils_dictionary.txt)"
  rm -rf "$OUT/wordcount"
  "$PY" main.py wordcount --output "$OUT/wordcount/counts" \
    --output_table "$OUT/wordcount/word_counts.duckdb"
  say "top 10 words (SQL on the local DuckDB table)"
  "$PY" - "$OUT/wordcount/word_counts.duckdb" <<'PYEOF'
import sys, duckdb
con = duckdb.connect(sys.argv[1], read_only=True)
for word, count in con.sql(
    'SELECT word, count FROM word_counts ORDER BY count DESC, word LIMIT 10').fetchall():
  print('%8d  %s' % (count, word))
PYEOF
}

EMULATOR_STATE=${EMULATOR_STATE:-$ROOT/.local/emulators}

emulators() {
  "$PY" -m tools.emulators "$@" --state "$EMULATOR_STATE"
}

with_emulator_env() {
  eval "$("$PY" -m tools.emulators env --state "$EMULATOR_STATE")"
}

demo_streaming() {
  say "streaming sign-ins on the local Pub/Sub emulator"
  local started_here=0
  if ! emulators status >/dev/null 2>&1; then
    emulators start >/dev/null
    started_here=1
  fi
  with_emulator_env
  local rc=0
  "$PY" -m tools.demo_stream || rc=$?
  if [ "$started_here" = 1 ]; then
    emulators stop >/dev/null
  fi
  return $rc
}

usage() {
  cat <<'USAGE'
usage: ./run.sh COMMAND
  demo                       both pipelines on bundled sample data and local emulators
  test [ARGS]                the test suite, in 2 processes (TEST_WORKERS);
                             ARGS go to pytest instead
  emulators start|stop|status|env|dataset P:D
                             the local Pub/Sub, GCS and BigQuery emulators
                             (.local/emulators); env prints the exports;
                             dataset makes a BigQuery dataset on the emulator
  publish [ARGS]             publish sample sign-ins (see ./run.sh publish --help);
                             to the running emulator, else to real Pub/Sub
  bench [wordcount|streaming|live|parse|payload|pull|replay|archive] [ARGS]
                             the benchmarks (see benchmarks/README.md)
USAGE
}

cmd=${1:-help}
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    ensure_venv
    ensure_bqemulator
    demo_wordcount
    demo_streaming
    ;;
  emulators)
    ensure_venv
    [ "${1:-status}" = start ] && ensure_bqemulator
    emulators "${@:-status}"
    ;;
  publish)
    ensure_venv
    if "$PY" -m tools.emulators status --state "$EMULATOR_STATE" >/dev/null 2>&1; then
      with_emulator_env
    fi
    exec "$PY" -m tools.publish_signins "$@"
    ;;
  test)
    ensure_venv
    ensure_bqemulator
    ensure_graphviz
    # The whole suite in TEST_WORKERS processes (pytest-xdist; a file's tests
    # stay together, each process starts the emulators it needs): most of
    # its time is waiting on streams and emulators. With arguments, as given.
    if [ $# -eq 0 ]; then
      set -- -n "${TEST_WORKERS:-2}" --dist loadfile
    fi
    exec "$PY" -m pytest "$@"
    ;;
  bench)
    ensure_venv
    ensure_bqemulator
    which=${1:-wordcount}
    [ $# -gt 0 ] && shift
    case "$which" in
      wordcount|streaming|live|parse|payload|pull|replay|archive) exec "$PY" "benchmarks/${which}_bench.py" "$@" ;;
      *) echo "usage: ./run.sh bench [wordcount|streaming|live|parse|payload|pull|replay|archive] [ARGS]" >&2; exit 2 ;;
    esac
    ;;
  help|-h|--help) usage ;;
  *) usage >&2; exit 2 ;;
esac
