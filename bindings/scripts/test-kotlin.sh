#!/usr/bin/env bash
# The Kotlin host-JVM suite: the generated bindings plus the dev.tern layer, tested with
# JUnit 5 against the host-built native library, including a live round trip through a
# local stack (tern-server-stub + one tern-relay, started by `tern-fleet stack`). The
# layer's tests are thin callers of bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt,
# which the Android instrumented suite (bindings/android/src/androidTest) runs too.
# The Android glue's logic (bindings/android/src/main/kotlin/dev/tern/android/logic,
# which must not import android.* / androidx.*) runs here too, against the recording
# fakes of bindings/android/src/test.
#
# Installs what it needs when missing (fails loudly if it cannot, never skips), through
# bindings/scripts/kotlin-tools.sh:
#   - kotlinc 2.4.20 from npm (`kotlin-compiler`) into the tool cache (~/.cache/tern-tools/kotlin) (also provides
#     kotlin-stdlib and kotlinx-coroutines-core-jvm)
#   - JNA and JUnit from Debian apt (libjna-java junit4 junit5)
# Prints a plain `N passed, N failed` line; exits non-zero on any failure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "test-kotlin.sh: $*" >&2; exit 1; }

# ---- dependencies (bindings/scripts/kotlin-tools.sh) ----
. "$root/bindings/scripts/kotlin-tools.sh"
kotlin_tools test-kotlin.sh

# ---- native library, generated Kotlin, stack binaries ----
gen="$root/target/tern-bindings/gen"
lib=$("$root/bindings/scripts/generate.sh" "$gen" | tail -n 1)
libdir=$(dirname "$lib")
cargo build --quiet --locked -p tern-fleet -p tern-server-stub -p tern-relay --bins
bindir=$libdir

# ---- compile ----
logic="$root/bindings/android/src/main/kotlin/dev/tern/android/logic"
if grep -nE '^import (android|androidx)\.' "$logic"/*.kt >&2; then
  die "the glue's logic ($logic) must not use Android APIs: move that part to the adapter (AndroidPlatform.kt)"
fi
build="$root/target/tern-bindings/kotlin"
rm -rf "$build" && mkdir -p "$build"
cp_main="/usr/share/java/jna.jar:$coroutines"
echo "compiling the Kotlin bindings and tests ..." >&2
"$kotlin_home/bin/kotlinc" -nowarn -jvm-target 17 -cp "$cp_main:/usr/share/java/junit-platform-console-standalone.jar" \
  -d "$build/classes" \
  "$gen/kotlin" "$root/bindings/kotlin/src/main/kotlin" "$root/bindings/kotlin/src/testFixtures/kotlin" \
  "$root/bindings/kotlin/src/test/kotlin" "$logic" "$root/bindings/android/src/test/kotlin" 2>&1 \
  | grep -v '^warning' >&2 || true
for c in dev/tern/TernTest dev/tern/Scenarios dev/tern/android/TernGlueTest dev/tern/android/TernPushTest dev/tern/android/TernProcess; do
  [ -f "$build/classes/$c.class" ] || die "kotlinc failed ($c.class missing)"
done

# ---- the local stack for the live round trip ----
work=$(mktemp -d -t tern-kotlin-stack.XXXXXX)
"$bindir/tern-fleet" stack --relays 1 --work-dir "$work" >"$work/fleet.out" 2>"$work/fleet.err" &
stack_pid=$!
cleanup() {
  kill -TERM "$stack_pid" 2>/dev/null || true
  wait "$stack_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 600); do
  [ -f "$work/stack.env" ] && break
  kill -0 "$stack_pid" 2>/dev/null || { cat "$work/fleet.err" >&2; die "tern-fleet stack exited early"; }
  sleep 0.1
done
[ -f "$work/stack.env" ] || { cat "$work/fleet.err" >&2; die "the stack was not ready within 60 s"; }

# ---- run ----
set +e
TERN_STACK_ENV="$work/stack.env" java -Djna.library.path="$libdir" \
  -jar /usr/share/java/junit-platform-console-standalone.jar \
  -cp "$build/classes:$cp_main:$kotlin_home/lib/kotlin-stdlib.jar" \
  --include-classname '.*' --select-class dev.tern.TernTest --select-class dev.tern.android.TernGlueTest --select-class dev.tern.android.TernPushTest --fail-if-no-tests \
  --details=tree --disable-banner --disable-ansi-colors 2>&1 | tee "$build/junit.log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -oE '\[ *[0-9]+ tests successful' "$build/junit.log" | grep -oE '[0-9]+' || echo 0)
failed=$(grep -oE '\[ *[0-9]+ tests failed' "$build/junit.log" | grep -oE '[0-9]+' || echo 0)
echo "kotlin host tests: $passed passed, $failed failed"
# A JUnit 5 method that does not return Unit is silently not a test: count them.
expected=$(cat "$root/bindings/kotlin/src/test/kotlin/dev/tern/TernTest.kt" "$root/bindings/android/src/test/kotlin/dev/tern/android/TernGlueTest.kt" "$root/bindings/android/src/test/kotlin/dev/tern/android/TernPushTest.kt" | grep -c '@Test')
[ "$passed" -eq "$expected" ] || echo "test-kotlin.sh: $expected tests declared, $passed passed" >&2
[ "$status" -eq 0 ] && [ "$failed" -eq 0 ] && [ "$passed" -eq "$expected" ] || exit 1
