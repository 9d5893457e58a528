#!/usr/bin/env bash
# Run the public cache-tests suite (github.com/http-tests/cache-tests, as on cache-tests.fyi) against a fresh
# edgecache in its one-origin mode. The suite is fetched separately and never committed; set it up once:
#   git clone <http-tests/cache-tests> /tmp/cache-tests && (cd /tmp/cache-tests && npm install --omit=dev)
# usage: scripts/cache-tests.sh [OUT.json] [extra run-cache-tests.sh args, e.g. -S or -i TEST_ID]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export CACHE_TESTS_DIR=${CACHE_TESTS_DIR:-/tmp/cache-tests}
CONFORMANCE_DIR=${CONFORMANCE_DIR:-$HERE/../../shared/conformance}
PORT=${EDGE_PORT:-18610}
OUT=${1:-/tmp/cache-tests-edgecache.json}
shift || true
CACHE=$(mktemp -d /tmp/edgecache-ct.XXXXXX)
python3 -m edgecache serve --origin http://127.0.0.1:18600 --listen 127.0.0.1:"$PORT" --cache-dir "$CACHE" \
  >"$CACHE.log" 2>&1 &
EDGE=$!
trap 'kill $EDGE 2>/dev/null || true; wait $EDGE 2>/dev/null || true; rm -rf "$CACHE"' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.2; done
"$CONFORMANCE_DIR/run-cache-tests.sh" "http://127.0.0.1:$PORT" "$OUT" "$@"
echo "results: $OUT (edge log: $CACHE.log)"
