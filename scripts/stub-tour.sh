#!/usr/bin/env bash
# A tour of the backend stub's API: runs tern-server-stub on the demo config with a
# throw-away data directory, walks through config (ETags, live edits), verification
# counters and metrics once, and keeps serving until Ctrl-C. (The main job, the whole
# stack with devices, is scripts/run.sh.)
#
#   scripts/stub-tour.sh            build (release), start, tour, keep serving
#   scripts/stub-tour.sh --smoke    debug build, tour on an ephemeral port, stop (used by tests)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

smoke=0
[ "${1:-}" = "--smoke" ] && smoke=1
listen=${TERN_STUB_LISTEN:-127.0.0.1:7070}
profile_flag=(--release); bin_dir=release
if [ "$smoke" = 1 ]; then listen=127.0.0.1:0; profile_flag=(); bin_dir=debug; fi

command -v curl >/dev/null || { echo "curl is required" >&2; exit 1; }
echo "building tern-server-stub (${bin_dir})..."
cargo build --quiet --locked "${profile_flag[@]}" -p tern-server-stub
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
stub="$target_dir/$bin_dir/tern-server-stub"

data=$(mktemp -d -t tern-stub.XXXXXX)
out="$data/stdout"
"$stub" --listen "$listen" --data-dir "$data" --config "$root/server-stub/demo/apps.toml" >"$out" 2>"$data/stub.log" &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 200); do
  addr=$(sed -n 's/.*"event":"ready","listen":"\([^"]*\)".*/\1/p' "$out" | head -n 1)
  [ -n "$addr" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "stub exited:" >&2; cat "$data/stub.log" >&2; exit 1; }
  sleep 0.05
done
[ -n "$addr" ] || { echo "stub did not become ready" >&2; cat "$data/stub.log" >&2; exit 1; }
base="http://$addr"

check() { # check <expected-status> <curl args...>
  local want=$1; shift
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || { echo "unexpected HTTP $got (wanted $want) for: $*" >&2; exit 1; }
}

echo
echo "tern-server-stub is up at $base (data: $data)"
echo
echo "--- GET /v1/apps/demo/config (JSON view)"
curl -sf -H 'Accept: application/json' "$base/v1/apps/demo/config"; echo
etag=$(curl -sf -D - -o /dev/null "$base/v1/apps/demo/config" | tr -d '\r' | sed -n 's/^[Ee][Tt][Aa][Gg]: *//p')
echo "ETag: $etag"
echo "--- conditional GET with If-None-Match: $etag"
check 304 -H "If-None-Match: $etag" "$base/v1/apps/demo/config"
echo "304 Not Modified"
echo "--- PUT /admin/apps/demo/values/welcome_text (live change)"
curl -sf -X PUT -H 'Content-Type: application/json' -d '"Hello from the tour"' "$base/admin/apps/demo/values/welcome_text" >/dev/null
check 200 -H "If-None-Match: $etag" "$base/v1/apps/demo/config"
echo "the old ETag now gets 200 with the new bundle"
echo "--- GET /verify/summary"
curl -sf "$base/verify/summary"; echo
echo "--- GET /metrics (first lines)"
curl -sf "$base/metrics" | grep -m 5 '^tern_' || true
echo

if [ "$smoke" = 1 ]; then
  echo "smoke: ok"
  exit 0
fi
echo "Serving until Ctrl-C. Fault injection: curl -X PUT $base/admin/faults -d '{\"down\":true}'"
echo "API reference: server-stub/README.md"
wait "$pid"
