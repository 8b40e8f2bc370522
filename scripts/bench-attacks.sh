#!/usr/bin/env bash
# Relay under attack: a good client's success rate and p99, and the relay's RSS, while
# each exhaustion attack of issue #18 runs — against the same client with no attack in
# the same run. Prints the table that BENCHMARKS.md ("Relay under attack") quotes.
#
#   scripts/bench-attacks.sh                      # every attack, 15 s each
#   scripts/bench-attacks.sh --duration 20s --only quic-streams,slowloris
#
# Per attack, on a fresh relay (release build, `tern-loadgen sink` behind it, the limits
# below through TERN_RELAY_LIMITS_*):
#   1. reference  `tern-loadgen good` alone (2 devices x 20 batches/s of 10 events,
#                 from 127.0.0.1), for --duration
#   2. attack     `tern-loadgen attack <kind>` from 127.0.0.2..127.0.0.5, and once it is
#                 set up the same good client again, for --duration; the relay's RSS is
#                 sampled every 100 ms
# The attacks (sizes from the issue):
#   quic-streams     4 connections x 136 streams, each 1 MB of a frame never finished
#   quic-handshakes  60 sockets, a handshake each per 200 ms, answering Retry, never finished
#   https-bodies     300 HTTPS requests with 1 MB of a body never finished
#   slowloris        2,000 TLS connections trickling a request head, 1 byte / s
#   subscriptions    200 HTTPS push subscriptions held (the good client uses HTTPS)
#
# Everything runs on this machine. Every process started here is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

duration=15s
only=quic-streams,quic-handshakes,https-bodies,slowloris,subscriptions
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v jq >/dev/null || { echo "bench-attacks.sh needs jq (apt-get install jq)" >&2; exit 2; }
secs=${duration%s}

echo "building release binaries..." >&2
(cd "$root" && cargo build --quiet --locked --release -p tern-relay --bins)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

start() { # name cmd...: background, wait for the JSON ready line in $tmp/name.out
  local name=$1; shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  for _ in $(seq 1 300); do
    if [ -s "$tmp/$name.out" ]; then return 0; fi
    sleep 0.05
  done
  echo "$name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1
}
ready() { head -n1 "$tmp/$1.out" | jq -r ".$2"; }

# The budget the RSS is held to, and limits sized like a small edge relay.
budget=$((64 * 1024 * 1024))
limits=(
  TERN_RELAY_LIMITS_REQUEST_BYTES=$budget
  TERN_RELAY_LIMITS_REQUEST_BYTES_PER_SOURCE=$((8 * 1024 * 1024))
  TERN_RELAY_LIMITS_REQUEST_READ_TIMEOUT_MS=10000
  TERN_RELAY_LIMITS_HEADER_TIMEOUT_MS=5000
  TERN_RELAY_LIMITS_HANDSHAKE_TIMEOUT_MS=5000
  TERN_RELAY_LIMITS_MAX_HANDSHAKES=512
  TERN_RELAY_LIMITS_HANDSHAKES_PER_SOURCE=16
  TERN_RELAY_LIMITS_RETRY_ABOVE_HANDSHAKES=64
  TERN_RELAY_LIMITS_CONNECTIONS_PER_SOURCE=64
  TERN_RELAY_LIMITS_HTTPS_MAX_CONNECTIONS=1024
  TERN_RELAY_LIMITS_HTTPS_MAX_REQUESTS=256
  TERN_RELAY_LIMITS_REQUESTS_PER_SOURCE=16
  TERN_RELAY_LIMITS_MAX_SUBSCRIPTIONS=256
  TERN_RELAY_LIMITS_SUBSCRIPTIONS_PER_SOURCE=16
  TERN_RELAY_MAX_CONNECTIONS=1000
)
from=127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5

start sink "$bin/tern-loadgen" sink --listen 127.0.0.1:0
sink="http://$(ready sink listen)"

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# good NAME TRANSPORT TARGET EXTRA...: the good client; its JSON line into $tmp/NAME.json
good() {
  local name=$1 transport=$2 target=$3; shift 3
  "$bin/tern-loadgen" good --transport "$transport" --target "$target" --ca "$tmp/ca.pem" \
    --bind 127.0.0.1 --senders 2 --rate 20 --events-per-batch 10 --duration "$duration" "$@" \
    >"$tmp/$name.json"
}

