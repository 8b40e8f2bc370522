#!/usr/bin/env bash
# Compile check of the Android glue and the Android instrumented tests on a machine
# without the Android SDK: kotlinc compiles
#   bindings/android/src/main/kotlin         (the glue: adapter + logic, dev.tern.android)
#   bindings/android/src/androidTest/kotlin  (the instrumented tests)
#   bindings/kotlin/src/testFixtures/kotlin  (the scenarios they share with the host suite)
# against the real dev.tern layer, the generated dev.tern.ffi bindings, kotlinx-coroutines
# and JUnit 4, with bindings/android/stubs standing in for android.jar / AndroidX /
# AndroidX Test (signatures only; see its README). So the glue and the device tests cannot
# rot against the Tern API; their use of the Android APIs is checked only by the Gradle
# build with the real SDK (bindings/android, not run here).
#
# Then runs bindings/android/stubs/check/WorkPolicyCheck.kt: the adapter's WorkManager
# calls against the recording WorkManager stub (KEEP for the one-shot flush).
#
# Also checks that every @Test of the instrumented suite that calls a shared scenario
# names a scenario that exists, and that each scenario has an instrumented caller.
# Uses kotlinc and the jars that test-kotlin.sh installs (run it first, or let
# scripts/test.sh order them).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "check-android.sh: $*" >&2; exit 1; }

kotlin_home="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}/kotlin/package"
[ -x "$kotlin_home/bin/kotlinc" ] || die "kotlinc missing at $kotlin_home: run bindings/scripts/test-kotlin.sh once (installs it)"
coroutines="$kotlin_home/lib/kotlinx-coroutines-core-jvm.jar"
for j in /usr/share/java/jna.jar /usr/share/java/junit4.jar "$coroutines"; do
  [ -f "$j" ] || die "$j missing: run bindings/scripts/test-kotlin.sh once (installs it)"
done

gen="$root/target/tern-bindings/gen"
"$root/bindings/scripts/generate.sh" "$gen" >/dev/null

out="$root/target/tern-bindings/android-check"
rm -rf "$out" && mkdir -p "$out"
echo "compiling the Android glue and instrumented tests against the Tern API (Android stubs) ..." >&2
set +e
"$kotlin_home/bin/kotlinc" -jvm-target 17 -Werror \
  -cp "/usr/share/java/jna.jar:$coroutines:/usr/share/java/junit4.jar" -d "$out/classes" \
  "$gen/kotlin" \
  "$root/bindings/kotlin/src/main/kotlin" \
  "$root/bindings/kotlin/src/testFixtures/kotlin" \
  "$root/bindings/android/stubs" \
  "$root/bindings/android/src/main/kotlin" \
  "$root/bindings/android/src/androidTest/kotlin" >"$out/kotlinc.log" 2>&1
status=$?
set -e
if [ "$status" -ne 0 ]; then
  cat "$out/kotlinc.log" >&2
  die "kotlinc failed"
fi
for c in dev/tern/android/TernAndroid dev/tern/android/TernFlushWorker dev/tern/android/AndroidPlatform \
         dev/tern/android/TernInstrumentedTest dev/tern/android/TernAndroidGlueTest dev/tern/Scenarios \
         dev/tern/android/WorkPolicyCheckKt; do
  [ -f "$out/classes/$c.class" ] || die "$c.class was not produced"
done

# The adapter's WorkManager calls, run against the recording WorkManager stub.
java -cp "$out/classes:$kotlin_home/lib/kotlin-stdlib.jar:/usr/share/java/jna.jar:$coroutines" \
  dev.tern.android.WorkPolicyCheckKt || die "the flush jobs' WorkManager policies are wrong"

# Every scenario runs on the device too, and every caller names a real scenario.
python3 - "$root" <<'PY'
import re, sys
root = sys.argv[1]
scen = open(f"{root}/bindings/kotlin/src/testFixtures/kotlin/dev/tern/Scenarios.kt").read()
declared = set(re.findall(r"^    fun (\w+)\(\)(?:: Unit)? *[={]", scen, re.M))
problems = []
for name, path in (("instrumented", "bindings/android/src/androidTest/kotlin/dev/tern/android/TernInstrumentedTest.kt"),
                   ("host", "bindings/kotlin/src/test/kotlin/dev/tern/TernTest.kt")):
    called = set(re.findall(r"scenarios\.(\w+)\(\)", open(f"{root}/{path}").read()))
    problems += [f"{path}: calls unknown scenario {c}" for c in sorted(called - declared)]
    problems += [f"{name} suite ({path}) does not run scenario {d}" for d in sorted(declared - called)]
for p in problems:
    print(p, file=sys.stderr)
print(f"scenarios: {len(declared)} shared, run by the host and the instrumented suite; {len(problems)} problems")
sys.exit(1 if problems else 0)
PY
echo "android glue and instrumented tests compile against the Tern API"
