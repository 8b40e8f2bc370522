#!/usr/bin/env bash
# Browser test of the relay dashboard (issue #7 item 2), in headless Chromium:
# tern-server-stub + one tern-relay on loopback (free ports), tern-loadgen offering a
# steady load; the page is opened, signed in to (a wrong token first: the 401 message),
# live numbers must move under load; "Degrade forwarding" is clicked and confirmed, and
# both the page (spooled/s > 0) and the admin API (totals.degraded_spooled growing) must
# show the relay spooling; then forwarding is restored; the app is blocked (with a
# reason: its devices get Retry) and unblocked; the breaker forced open and released;
# finally (relays with drain) the relay is drained from the page and must exit. Screenshots go to
# target/dashboard-artifacts/.
#
#   relay/scripts/test-dashboard.sh
#
# Installs what it needs when missing: Debian `chromium` (apt-get) and `playwright-core`
# (npm, into the tool cache (~/.cache/tern-tools/playwright)). Fails loudly if it cannot. Stops every process it starts.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
tools="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}"
target="${CARGO_TARGET_DIR:-$root/target}"
artifacts="$target/dashboard-artifacts"
playwright_version=1.65.1
export PATH="$HOME/.cargo/bin:$PATH"

die() { printf '\ntest-dashboard: FAILED: %s\n' "$*" >&2; exit 1; }

# --- dependencies --------------------------------------------------------------
chromium=${TERN_CHROMIUM:-$(command -v chromium || true)}
if [ -z "$chromium" ]; then
  echo "installing chromium (Debian package, one time)" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
    || die "could not install chromium (needs apt and root); or set TERN_CHROMIUM to a Chromium binary"
  chromium=$(command -v chromium) || die "chromium still not on PATH after apt-get install"
fi
command -v node >/dev/null || die "node not found (apt-get install nodejs npm)"
playwright="$tools/playwright/node_modules/playwright-core"
if [ "$(node -p "try { require('$playwright/package.json').version } catch (e) { '' }")" != "$playwright_version" ]; then
  command -v npm >/dev/null || die "npm not found: needed to fetch playwright-core@$playwright_version"
  echo "installing playwright-core@$playwright_version (npm) into the tool cache (~/.cache/tern-tools/playwright) (one time)" >&2
  mkdir -p "$tools/playwright"
  (cd "$tools/playwright" && npm install --no-save --no-audit --no-fund --silent "playwright-core@$playwright_version") \
    || die "could not install playwright-core@$playwright_version from npm"
fi
echo "chromium: $("$chromium" --version 2>/dev/null | head -n1); playwright-core $playwright_version; node $(node --version)"

# --- binaries (one package per cargo call: features unify differently otherwise) ---
echo "building tern-relay and tern-server-stub (debug)..." >&2
cargo build --quiet --locked -p tern-relay --bins || die "cargo build -p tern-relay"
cargo build --quiet --locked -p tern-server-stub --bins || die "cargo build -p tern-server-stub"
bin="$target/debug"

# --- the stack -----------------------------------------------------------------
tmp=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]+"${pids[@]}"}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]+"${pids[@]}"}"; do wait "$p" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    for f in "$tmp"/*.err; do
      [ -s "$f" ] && { echo "--- last lines of $(basename "$f")" >&2; tail -n 20 "$f" >&2; }
    done
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts NAME in the background (its pid must reach the trap, so not in a subshell)
# and waits for its JSON ready line, the first line of $tmp/NAME.out.
start() {
  local name=$1; shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  for _ in $(seq 1 600); do
    if [ -s "$tmp/$name.out" ] && head -n1 "$tmp/$name.out" | grep -q '}'; then return 0; fi
    kill -0 "${pids[-1]}" 2>/dev/null || die "$name exited before its ready line: $(tail -n 5 "$tmp/$name.err")"
    sleep 0.05
  done
  die "$name printed no ready line in 30 s: $(tail -n 5 "$tmp/$name.err")"
}
ready() { head -n1 "$tmp/$1.out" | python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$2"; }

start stub "$bin/tern-server-stub" --listen 127.0.0.1:0 \
  --data-dir "$tmp/stub-data" --config "$root/server-stub/demo/apps.toml"
start relay env RUST_LOG=warn \
  "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca.pem" --relay-id dash-relay \
  --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --backend-url "http://$(ready stub listen)" --spool-dir "$tmp/spool"
admin="http://$(ready relay admin)"
token_file=$(ready relay admin_token_file)
[ -s "$token_file" ] || die "the relay wrote no admin token file ($token_file)"

# A steady, modest load (debug build): 2,000 events/s, well under the default
# per-app limit, for longer than the test needs (stopped by the trap).
start_load() {
  "$bin/tern-loadgen" --target "$(ready relay quic)" --ca "$tmp/ca.pem" \
    --connections 4 --concurrency 2 --events-per-batch 20 --rate 2000 \
    --warmup 0s --duration 150s >"$tmp/loadgen.out" 2>"$tmp/loadgen.err" &
  pids+=($!)
}
start_load

# --- the browser -----------------------------------------------------------------
rm -rf "$artifacts"
mkdir -p "$artifacts"
echo "dashboard: $admin/dashboard/ (artifacts: $artifacts)"
if TERN_ADMIN="$admin" TERN_ADMIN_TOKEN="$(cat "$token_file")" TERN_RELAY_ID=dash-relay \
   TERN_CHROMIUM="$chromium" TERN_PLAYWRIGHT="$playwright" TERN_ARTIFACTS="$artifacts" \
   node "$root/relay/scripts/test-dashboard.cjs"; then
  echo
  echo "test-dashboard: PASSED (screenshots: $(cd "$artifacts" && ls ./*.png | tr '\n' ' '))"
else
  die "the browser test failed (screenshots so far: $artifacts)"
fi
