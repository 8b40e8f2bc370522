#!/usr/bin/env bash
# Builds the Android artifacts of Tern: libtern_bindings.so per ABI (arm64-v8a,
# armeabi-v7a, x86_64) with cargo-ndk and the size-tuned `mobile` profile, the generated
# Kotlin — the native inputs of the Gradle library module bindings/android — and then
# the AAR of that module (dev.tern layer + generated bindings + the Android glue +
# jni/<abi>/*.so) with Gradle.
#
#   bindings/scripts/build-android.sh [out-dir]     (default: target/android)
#   ANDROID_MIN_SDK=28 bindings/scripts/build-android.sh   (the app's minSdk; default 24)
#
# Output: <out-dir>/jni/<abi>/libtern_bindings.so, <out-dir>/gen/kotlin, and
# <out-dir>/tern-android-release.aar. The Gradle module reads the first two from
# target/android (or -Ptern.nativeDir=<out-dir>); to run the instrumented tests
# afterwards: gradle -p bindings/android -Ptern.nativeDir=<out-dir> connectedAndroidTest
#
# Prerequisites (checked; the script fails with a clear message when one is missing):
#   ANDROID_NDK_HOME (or ANDROID_NDK_ROOT) pointing at an NDK r26+; cargo-ndk
#   (`cargo install cargo-ndk`); the rustup targets aarch64-linux-android,
#   armv7-linux-androideabi, x86_64-linux-android; ANDROID_HOME (or ANDROID_SDK_ROOT)
#   pointing at an Android SDK with platform 34; Gradle 8.7+ on PATH (`gradle`) and a JDK 17.
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
sdk=${ANDROID_HOME:-${ANDROID_SDK_ROOT:-}}
[ -n "$sdk" ] && [ -d "$sdk" ] || die "the Android SDK is not installed: set ANDROID_HOME (platform 34 needed by bindings/android)"
command -v gradle >/dev/null || die "gradle not found: install Gradle 8.7+ (the module bindings/android has no wrapper checked in)"

# Shipping flags (BENCHMARKS.md, "Bindings library size"): the workspace `mobile` profile
# (opt-level "z", fat LTO, codegen-units 1, panic = "unwind", stripped), std rebuilt for
# size with the library (mobile-env.sh: -Zbuild-std on the stable toolchain through
# RUSTC_BOOTSTRAP=1, needs the rust-src component; TERN_BUILD_STD=0 to use the prebuilt
# std), SQLite's compile options from .cargo/config.toml, and packed relative
# relocations on the final link (lld): Android's own packing (API 23+), plus RELR with
# the Android tags from API 28. Only the last crate gets the link arguments (`cargo
# rustc`), so dependencies and the host build scripts are untouched.
# shellcheck source=bindings/scripts/mobile-env.sh
. "$root/bindings/scripts/mobile-env.sh"
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
# The Gradle module compiles the generated Kotlin, the dev.tern layer and the glue, and
# packages the .so files of $out/jni.
gradle -p "$root/bindings/android" -Ptern.nativeDir="$out" --no-daemon assembleRelease
cp "$root/bindings/android/build/outputs/aar/tern-android-release.aar" "$out/tern-android-release.aar"
echo "built $out/tern-android-release.aar (module bindings/android; depends on net.java.dev.jna:jna:5.13.0@aar,"
echo "kotlinx-coroutines-android, androidx.lifecycle:lifecycle-process, androidx.work:work-runtime-ktx)"
