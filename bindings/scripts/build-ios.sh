#!/usr/bin/env bash
# Builds the iOS artifacts of Tern: the static library for the device
# (aarch64-apple-ios) and the simulator (aarch64-apple-ios-sim, x86_64-apple-ios, merged
# with lipo), the generated Swift + FFI header/modulemap, the XCFramework
# `bindings/swift/TernFFIFFI.xcframework`, and a zip of it with its SwiftPM checksum.
#
#   bindings/scripts/build-ios.sh [out-dir]     (default: target/ios)
#
# Prerequisites (checked; fails with a clear message when one is missing): macOS with
# Xcode (xcodebuild, lipo, swift), the rustup targets aarch64-apple-ios,
# aarch64-apple-ios-sim, x86_64-apple-ios.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${1:-$root/target/ios}
die() { echo "build-ios.sh: $*" >&2; exit 1; }

[ "$(uname -s)" = Darwin ] || die "iOS builds need macOS with Xcode (this is $(uname -s)); on Linux only 'cargo check' runs (check-mobile.sh)"
command -v xcodebuild >/dev/null || die "xcodebuild not found: install Xcode and run xcode-select"
command -v lipo >/dev/null || die "lipo not found: install the Xcode command line tools"
command -v swift >/dev/null || die "swift not found: install Xcode"
installed=$(rustup target list --installed)
for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  grep -qx "$t" <<<"$installed" || die "rustup target $t missing: rustup target add $t"
done

# Shipping flags (BENCHMARKS.md, "Bindings library size"): the workspace `mobile` profile
# (opt-level "z", fat LTO, codegen-units 1, panic = "unwind", stripped), std rebuilt for
# size with the library (mobile-env.sh: -Zbuild-std on the stable toolchain through
# RUSTC_BOOTSTRAP=1, needs the rust-src component; TERN_BUILD_STD=0 to use the prebuilt
# std) and SQLite's compile options from .cargo/config.toml. No link flags: a static
# library is linked by the app, whose linker (ld64) already writes compact fixups
# (chained fixups from iOS 13.4).
# shellcheck source=bindings/scripts/mobile-env.sh
. "$root/bindings/scripts/mobile-env.sh"
for t in aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios; do
  cargo build --locked --profile mobile -p tern-bindings --lib --target "$t"
done
tdir="$root/target"
mkdir -p "$out/sim"
lipo -create "$tdir/aarch64-apple-ios-sim/mobile/libtern_bindings.a" "$tdir/x86_64-apple-ios/mobile/libtern_bindings.a" \
  -output "$out/sim/libtern_bindings.a"

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
  -library "$tdir/aarch64-apple-ios/mobile/libtern_bindings.a" -headers "$headers" \
  -library "$out/sim/libtern_bindings.a" -headers "$headers" \
  -output "$xcf"
(cd "$(dirname "$xcf")" && zip -qr "$out/TernFFIFFI.xcframework.zip" "$(basename "$xcf")")
checksum=$(cd "$root/bindings/swift" && swift package compute-checksum "$out/TernFFIFFI.xcframework.zip")
echo "built $xcf"
echo "zip: $out/TernFFIFFI.xcframework.zip  checksum: $checksum"
