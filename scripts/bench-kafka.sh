#!/usr/bin/env bash
# Relay -> Kafka benchmark: events/s and ack latency of devices' batches through a
# tern-relay whose sink is a Kafka-protocol broker (tansu, SQLite storage, loopback),
# against the same producer sending the same records straight to the broker, in the
# same run; and the relay with the broker down (spooling) against the relay with it up.
# Prints the table BENCHMARKS.md ("Relay to Kafka") quotes.
#
#   scripts/bench-kafka.sh                          # 10 s per phase, 1 repeat
#   scripts/bench-kafka.sh --duration 8s --repeats 3
#
# Phases, each repeat:
#   1. raw       tern-loadgen kafka: the relay's KafkaSink, no relay, closed loop
#   2. happy     tern-loadgen -> relay -> broker, closed loop
#   3. degraded  the broker SIGKILLed: the relay's deliveries time out, its breaker
#                opens, it spools to its local-disk spool; closed loop, measured after
#                an 8 s warm-up (the breaker open). Then the broker is started again on
#                its data for the next repeat.
# Everything shares this machine's cores: the load generator, the relay, the broker.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
tools="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}"
tansu="${TERN_TANSU:-$tools/tansu/bin/tansu}"

duration=10s
warmup=2s
repeats=1
connections=32
concurrency=8
events=100
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --connections) connections=$2; shift 2 ;;
    --concurrency) concurrency=$2; shift 2 ;;
    --events-per-batch) events=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
command -v jq >/dev/null || { echo "bench-kafka.sh needs jq (apt-get install jq)" >&2; exit 2; }
[ -x "$tansu" ] || { echo "no tansu at $tansu: scripts/test.sh installs it (or set TERN_TANSU)" >&2; exit 2; }

echo "building release binaries..." >&2
(cd "$root" && cargo build --quiet --locked --release -p tern-relay --bins)
bin="${CARGO_TARGET_DIR:-$root/target}/release"

tmp=$(mktemp -d)
pids=()
broker_pid=
cleanup() {
  [ -n "$broker_pid" ] && kill -9 "$broker_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

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

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/kafka/schemas"
start_broker() {
  # tansu reads its URLs relative to its working directory.
  (cd "$tmp/kafka" && exec env -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE RUST_LOG=warn \
    "$tansu" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine sqlite://tansu.db --schema-registry file://schemas/ >>"$tmp/kafka.log" 2>&1) &
  broker_pid=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "tansu did not start:" >&2; tail -20 "$tmp/kafka.log" >&2; exit 1
}
start_broker
for t in tern.events:6 tern.dead-letter:1; do
  (cd "$tmp/kafka" && "$tansu" topic create "${t%%:*}" --partitions "${t##*:}" --broker "tcp://127.0.0.1:$port" >/dev/null)
done

# The registry comes from a backend: the load tool's sink serves it (its ingest is unused).
start sink "$bin/tern-loadgen" sink --listen 127.0.0.1:0
start relay env RUST_LOG=warn \
  TERN_RELAY_RATE_LIMIT_EVENTS_PER_SEC=1000000000 TERN_RELAY_RATE_LIMIT_BURST=1000000000 \
  "$bin/tern-relay" --dev --dev-ca-out "$tmp/ca.pem" --relay-id bench-kafka \
  --quic-listen 127.0.0.1:0 --https-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
  --backend-url "http://$(ready sink listen)" --spool-dir "$tmp/spool" \
  --sink kafka --kafka-brokers "127.0.0.1:$port"
quic=$(ready relay quic)

shape=(--connections "$connections" --concurrency "$concurrency" --events-per-batch "$events"
       --duration "$duration" --json)
for r in $(seq 1 "$repeats"); do
  echo "== repeat $r: raw" >&2
  "$bin/tern-loadgen" kafka --brokers "127.0.0.1:$port" --events-per-batch "$events" \
    --concurrency $((connections * concurrency)) --duration "$duration" --warmup "$warmup" \
    | jq -c --argjson r "$r" '{phase: "raw", repeat: $r, eps: .events_per_sec, p50: .latency_ms.p50, p99: .latency_ms.p99, failed: .failed, fwd: .events_acked, spool: 0}' >>"$tmp/results.jsonl"
  echo "== repeat $r: happy" >&2
  "$bin/tern-loadgen" "${shape[@]}" --warmup "$warmup" --target "$quic" --ca "$tmp/ca.pem" --rate 0 \
    | jq -c --argjson r "$r" '{phase: "happy", repeat: $r, eps: .events_per_sec, p50: .latency_ms.p50, p99: .latency_ms.p99, failed: .errors, fwd: .outcomes.accepted_forwarded, spool: .outcomes.accepted_spooled}' >>"$tmp/results.jsonl"
  echo "== repeat $r: degraded (broker killed)" >&2
  kill -9 "$broker_pid"; wait "$broker_pid" 2>/dev/null || true; broker_pid=
  # A longer warm-up: the first deliveries wait out their timeout (5 s) before the
  # breaker opens; the measured window is the steady state of spooling.
  "$bin/tern-loadgen" "${shape[@]}" --warmup 8s --target "$quic" --ca "$tmp/ca.pem" --rate 0 \
    | jq -c --argjson r "$r" '{phase: "degraded", repeat: $r, eps: .events_per_sec, p50: .latency_ms.p50, p99: .latency_ms.p99, failed: .errors, fwd: .outcomes.accepted_forwarded, spool: .outcomes.accepted_spooled}' >>"$tmp/results.jsonl"
  start_broker
  sleep 2
done

echo
echo "relay -> Kafka (tansu 0.6.0, SQLite storage), $(nproc) cores shared by load generator, relay and broker;" \
     "$connections connections x $concurrency streams ($((connections * concurrency)) deliveries in flight for raw), $events events/batch, $duration per phase"
echo
jq -rs '
  def r2(x): (x * 100 | round) / 100;
  def med(xs): (xs | sort) as $s | $s[(($s | length) - 1) / 2 | floor];
  (group_by(.repeat) | map(map({key: .phase, value: .}) | from_entries)) as $reps
  | def ratio(a; b): [$reps[] | select(.[a] != null and .[b] != null and .[b].eps > 0) | .[a].eps / .[b].eps]
      | if length == 0 then "–" else "\(r2(med(.)))" + (if length > 1 then " (\(r2(min))–\(r2(max)))" else "" end) end;
  group_by(.phase) | map({phase: .[0].phase, n: length, eps: med(map(.eps)), lo: (map(.eps) | min), hi: (map(.eps) | max),
    p50: med(map(.p50)), p99: med(map(.p99)), failed: (map(.failed) | add), spool: (map(.spool) | add)})
  | map({key: .phase, value: .}) | from_entries as $by
  | "| phase | events/s (median) | range | ack p50 ms | p99 ms | spooled batches | failed | ratio |",
    "|---|---:|---|---:|---:|---:|---:|---|",
    ( ["raw", "happy", "degraded"][] as $p | $by[$p] // empty | . as $x
      | (if $p == "happy" then "relay/raw " + ratio("happy"; "raw")
         elif $p == "degraded" then "degraded/happy " + ratio("degraded"; "happy")
         else "reference" end) as $ratio
      | "| \($p) | \($x.eps | round) | \($x.lo | round)–\($x.hi | round) (n=\($x.n)) | \($x.p50) | \($x.p99) | \($x.spool) | \($x.failed) | \($ratio) |" )
' "$tmp/results.jsonl"
