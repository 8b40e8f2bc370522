#!/usr/bin/env bash
# Builds the Apple artifacts of Tern: the static library for every platform the Swift
# package declares (bindings/swift/Package.swift), the generated Swift + FFI
# header/modulemap, the XCFramework `bindings/swift/TernFFIFFI.xcframework`, and a zip of
# it with its SwiftPM checksum.
#
#   bindings/scripts/build-ios.sh [out-dir]     (default: target/ios)
#
# Slices (one library per platform; architectures of a platform merged with lipo):
#   ios-arm64                         aarch64-apple-ios
#   ios-arm64_x86_64-simulator        aarch64-apple-ios-sim + x86_64-apple-ios
#   macos-arm64_x86_64                aarch64-apple-darwin + x86_64-apple-darwin
#   ios-arm64_x86_64-maccatalyst      aarch64-apple-ios-macabi + x86_64-apple-ios-macabi
# tvOS, watchOS and visionOS are not built (and not declared by the package).
#
# Prerequisites (checked; fails with a clear message when one is missing): macOS with
# Xcode (xcodebuild, lipo, swift) and the rustup targets above.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${1:-$root/target/ios}
die() { echo "build-ios.sh: $*" >&2; exit 1; }

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios
         aarch64-apple-darwin x86_64-apple-darwin
         aarch64-apple-ios-macabi x86_64-apple-ios-macabi)

[ "$(uname -s)" = Darwin ] || die "Apple builds need macOS with Xcode (this is $(uname -s)); on Linux only 'cargo check' runs (check-mobile.sh)"
command -v xcodebuild >/dev/null || die "xcodebuild not found: install Xcode and run xcode-select"
command -v lipo >/dev/null || die "lipo not found: install the Xcode command line tools"
command -v swift >/dev/null || die "swift not found: install Xcode"
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || die "rustup target $t missing: rustup target add $t"
done

mkdir -p "$out" && out=$(cd "$out" && pwd)

# The minimum OS versions of Package.swift (iOS 15, macOS 12, Mac Catalyst 15 — which
# rustc reads from IPHONEOS_DEPLOYMENT_TARGET), so the objects do not claim a newer OS
# than the package and the app's linker does not warn.
export IPHONEOS_DEPLOYMENT_TARGET=15.0
export MACOSX_DEPLOYMENT_TARGET=12.0

# Shipping flags (BENCHMARKS.md, "Bindings library size"): the workspace `mobile` profile
# (opt-level "z", fat LTO, codegen-units 1, panic = "unwind", stripped), std rebuilt for
# size with the library (mobile-env.sh: -Zbuild-std on the stable toolchain through
# RUSTC_BOOTSTRAP=1, needs the rust-src component; TERN_BUILD_STD=0 to use the prebuilt
# std) and SQLite's compile options from .cargo/config.toml. No link flags: a static
# library is linked by the app, whose linker (ld64) already writes compact fixups
# (chained fixups from iOS 13.4).
# shellcheck source=bindings/scripts/mobile-env.sh
. "$root/bindings/scripts/mobile-env.sh"
for t in "${targets[@]}"; do
  cargo build --locked --profile mobile -p tern-bindings --lib --target "$t"
done
tdir="$root/target"
lib() { echo "$tdir/$1/mobile/libtern_bindings.a"; }
merge() { # merge OUT TARGET...: one fat library of several architectures
  local dest="$out/$1"; shift
  mkdir -p "$dest"
  local inputs=()
  for t in "$@"; do inputs+=("$(lib "$t")"); done
  lipo -create "${inputs[@]}" -output "$dest/libtern_bindings.a"
}
merge sim aarch64-apple-ios-sim x86_64-apple-ios
merge macos aarch64-apple-darwin x86_64-apple-darwin
merge catalyst aarch64-apple-ios-macabi x86_64-apple-ios-macabi

# Generate from a host build of the library (same metadata on every target).
gen="$out/gen"
"$root/bindings/scripts/generate.sh" "$gen" >/dev/null
headers="$out/headers"
rm -rf "$headers" && mkdir -p "$headers"
cp "$gen/swift/TernFFIFFI.h" "$headers/"
cp "$gen/swift/TernFFIFFI.modulemap" "$headers/module.modulemap"
cp "$gen/swift/TernFFI.swift" "$root/bindings/swift/Sources/TernFFI/TernFFI.swift"

xcf="$root/bindings/swift/TernFFIFFI.xcframework"
rm -rf "$xcf"
xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers "$headers" \
  -library "$out/sim/libtern_bindings.a" -headers "$headers" \
  -library "$out/macos/libtern_bindings.a" -headers "$headers" \
  -library "$out/catalyst/libtern_bindings.a" -headers "$headers" \
  -output "$xcf"
rm -f "$out/TernFFIFFI.xcframework.zip"
(cd "$(dirname "$xcf")" && zip -qr "$out/TernFFIFFI.xcframework.zip" "$(basename "$xcf")")
checksum=$(cd "$root/bindings/swift" && swift package compute-checksum "$out/TernFFIFFI.xcframework.zip")
echo "built $xcf (ios, ios-simulator, macos, maccatalyst)"
echo "zip: $out/TernFFIFFI.xcframework.zip  checksum: $checksum"
