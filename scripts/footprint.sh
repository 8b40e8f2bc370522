#!/usr/bin/env bash
# SDK footprint: stripped size of the size-tuned shared library and steady RSS
# overhead while tracking. Figures go to BENCHMARKS.md.
#   scripts/footprint.sh [seconds] [events/s]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

echo "building the SDK core as a cdylib with the 'mobile' profile (opt-level z, fat LTO, codegen-units 1, panic unwind, strip)..."
cargo build --quiet --locked --profile mobile -p tern-sdk --example footprint_lib --example footprint_empty
lib="$root/target/mobile/examples/libfootprint_lib.so"
ref="$root/target/mobile/examples/libfootprint_empty.so"
size=$(stat -c %s "$lib")
ref_size=$(stat -c %s "$ref")
budget=$((3 * 1024 * 1024))
awk -v s="$size" -v r="$ref_size" -v b="$budget" 'BEGIN {
  printf "size: SDK core cdylib %d bytes (%.2f MiB); empty Rust cdylib, same profile, same run: %d bytes (%.2f MiB)\n", s, s/1048576, r, r/1048576
  printf "size: SDK share %.2f MiB = %.1fx the empty library; %.0f%% of the 3 MiB budget (%s)\n", (s-r)/1048576, s/r, 100*s/b, (s <= b ? "within" : "OVER")
}'

echo "measuring RSS (release build)..."
cargo run --quiet --locked --release -p tern-sdk --example footprint_rss -- "${1:-30}" "${2:-1000}"
