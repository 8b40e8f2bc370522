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
#      raw-half  the raw reference at that same rate: the latency floor of this machine
#                (and of its other tenants) in the same run
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

# One package per cargo invocation: built together, their features would unify
# differently from a plain `cargo build -p tern-relay` and rebuild everything.
echo "building release binaries..." >&2
(cd "$root" && cargo build --quiet --locked --release -p tern-relay --bins)
if [ "$with_stub" = 1 ]; then
  (cd "$root" && cargo build --quiet --locked --release -p tern-server-stub --bins)
fi
bin="${CARGO_TARGET_DIR:-$root/target}/release"

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

# Starts a process in the background (not in a subshell: its pid must reach the trap)
# and waits for its JSON ready line, the first line of $tmp/NAME.out.
start() {
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

start sink "$bin/tern-loadgen" sink --listen 127.0.0.1:0
sink="http://$(ready sink listen)"

# The relay's defaults are for production (per-app limit 50k events/s): raise them for
# the benchmark, through its environment (not by changing defaults).
start relay env RUST_LOG=warn \
  TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC=1000000000 TERN_RELAY_RATE_LIMIT_BURST=1000000000 \
  "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca.pem" --relay-id bench-relay \
  --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --backend-url "$sink" --spool-dir "$tmp/spool"
relay_pid=${pids[-1]}
quic=$(ready relay quic)
metrics=$(ready relay metrics)

if [ "$with_stub" = 1 ]; then
  start stub "$bin/tern-server-stub" --listen 127.0.0.1:0 \
    --data-dir "$tmp/stub-data" --config "$root/server-stub/demo/apps.toml"
  start relay-stub env RUST_LOG=warn TERN_RELAY_SPOOL_DIR="$tmp/spool-stub" \
    TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC=1000000000 TERN_RELAY_RATE_LIMIT_BURST=1000000000 \
    "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca-stub.pem" --relay-id bench-relay-stub \
    --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
    --backend-url "http://$(ready stub listen)" --spool-dir "$tmp/spool-stub"
  quic_stub=$(ready relay-stub quic)
fi

shape=(--connections "$connections" --concurrency "$concurrency" --events-per-batch "$events"
       --duration "$duration" --warmup "$warmup" --json)
relay_args=(--target "$quic" --ca "$tmp/ca.pem")

relay_cpu() { # user + system CPU seconds of the relay so far (clock ticks of 10 ms)
  awk '{ print ($14 + $15) / 100 }' "/proc/$relay_pid/stat"
}

# Runs one phase; appends its JSON record to $tmp/results.jsonl with the phase name
# and the CPU the relay used meanwhile (warm-up and drain included).
phase() {
  local name=$1 repeat=$2; shift 2
  echo "== repeat $repeat: $name" >&2
  local c0 c1 out
  c0=$(relay_cpu)
  out=$("$bin/tern-loadgen" "${shape[@]}" "$@")
  c1=$(relay_cpu)
  jq -c --arg p "$name" --argjson r "$repeat" --argjson c0 "$c0" --argjson c1 "$c1" \
    '. + {phase: $p, repeat: $r,
          relay_cpu_s: (if ($p | startswith("raw")) or $p == "stub" then null else ($c1 - $c0) end)}' \
    <<<"$out" >>"$tmp/results.jsonl"
}

set_sink() { curl -fsS -X PUT --data "$1" "$sink/admin/ingest-status" >/dev/null; }

for r in $(seq 1 "$repeats"); do
  set_sink 200
  phase raw "$r" --raw --rate 0
  phase happy "$r" "${relay_args[@]}" --rate 0
  happy=$(tail -n1 "$tmp/results.jsonl" | jq '.events_per_sec')
  half=$(jq -n --argjson h "$happy" '[($h / 2 | floor), 250000] | min | if . < 1000 then 1000 else . end')
  phase half "$r" "${relay_args[@]}" --rate "$half"
  phase raw-half "$r" --raw --rate "$half"
  set_sink 503
  phase degraded "$r" "${relay_args[@]}" --rate 0
  set_sink 200
  if [ "$with_stub" = 1 ]; then
    phase stub "$r" --target "$quic_stub" --ca "$tmp/ca-stub.pem" --rate 0
  fi
