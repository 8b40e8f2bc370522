#!/usr/bin/env bash
# `cargo check -p tern-bindings` for aarch64-linux-android and aarch64-apple-ios, so
# platform-specific code cannot rot on a machine without the NDK or Xcode.
#
# Check-only recipe (TOOLCHAIN.md): Debian clang + llvm-ar + the arm64 glibc headers
# stand in for the NDK/Apple SDK so C build scripts (bundled SQLite, ring) compile. The
# objects are wrong for the platform — fine for type-checking, never for shipping
# (that is build-android.sh / build-ios.sh). Installs the rustup targets and the apt
# packages when missing; fails loudly if it cannot.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "check-mobile.sh: $*" >&2; exit 1; }

installed=$(rustup target list --installed)
for t in aarch64-linux-android aarch64-apple-ios; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t" || die "could not add rustup target $t"
done
if ! command -v clang >/dev/null || ! command -v llvm-ar >/dev/null || [ ! -d /usr/aarch64-linux-gnu/include ]; then
  if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
  $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends clang llvm libc6-dev-arm64-cross \
    || die "could not install clang llvm libc6-dev-arm64-cross"
fi
inc="-nostdlibinc -isystem /usr/aarch64-linux-gnu/include -DRING_CORE_NOSTDLIBINC=1"

echo "cargo check -p tern-bindings --target aarch64-linux-android"
CC_aarch64_linux_android=clang AR_aarch64_linux_android=llvm-ar \
CFLAGS_aarch64_linux_android="--target=aarch64-linux-android24 $inc" \
  cargo check --quiet --locked -p tern-bindings --lib --target aarch64-linux-android

echo "cargo check -p tern-bindings --target aarch64-apple-ios"
sdkroot=$(mktemp -d)
trap 'rm -rf "$sdkroot"' EXIT
SDKROOT="$sdkroot" CC_aarch64_apple_ios=clang AR_aarch64_apple_ios=llvm-ar \
CFLAGS_aarch64_apple_ios="--target=aarch64-linux-gnu $inc" \
  cargo check --quiet --locked -p tern-bindings --lib --target aarch64-apple-ios
echo "mobile checks passed"
