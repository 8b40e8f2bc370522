#!/usr/bin/env bash
# Relay ingest benchmark: tern-loadgen against one tern-relay on loopback, with the
# loadgen's backend sink behind it, and against a raw QUIC reference in the same run.
# Prints the table that BENCHMARKS.md ("Relay ingest") quotes.
#
#   scripts/bench-relay.sh                        # 10 s per phase, 1 repeat
#   scripts/bench-relay.sh --duration 5s --repeats 3
#   scripts/bench-relay.sh --with-stub            # also relay -> tern-server-stub (SQLite)
#
# Phases, each repeat:
#   1. raw     raw QUIC reference (same clients, same bytes), closed loop, max rate
#   2. happy   relay -> sink, closed loop, max rate
#   3. half    relay -> sink, open loop at min(happy / 2, 250k) events/s: ack latency
#   4. degraded  sink answers 503: the relay's breaker opens and it spools to its
#              local-disk spool; closed loop, max rate
#   (5. stub   relay -> tern-server-stub, max rate, with --with-stub)
#
# Everything runs on this machine: the load generator, the relay and the sink share its
# cores. Every process started here is stopped on exit.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"

duration=10s
warmup=2s
repeats=1
connections=32
concurrency=8
events=100
with_stub=0
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --events-per-batch) events=$2; shift 2 ;;
    --with-stub) with_stub=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v jq >/dev/null || { echo "bench-relay.sh needs jq (apt-get install jq)" >&2; exit 2; }

packages=(-p tern-relay)
[ "$with_stub" = 1 ] && packages+=(-p tern-server-stub)
echo "building release binaries (${packages[*]})..." >&2
(cd "$root" && cargo build --quiet --locked --release "${packages[@]}" --bins)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Starts a process whose first stdout line is a JSON ready line; prints that line.
start() {
  local name=$1; shift
  "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  for _ in $(seq 1 300); do
    if [ -s "$tmp/$name.out" ]; then head -n1 "$tmp/$name.out"; return 0; fi
    sleep 0.05
  done
  echo "$name did not start:" >&2; cat "$tmp/$name.err" >&2; exit 1
}

sink_addr=$(start sink "$bin/tern-loadgen" sink --listen 127.0.0.1:0 | jq -r .listen)
sink="http://$sink_addr"

# The relay's defaults are for production (per-app limit 50k events/s): raise them for
# the benchmark, through its environment (not by changing defaults).
relay_ready=$(start relay env RUST_LOG=warn \
  TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC=1000000000 TERN_RELAY_RATE_LIMIT_BURST=1000000000 \
  "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca.pem" --relay-id bench-relay \
  --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
  --backend-url "$sink" --spool-dir "$tmp/spool")
quic=$(jq -r .quic <<<"$relay_ready")
metrics=$(jq -r .metrics <<<"$relay_ready")
relay_pid=${pids[-1]}

if [ "$with_stub" = 1 ]; then
  stub_addr=$(start stub "$bin/tern-server-stub" --listen 127.0.0.1:0 \
    --data-dir "$tmp/stub-data" --config "$root/server-stub/demo/apps.toml" | jq -r .listen)
  start relay-stub env RUST_LOG=warn \
    TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC=1000000000 TERN_RELAY_RATE_LIMIT_BURST=1000000000 \
    "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca-stub.pem" --relay-id bench-relay-stub \
    --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 \
    --backend-url "http://$stub_addr" --spool-dir "$tmp/spool-stub" >"$tmp/relay-stub.ready"
  quic_stub=$(jq -r .quic "$tmp/relay-stub.ready")
fi

shape=(--connections "$connections" --concurrency "$concurrency" --events-per-batch "$events"
       --duration "$duration" --warmup "$warmup" --json)
relay_args=(--target "$quic" --ca "$tmp/ca.pem")

