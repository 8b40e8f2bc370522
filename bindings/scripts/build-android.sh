#!/usr/bin/env bash
# Builds the Android artifacts of Tern: libtern_bindings.so per ABI (arm64-v8a,
# armeabi-v7a, x86_64) with cargo-ndk and the size-tuned `mobile` profile, the generated
# Kotlin, and an AAR (classes.jar of the Kotlin layer + jni/<abi>/*.so).
#
#   bindings/scripts/build-android.sh [out-dir]     (default: target/android)
#   ANDROID_MIN_SDK=28 bindings/scripts/build-android.sh   (the app's minSdk; default 24)
#
# Prerequisites (checked; the script fails with a clear message when one is missing):
#   ANDROID_NDK_HOME (or ANDROID_NDK_ROOT) pointing at an NDK r26+; cargo-ndk
#   (`cargo install cargo-ndk`); the rustup targets aarch64-linux-android,
#   armv7-linux-androideabi, x86_64-linux-android; kotlinc (.tools/kotlin, see
#   test-kotlin.sh) and jar/zip for the AAR.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${1:-$root/target/android}
die() { echo "build-android.sh: $*" >&2; exit 1; }

ndk=${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-}}
[ -n "$ndk" ] && [ -d "$ndk" ] || die "the Android NDK is not installed: set ANDROID_NDK_HOME to an NDK (r26 or newer)"
command -v cargo-ndk >/dev/null || die "cargo-ndk not found: cargo install cargo-ndk"
installed=$(rustup target list --installed)
for t in aarch64-linux-android armv7-linux-androideabi x86_64-linux-android; do
  grep -qx "$t" <<<"$installed" || die "rustup target $t missing: rustup target add $t"
done
kotlinc="$root/.tools/kotlin/package/bin/kotlinc"
[ -x "$kotlinc" ] || die "kotlinc missing: run bindings/scripts/test-kotlin.sh once (installs it into .tools/)"
command -v jar >/dev/null || die "jar not found: install a JDK"
command -v zip >/dev/null || die "zip not found"
[ -f /usr/share/java/jna.jar ] || die "JNA missing: apt-get install libjna-java"

# Shipping flags (BENCHMARKS.md, "Bindings library size"): the workspace `mobile` profile
# (opt-level "z", fat LTO, codegen-units 1, panic = "unwind", stripped), SQLite's compile
# options from .cargo/config.toml, and packed relative relocations on the final link
# (lld): Android's own packing (API 23+), plus RELR with the Android tags from API 28.
# Only the last crate gets the link arguments (`cargo rustc`), so dependencies and the
# host build scripts are untouched.
min_sdk=${ANDROID_MIN_SDK:-24}
if [ "$min_sdk" -ge 28 ]; then
  relocs=(-C link-arg=-Wl,--pack-dyn-relocs=android+relr -C link-arg=-Wl,--use-android-relr-tags)
else
  relocs=(-C link-arg=-Wl,--pack-dyn-relocs=android)
fi
mkdir -p "$out/jni"
for abi in arm64-v8a:aarch64-linux-android armeabi-v7a:armv7-linux-androideabi x86_64:x86_64-linux-android; do
  cargo ndk -t "${abi%%:*}" --platform "$min_sdk" \
    rustc --locked --profile mobile -p tern-bindings --lib -- "${relocs[@]}"
  mkdir -p "$out/jni/${abi%%:*}"
  cp "$root/target/${abi#*:}/mobile/libtern_bindings.so" "$out/jni/${abi%%:*}/"
done
gen="$out/gen"
"$root/bindings/scripts/generate.sh" "$gen" >/dev/null
"$kotlinc" -nowarn -jvm-target 17 -cp "/usr/share/java/jna.jar:$root/.tools/kotlin/package/lib/kotlinx-coroutines-core-jvm.jar" \
  -d "$out/classes" "$gen/kotlin" "$root/bindings/kotlin/src/main/kotlin"
aar="$out/aar"
rm -rf "$aar" && mkdir -p "$aar"
(cd "$out/classes" && jar cf "$aar/classes.jar" .)
cp -r "$out/jni" "$aar/jni"
cat >"$aar/AndroidManifest.xml" <<'XML'
<manifest xmlns:android="http://schemas.android.com/apk/res/android" package="dev.tern">
  <uses-permission android:name="android.permission.INTERNET" />
  <uses-permission android:name="android.permission.ACCESS_NETWORK_STATE" />
</manifest>
XML
(cd "$aar" && zip -qr "$out/tern.aar" .)
echo "built $out/tern.aar (depends on net.java.dev.jna:jna:5.13.0@aar and kotlinx-coroutines-core)"
