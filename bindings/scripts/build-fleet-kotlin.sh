#!/usr/bin/env bash
# Builds the Kotlin pod of the fleet (`tern-fleet run --layer kotlin`): the dev.tern
# layer, the generated bindings and the pod (bindings/kotlin/src/fleet) compiled into
# one jar, with what it runs on, into a directory beside the tern-fleet binary of the
# same profile, where `tern-fleet run --layer kotlin` looks for it:
#
#   bindings/scripts/build-fleet-kotlin.sh            -> target/debug/tern-fleet-kotlin/
#   bindings/scripts/build-fleet-kotlin.sh --release  -> target/release/tern-fleet-kotlin/
#
#   tern-fleet-kotlin/tern-fleet-kotlin.jar   layer + generated bindings + dev.tern.fleet.PodKt
#   tern-fleet-kotlin/lib/*.jar               JNA, kotlin-stdlib, kotlinx-coroutines
#   tern-fleet-kotlin/native/libtern_bindings.so   the host library, same profile
#
# (elsewhere: `tern-fleet run --layer kotlin --kotlin-pod DIR` or TERN_FLEET_KOTLIN_POD).
# Installs kotlinc and JNA when missing (bindings/scripts/kotlin-tools.sh). Prints the
# directory on its last line.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "build-fleet-kotlin.sh: $*" >&2; exit 1; }
profile=debug
case "${1:-}" in
  "") ;;
  --release) profile=release ;;
  *) die "usage: build-fleet-kotlin.sh [--release]" ;;
esac

. "$root/bindings/scripts/kotlin-tools.sh"
kotlin_tools build-fleet-kotlin.sh

# The generated Kotlin comes from the debug library (generate.sh); the interface, and so
# the generated code, is the same for the release library.
gen="$root/target/tern-bindings/gen"
"$root/bindings/scripts/generate.sh" "$gen" >/dev/null
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if [ "$profile" = release ]; then
  cargo build --quiet --locked --release -p tern-bindings --lib
fi
lib="$target_dir/$profile/libtern_bindings.so"
[ -f "$lib" ] || die "$lib was not built"

out="$target_dir/$profile/tern-fleet-kotlin"
work="$target_dir/tern-bindings/fleet-kotlin-$profile"
rm -rf "$work" && mkdir -p "$work/classes"
echo "compiling the Kotlin layer and the fleet pod ..." >&2
set +e
"$kotlinc" -nowarn -jvm-target 17 -cp "$jna_jar:$coroutines" -d "$work/classes" \
  "$gen/kotlin" "$root/bindings/kotlin/src/main/kotlin" "$root/bindings/kotlin/src/fleet/kotlin" >"$work/kotlinc.log" 2>&1
status=$?
set -e
if [ "$status" -ne 0 ]; then
  cat "$work/kotlinc.log" >&2
  die "kotlinc failed"
fi
for c in dev/tern/fleet/PodKt dev/tern/Tern; do
  [ -f "$work/classes/$c.class" ] || die "kotlinc did not produce $c.class"
done
(cd "$work/classes" && jar --create --file "$work/tern-fleet-kotlin.jar" --main-class dev.tern.fleet.PodKt .) \
  || die "jar failed"

rm -rf "$out" && mkdir -p "$out/lib" "$out/native"
cp "$work/tern-fleet-kotlin.jar" "$out/"
cp -L "$jna_jar" "$out/lib/jna.jar"
cp -L "$kotlin_stdlib" "$out/lib/kotlin-stdlib.jar"
cp -L "$coroutines" "$out/lib/kotlinx-coroutines-core-jvm.jar"
cp -L "$lib" "$out/native/"
echo "$out"
