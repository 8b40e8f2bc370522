#!/usr/bin/env bash
# The fleet on the Kotlin layer against the same fleet on tern-sdk, in one run: the same
# `tern-fleet run` (stub + 3 relays, fast-cut profile) twice, first with N Rust devices,
# then with N Kotlin devices (`--layer kotlin`), release builds, one after the other.
# Prints each run's events/s recorded and delivered and the Kotlin/Rust ratios; the
# figures go to BENCHMARKS.md ("Fleet on the Kotlin layer").
#
#   bindings/scripts/bench-fleet-kotlin.sh [devices] [rate] [duration]
#                                           (default 200 devices, 20000 events/s, 20s)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
devices=${1:-200}
rate=${2:-20000}
duration=${3:-20s}

pod_dir=$("$root/bindings/scripts/build-fleet-kotlin.sh" --release | tail -n 1)
cargo build --quiet --locked --release -p tern-fleet -p tern-server-stub -p tern-relay --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
out="$target_dir/tern-bindings/bench-fleet"
rm -rf "$out" && mkdir -p "$out"

for layer in rust kotlin; do
  echo "== $layer: $devices devices, $rate events/s asked, $duration; load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
  "$target_dir/release/tern-fleet" run --layer "$layer" --kotlin-pod "$pod_dir" --devices "$devices" \
    --rate "$rate" --duration "$duration" --quiet --json "$out/$layer.json" | tee "$out/$layer.txt"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out/rust.json" "$out/kotlin.json" <<'PY'
import json, sys
r, k = (json.load(open(p)) for p in sys.argv[1:])
def rates(x):
    return (x["recorded"] / x["record_seconds"], x["delivered"] / x["deliver_seconds"])
(rr, rd), (kr, kd) = rates(r), rates(k)
print(f"{'layer':8} {'recorded':>10} {'lost':>5} {'recorded/s':>11} {'delivered/s':>12} {'p50 ms':>7} {'p99 ms':>7} {'stores open s':>14}")
for name, x, rec, dl in (("rust", r, rr, rd), ("kotlin", k, kr, kd)):
    print(f"{name:8} {x['recorded']:>10} {x['lost']:>5} {rec:>11.0f} {dl:>12.0f} {x['latency_p50_ms']:>7} {x['latency_p99_ms']:>7} {x['start_seconds']:>14.1f}")
print(f"kotlin/rust: recorded/s x{kr / rr:.2f}, delivered/s (recording start to all stored) x{kd / rd:.2f}")
PY