# Runs one phase; appends its JSON record to $tmp/results.jsonl with a "phase" field.
phase() {
  local name=$1 repeat=$2; shift 2
  echo "== repeat $repeat: $name" >&2
  "$bin/tern-loadgen" "${shape[@]}" "$@" | jq -c --arg p "$name" --argjson r "$repeat" \
    '. + {phase: $p, repeat: $r}' >>"$tmp/results.jsonl"
}

set_sink() { curl -fsS -X PUT --data "$1" "$sink/admin/ingest-status" >/dev/null; }

relay_cpu() { # user+system CPU seconds of the relay so far
  awk '{print ($14 + $15) / 100}' "/proc/$relay_pid/stat"
}

for r in $(seq 1 "$repeats"); do
  set_sink 200
  phase raw "$r" --raw --rate 0
  c0=$(relay_cpu)
  phase happy "$r" "${relay_args[@]}" --rate 0
  c1=$(relay_cpu)
  happy=$(tail -n1 "$tmp/results.jsonl" | jq '.events_per_sec')
  half=$(jq -n --argjson h "$happy" '[($h / 2 | floor), 250000] | min | if . < 1000 then 1000 else . end')
  phase half "$r" "${relay_args[@]}" --rate "$half"
  set_sink 503
  phase degraded "$r" "${relay_args[@]}" --rate 0
  set_sink 200
  if [ "$with_stub" = 1 ]; then
    phase stub "$r" --target "$quic_stub" --ca "$tmp/ca-stub.pem" --rate 0
  fi
  echo "   relay CPU during the happy phase: $(jq -n "($c1 - $c0) * 100 | round") cpu-% over warm-up + run" >&2
done

echo
echo "tern-relay ingest, $(nproc) cores shared by load generator, relay and sink;" \
     "$connections connections x $concurrency streams, $events events/batch, $duration per phase"
echo
jq -rs '
  def r(x): (x * 100 | round) / 100;
  def med(xs): (xs | sort) as $s | $s[(($s | length) - 1) / 2 | floor];
  group_by(.phase) | map({
    phase: .[0].phase, n: length,
    eps: med(map(.events_per_sec)), lo: (map(.events_per_sec) | min), hi: (map(.events_per_sec) | max),
    p50: med(map(.latency_ms.p50)), p99: med(map(.latency_ms.p99)), p999: med(map(.latency_ms.p999)),
    rate: .[0].rate,
    fwd: (map(.outcomes.accepted_forwarded) | add), spool: (map(.outcomes.accepted_spooled) | add),
    retry: (map(.outcomes.retry) | add), err: (map(.errors) | add)
  }) as $rows
  | ($rows | map({key: .phase, value: .}) | from_entries) as $by
  | "| phase | offered | events/s (median) | range | p50 ms | p99 ms | p99.9 ms | forwarded / spooled / retry / errors | ratio |",
    "|---|---:|---:|---|---:|---:|---:|---|---:|",
    ( ["raw", "happy", "half", "degraded", "stub"][] as $p | $by[$p] // empty
      | . as $x
      | ( if $p == "happy" then "relay/raw " + (r($x.eps / $by.raw.eps) | tostring)
          elif $p == "degraded" then "degraded/happy " + (r($x.eps / $by.happy.eps) | tostring)
          elif $p == "stub" then "stub/happy " + (r($x.eps / $by.happy.eps) | tostring)
          elif $p == "half" then "p99 at half load"
          else "reference" end ) as $ratio
      | "| \($p) | \(if $x.rate == 0 then "max" else ($x.rate | tostring) end) | \($x.eps | round) | \($x.lo | round)–\($x.hi | round) (n=\($x.n)) | \($x.p50) | \($x.p99) | \($x.p999) | \($x.fwd) / \($x.spool) / \($x.retry) / \($x.err) | \($ratio) |" )
' "$tmp/results.jsonl"
echo
echo "raw records: $(wc -l <"$tmp/results.jsonl") runs" >&2
if [ -n "${BENCH_RELAY_KEEP:-}" ]; then cp "$tmp/results.jsonl" "$BENCH_RELAY_KEEP"; fi
echo "relay metrics were at http://$metrics/metrics" >&2
