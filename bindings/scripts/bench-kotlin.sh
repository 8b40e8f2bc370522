#!/usr/bin/env bash
# The cost of `track()` at the app's boundary: Kotlin on the host JVM through JNA
# (bindings/kotlin/src/bench/kotlin/dev/tern/TrackBench.kt) against, in the same run,
# the core's own `Tern::track` and the exported Rust method without the FFI
# (bindings/examples/track_bench.rs). Same event (name + 2 properties), same per-call
# timing, release builds, a fresh data directory each. Prints p50/p99/p99.9 and the
# ratios; figures go to BENCHMARKS.md ("Kotlin track() at the boundary").
#
#   bindings/scripts/bench-kotlin.sh [calls]      (default 200000, after 10% warm-up)
#
# Uses kotlinc and the jars that test-kotlin.sh installs (run it first).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "bench-kotlin.sh: $*" >&2; exit 1; }
calls=${1:-200000}
kotlin_home="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}/kotlin/package"
coroutines="$kotlin_home/lib/kotlinx-coroutines-core-jvm.jar"
[ -x "$kotlin_home/bin/kotlinc" ] && [ -f /usr/share/java/jna.jar ] \
  || die "kotlinc or JNA missing: run bindings/scripts/test-kotlin.sh once (installs them)"

gen="$root/target/tern-bindings/gen"
"$root/bindings/scripts/generate.sh" "$gen" >/dev/null
cargo build --quiet --locked --release -p tern-bindings --lib --example track_bench
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
rel="$target_dir/release"

out="$root/target/tern-bindings/bench"
rm -rf "$out" && mkdir -p "$out"
"$kotlin_home/bin/kotlinc" -nowarn -jvm-target 17 -cp "/usr/share/java/jna.jar:$coroutines" -d "$out/classes" \
  "$gen/kotlin" "$root/bindings/kotlin/src/main/kotlin" "$root/bindings/kotlin/src/bench/kotlin" 2>&1 \
  | grep -v '^warning' >&2 || true
[ -f "$out/classes/dev/tern/TrackBenchKt.class" ] || die "kotlinc failed"

work=$(mktemp -d -t tern-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
"$rel/examples/track_bench" "$work/rust" "$calls" | tee "$out/rust.txt"
java -Djna.library.path="$rel" -cp "$out/classes:/usr/share/java/jna.jar:$coroutines:$kotlin_home/lib/kotlin-stdlib.jar" \
  dev.tern.TrackBenchKt "$work/jvm" "$calls" | tee "$out/kotlin.txt"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$out/rust.txt" "$out/kotlin.txt" <<'PY'
import re, sys
rows = {}
for path in sys.argv[1:]:
    for line in open(path):
        m = re.match(r"(.+?): calls=\d+ p50_ns=(\d+) p99_ns=(\d+) p999_ns=(\d+)", line)
        if m:
            rows[m.group(1)] = tuple(int(x) for x in m.groups()[1:])
core = rows["rust core Tern::track"]
for name, (p50, p99, p999) in rows.items():
    print(f"{name:32} p50 {p50/1000:7.2f} us  p99 {p99/1000:7.2f} us  p99.9 {p999/1000:7.2f} us"
          f"  | vs core: p50 x{p50/core[0]:.2f}, p99 x{p99/core[1]:.2f}")
PY