done

echo
echo "tern-relay ingest, $(nproc) cores shared by load generator, relay and sink;" \
     "$connections connections x $concurrency streams, $events events/batch, $duration per phase"
echo
jq -rs '
  def r2(x): (x * 100 | round) / 100;
  def med(xs): (xs | sort) as $s | $s[(($s | length) - 1) / 2 | floor];
  def sent(x): x.events_sent + x.warmup.events_sent;
  . as $all | group_by(.phase) | map({
    phase: .[0].phase, n: length, rate: .[0].rate,
    eps: med(map(.events_per_sec)), lo: (map(.events_per_sec) | min), hi: (map(.events_per_sec) | max),
    p50: med(map(.latency_ms.p50)), p99: med(map(.latency_ms.p99)), p999: med(map(.latency_ms.p999)),
    relay_us: (if .[0].relay_cpu_s == null then null
               else med(map(.relay_cpu_s * 1e6 / sent(.))) end),
    gen_us: med(map(.loadgen_cpu_s * 1e6 / sent(.))),
    fwd: (map(.outcomes.accepted_forwarded) | add), spool: (map(.outcomes.accepted_spooled) | add),
    retry: (map(.outcomes.retry) | add), err: (map(.errors) | add)
  }) as $rows
  | ($rows | map({key: .phase, value: .}) | from_entries) as $by
  # Ratios are taken within each repeat (same run, same machine state), then summarised.
  | ($all | group_by(.repeat) | map(map({key: .phase, value: .}) | from_entries)) as $reps
  | def ratio(a; b; f): [$reps[] | select(.[a] != null and .[b] != null) | (.[a] | f) / (.[b] | f)]
      | if length == 0 then "–" else "\(r2(med(.)))" + (if length > 1 then " (\(r2(min))–\(r2(max)))" else "" end) end;
    "| phase | offered events/s (repeat 1) | events/s (median) | range | ack p50 ms | p99 ms | p99.9 ms | relay CPU µs/event | loadgen CPU µs/event | forwarded / spooled / retry / errors | ratio |",
    "|---|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ( ["raw", "happy", "raw-half", "half", "degraded", "stub"][] as $p | $by[$p] // empty
      | . as $x
      | ( if $p == "happy" then "relay/raw " + ratio("happy"; "raw"; .events_per_sec)
          elif $p == "degraded" then "degraded/happy " + ratio("degraded"; "happy"; .events_per_sec)
          elif $p == "stub" then "stub/happy " + ratio("stub"; "happy"; .events_per_sec)
          elif $p == "half" then "p99 relay/raw at this rate " + ratio("half"; "raw-half"; .latency_ms.p99)
          elif $p == "raw-half" then "latency reference at the half-load rate"
          else "reference (client + server CPU)" end ) as $ratio
      | "| \($p) | \(if $x.rate == 0 then "max" else ($x.rate | tostring) end) | \($x.eps | round) | \($x.lo | round)–\($x.hi | round) (n=\($x.n)) | \($x.p50) | \($x.p99) | \($x.p999) | \(if $x.relay_us == null then "–" else (r2($x.relay_us) | tostring) end) | \(r2($x.gen_us)) | \($x.fwd) / \($x.spool) / \($x.retry) / \($x.err) | \($ratio) |" )
' "$tmp/results.jsonl"
echo
echo "raw records: $(wc -l <"$tmp/results.jsonl") runs" >&2
if [ -n "${BENCH_RELAY_KEEP:-}" ]; then cp "$tmp/results.jsonl" "$BENCH_RELAY_KEEP"; fi
echo "relay metrics were at http://$metrics/metrics" >&2