run_attack() {
  local kind=$1
  echo "== $kind" >&2
  rm -f "$tmp/ca.pem"
  start "relay-$kind" env RUST_LOG=error "${limits[@]}" \
    TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC=1000000000 TERN_RELAY_RATE_LIMIT_BURST=1000000000 \
    "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca.pem" --relay-id "bench-$kind" \
    --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --backend-url "$sink" --spool-dir "$tmp/spool-$kind" \
    --admin-state-file "$tmp/admin-$kind.json"
  local relay_pid=${pids[-1]}
  local quic https metrics
  quic=$(ready "relay-$kind" quic); https=$(ready "relay-$kind" https)
  metrics=$(ready "relay-$kind" metrics)
  for _ in $(seq 1 200); do curl -fsS "http://$metrics/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

  local transport=quic target=$quic extra=() attack=()
  case "$kind" in
    quic-streams) attack=(--target "$quic" --connections 4 --streams 136 --bytes 1000000) ;;
    quic-handshakes) attack=(--target "$quic" --connections 60 --interval 200ms --follow-retry)
                     extra=(--reconnect-every 1) ;;
    https-bodies) attack=(--target "$https" --connections 300 --bytes 1000000)
                  transport=https; target=$https ;;
    slowloris) attack=(--target "$https" --connections 2000 --interval 1s)
               transport=https; target=$https ;;
    subscriptions) attack=(--target "$https" --connections 200)
                   transport=https; target=$https ;;
  esac

  good "ref-$kind" "$transport" "$target" "${extra[@]}"
  local rss0 peak
  rss0=$(rss_kib "$relay_pid"); peak=$rss0
  "$bin/tern-loadgen" attack "$kind" --ca "$tmp/ca.pem" --from "$from" \
    --duration "$((secs * 2 + 15))s" "${attack[@]}" >"$tmp/attack-$kind.jsonl" 2>/dev/null &
  local attack_pid=$!
  pids+=("$attack_pid")
  for _ in $(seq 1 600); do
    grep -q '"established"' "$tmp/attack-$kind.jsonl" 2>/dev/null && break
    sleep 0.1
  done
  good "under-$kind" "$transport" "$target" "${extra[@]}" &
  local good_pid=$!
  while kill -0 "$good_pid" 2>/dev/null; do
    local now; now=$(rss_kib "$relay_pid")
    [ "$now" -gt "$peak" ] && peak=$now
    sleep 0.1
  done
  wait "$good_pid"
  kill "$attack_pid" 2>/dev/null || true
  wait "$attack_pid" 2>/dev/null || true
  local refused
  refused=$(curl -fsS "http://$metrics/metrics" | awk '/^tern_relay_(refused|deadline_exceeded)_total/ { s += $NF } END { print s + 0 }')
  jq -n --arg kind "$kind" --argjson ref "$(cat "$tmp/ref-$kind.json")" \
    --argjson under "$(cat "$tmp/under-$kind.json")" --argjson rss0 "$rss0" --argjson peak "$peak" \
    --argjson budget "$budget" --argjson cut "$refused" --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    '{kind: $kind, ref: $ref, under: $under, rss0_kib: $rss0, peak_kib: $peak,
      budget_mib: ($budget / 1048576), cut: $cut, load: $load}' >>"$tmp/results.jsonl"
  kill "$relay_pid" 2>/dev/null || true
  wait "$relay_pid" 2>/dev/null || true
}

IFS=, read -r -a kinds <<<"$only"
for k in "${kinds[@]}"; do run_attack "$k"; done

echo
echo "tern-relay under attack, $(nproc) cores shared by attacker, good client, relay and sink;" \
     "$duration per phase; budget $((budget / 1048576)) MiB request data in flight"
echo
jq -rs '
  def r2(x): (x * 100 | round) / 100;
  "| attack | good client success, reference → under attack | p99 ms, reference → under attack | p99 ratio | relay RSS before → peak MiB | peak − before vs budget | refusals + deadlines counted | load avg |",
  "|---|---|---|---:|---|---|---:|---|",
  ( .[] | "| \(.kind) | \(.ref.accepted)/\(.ref.batches) (\(r2(.ref.success_ratio * 100))%) → \(.under.accepted)/\(.under.batches) (\(r2(.under.success_ratio * 100))%) | \(.ref.latency_ms.p99) → \(.under.latency_ms.p99) | \(if .ref.latency_ms.p99 > 0 then r2(.under.latency_ms.p99 / .ref.latency_ms.p99) else "–" end) | \(r2(.rss0_kib / 1024)) → \(r2(.peak_kib / 1024)) | \(r2((.peak_kib - .rss0_kib) / 1024)) MiB of \(.budget_mib) | \(.cut) | \(.load) |" )
' "$tmp/results.jsonl"
if [ -n "${BENCH_ATTACKS_KEEP:-}" ]; then cp "$tmp/results.jsonl" "$BENCH_ATTACKS_KEEP"; fi
