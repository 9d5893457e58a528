#!/usr/bin/env bash
# Run the public HTTP cache conformance suite (github.com/http-tests/cache-tests, as on cache-tests.fyi)
# against a fresh edgecache in one-origin mode, via the shared harness in shared/conformance/.
#
# The suite is fetched separately and NEVER committed to this repository (nor its node_modules or results).
# One-time setup, outside the repo (default location /tmp/cache-tests):
#   fetch the http-tests/cache-tests repository into /tmp/cache-tests
#     (or from a bare snapshot: mkdir -p /tmp/cache-tests && git --git-dir=SNAPSHOT.git archive HEAD | tar -x -C /tmp/cache-tests)
#   cd /tmp/cache-tests && npm install --omit=dev --no-audit --no-fund     # needs only undici, liquidjs, marked
#
# usage: scripts/cache-tests.sh [SUITE_DIR] [PORT] [OUT.json] [run-cache-tests.sh options: -S | -i TEST_ID]
#   SUITE_DIR  cache-tests checkout (any existing directory argument; default $CACHE_TESTS_DIR or /tmp/cache-tests)
#   PORT       port for the edge on 127.0.0.1 (any all-digits argument; default $EDGE_PORT, else 18610 or the next free one)
#   OUT.json   where the raw results JSON goes (any other argument; default /tmp/cache-tests-edgecache.json)
#   -S is passed by default (per-group table); any option given replaces that default.
# env: CONFORMANCE_DIR (default <repo>/../../shared/conformance), ORIGIN_PORT (suite origin, default 18600),
#      PYTHON (default python3), EDGE_WAIT (seconds to wait for the edge's port, default 20).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

SUITE=${CACHE_TESTS_DIR:-/tmp/cache-tests}
PORT=${EDGE_PORT:-}
OUT=/tmp/cache-tests-edgecache.json
while [ $# -gt 0 ]; do
  case $1 in
    -*) break ;;                                  # the rest goes to run-cache-tests.sh
    *[!0-9]*|'') if [ -d "$1" ]; then SUITE=$1; else OUT=$1; fi ;;
    *) PORT=$1 ;;
  esac
  shift
done
[ $# -gt 0 ] || set -- -S
case $OUT in /*) ;; *) OUT=$PWD/$OUT ;; esac
SUITE=$(cd "$SUITE" && pwd)
export CACHE_TESTS_DIR=$SUITE
export ORIGIN_PORT=${ORIGIN_PORT:-18600}
CONFORMANCE_DIR=${CONFORMANCE_DIR:-$(dirname "$0")/../../shared/conformance}
RUNNER=$CONFORMANCE_DIR/run-cache-tests.sh
PYTHON=${PYTHON:-python3}
WAIT=${EDGE_WAIT:-20}

[ -x "$RUNNER" ] || { echo "no $RUNNER (set CONFORMANCE_DIR)" >&2; exit 1; }
[ -f "$SUITE/test-engine/cli.mjs" ] || { echo "$SUITE is not a cache-tests checkout (see the setup at the top of $0)" >&2; exit 1; }
[ -d "$SUITE/node_modules" ] || { echo "$SUITE has no node_modules: cd $SUITE && npm install --omit=dev" >&2; exit 1; }

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [ -z "$PORT" ]; then            # don't silently test some other process that already holds the port
  PORT=18610
  while listening "$PORT"; do PORT=$((PORT + 1)); [ "$PORT" -lt 18700 ] || { echo "no free port in 18610-18699" >&2; exit 1; }; done
elif listening "$PORT"; then
  echo "something already listens on 127.0.0.1:$PORT; pick another port" >&2; exit 1
fi

CACHE=$(mktemp -d /tmp/edgecache-ct.XXXXXX)
LOG=$CACHE.log
EDGE=""
cleanup() {
  if [ -n "$EDGE" ]; then           # the edge runs in its own process group (workers may be processes)
    kill -TERM -- "-$EDGE" 2>/dev/null || kill -TERM "$EDGE" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$EDGE" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$EDGE" 2>/dev/null || true
    wait "$EDGE" 2>/dev/null || true
  fi
  rm -rf "$CACHE"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A fill sends only what its key holds (README, "What reaches the origin"); the suite's origin tells its requests
# apart by the three fields its client adds to each one, so they are the one-origin site's forward_fields, as a
# trace id would be. Nothing else a test sends reaches its origin on a fill.
( cd "$REPO" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec setsid "$PYTHON" -m edgecache serve \
    --origin "http://127.0.0.1:$ORIGIN_PORT" --listen "127.0.0.1:$PORT" --cache-dir "$CACHE" \
    --forward-field Req-Num --forward-field Test-ID --forward-field Test-Name ) >"$LOG" 2>&1 &
EDGE=$!
deadline=$((SECONDS + WAIT))
until listening "$PORT"; do
  if ! kill -0 "$EDGE" 2>/dev/null; then echo "edgecache exited before listening; log $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; fi
  if [ "$SECONDS" -ge "$deadline" ]; then echo "edgecache not listening on 127.0.0.1:$PORT after ${WAIT}s; log $LOG:" >&2; tail -20 "$LOG" >&2; exit 1; fi
  sleep 0.2
done
echo "edgecache pid $EDGE on 127.0.0.1:$PORT -> origin 127.0.0.1:$ORIGIN_PORT (cache $CACHE, log $LOG)" >&2

"$RUNNER" "http://127.0.0.1:$PORT" "$OUT" "$@"
echo "results JSON: $OUT (edge log: $LOG)"
