#!/usr/bin/env bash
# Tern track() vs Mozilla's Glean SDK: caller-side latency (HDR histogram, 1 and 4
# recording threads) and time until the events are on disk, in one run, with the
# ratio table that BENCHMARKS.md quotes. See sdk-core/bench-glean/README.md.
#
#   scripts/bench-sdk.sh                       # 200,000 events, 3 repeats
#   scripts/bench-sdk.sh --events 50000 --repeats 5 --breakdown
#   scripts/bench-sdk.sh --criterion [args]    # also the criterion bench
#
# The crate has its own workspace and Cargo.lock (the main workspace never compiles
# Glean); it builds into target/bench-glean so it does not contend for the main
# target directory's lock. Needs only crates.io.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/bench-glean}"
manifest="$root/sdk-core/bench-glean/Cargo.toml"

criterion=0
args=()
for a in "$@"; do
  if [ "$a" = "--criterion" ]; then criterion=1; else args+=("$a"); fi
done

echo "building tern-bench-glean (release, target dir $CARGO_TARGET_DIR)..." >&2
cargo build --quiet --locked --release --manifest-path "$manifest" --bin tern-bench-glean
"$CARGO_TARGET_DIR/release/tern-bench-glean" "${args[@]}"

if [ "$criterion" = 1 ]; then
  echo >&2
  echo "criterion: cargo bench --bench track" >&2
  cargo bench --locked --manifest-path "$manifest" --bench track
fi
