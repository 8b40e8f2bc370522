#!/usr/bin/env bash
# SDK footprint: stripped size of the size-tuned shared library and steady RSS
# overhead while tracking. Figures go to BENCHMARKS.md.
#   scripts/footprint.sh [seconds] [events/s]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

echo "building the SDK core as a cdylib with the 'mobile' profile (opt-level z, fat LTO, codegen-units 1, panic abort, strip)..."
cargo build --quiet --locked --profile mobile -p tern-sdk --example footprint_lib
lib="$root/target/mobile/examples/libfootprint_lib.so"
size=$(stat -c %s "$lib")
budget=$((3 * 1024 * 1024))
printf 'size: %s = %d bytes (%.2f MiB), budget 3 MiB: %s\n' "${lib#"$root"/}" "$size" \
  "$(awk "BEGIN { print $size / 1048576 }")" "$([ "$size" -le "$budget" ] && echo within || echo OVER)"

echo "measuring RSS (release build)..."
cargo run --quiet --locked --release -p tern-sdk --example footprint_rss -- "${1:-30}" "${2:-1000}"
