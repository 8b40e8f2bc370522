#!/usr/bin/env bash
# Measures the shipping mobile library per ABI: the tern-bindings cdylib built with the
# shipping flags, stripped, next to an empty Rust cdylib built the same way in the same
# run (bindings/scripts/size-reference: std, allocator, panic and unwinding machinery,
# no Tern code), against the 3 MiB budget (issues #6, #14). Reports only: it never
# fails on size.
#
#   bindings/scripts/size.sh                        the shipping flags
#   TERN_BUILD_STD=0 bindings/scripts/size.sh       with the prebuilt std (comparison)
#   TERN_SIZE_TARGETS=aarch64-unknown-linux-gnu bindings/scripts/size.sh   one ABI
#
# ABIs: no NDK or Apple SDK here, so the library is built for the nearest targets that
# link here, with the devices' ISAs: aarch64-unknown-linux-gnu (arm64-v8a, and the
# iPhone's ISA), thumbv7neon-unknown-linux-gnueabihf (armeabi-v7a: Android compiles
# armv7 as Thumb-2 with NEON) and x86_64-unknown-linux-gnu (Android x86_64), with
# Debian's cross compilers for the C code, all linked by lld (the NDK's linker) with
# relative relocations packed (`--pack-dyn-relocs=relr`, what the NDK does for
# minSdk >= 28). Needs `apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf
# lld` and `rustup target add aarch64-unknown-linux-gnu
# thumbv7neon-unknown-linux-gnueabihf`; without them an ABI's row says what is missing.
#
# Flags (the same as build-android.sh / build-ios.sh): the workspace `mobile` profile
# (opt-level "z", fat LTO, codegen-units 1, panic = "unwind", strip), std rebuilt for
# size (mobile-env.sh), SQLite's compile options from `.cargo/config.toml`, and the
# relocation packing above on the final link only.
# Slow (std and the whole stack with fat LTO, per ABI): not part of scripts/test.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
budget=3145728
tdir=${CARGO_TARGET_DIR:-$root/target}
# shellcheck source=bindings/scripts/mobile-env.sh
. "$root/bindings/scripts/mobile-env.sh"
ref="$root/bindings/scripts/size-reference"
profile() { sed -n '/^\[profile.mobile\]/,/^$/p' "$1" | grep -v '^#'; }
[ "$(profile Cargo.toml)" = "$(profile "$ref/Cargo.toml")" ] \
  || { echo "size.sh: [profile.mobile] of $ref/Cargo.toml differs from the workspace's" >&2; exit 1; }

read -r -a targets <<<"${TERN_SIZE_TARGETS:-aarch64-unknown-linux-gnu thumbv7neon-unknown-linux-gnueabihf x86_64-unknown-linux-gnu}"
declare -A cc=([aarch64-unknown-linux-gnu]=aarch64-linux-gnu-gcc [thumbv7neon-unknown-linux-gnueabihf]=arm-linux-gnueabihf-gcc [x86_64-unknown-linux-gnu]=gcc)
declare -A abi=([aarch64-unknown-linux-gnu]=arm64-v8a [thumbv7neon-unknown-linux-gnueabihf]=armeabi-v7a [x86_64-unknown-linux-gnu]=x86_64)
declare -A missing=()
lldbin=$(mktemp -d)
trap 'rm -rf "$lldbin"' EXIT
for t in "${targets[@]}"; do
  c=${cc[$t]}
  if ! command -v "$c" >/dev/null || ! command -v ld.lld >/dev/null; then
    missing[$t]="needs $c and ld.lld (apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf lld)"
    continue
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    missing[$t]="needs rustup target add $t"
    continue
  fi
  # gcc 12 has no --ld-path: a directory with `ld` -> ld.lld, passed with -B.
  ln -sf "$(command -v ld.lld)" "$lldbin/ld"
  tu=$(echo "$t" | tr 'a-z-' 'A-Z_')
  tl=$(echo "$t" | tr '-' '_')
  link=(-C "link-arg=-B$lldbin" -C link-arg=-Wl,--pack-dyn-relocs=relr)
  toolchain=("CARGO_TARGET_${tu}_LINKER=$c" "CC_${tl}=$c" "AR_${tl}=${c%gcc}ar")
  env "${toolchain[@]}" cargo rustc --locked --profile mobile -p tern-bindings --lib --target "$t" -- "${link[@]}"
  (cd "$ref" && env "${toolchain[@]}" cargo rustc --locked --profile mobile --lib --target "$t" \
    --target-dir "$tdir/size-reference" -- "${link[@]}")
done

section() { # section <file> <name>: size in bytes of a section (0 if absent)
  local hex
  hex=$(readelf -SW "$1" | sed 's/^ *\[ *[0-9]*\] *//' | awk -v s="$2" '$1 == s { print $5; exit }')
  printf '%d' "0x${hex:-0}"
}
unwind() { # unwind <file>: bytes of unwind tables (DWARF, or ARM EHABI on armv7)
  echo $(( $(section "$1" .eh_frame) + $(section "$1" .eh_frame_hdr) + $(section "$1" .gcc_except_table) \
    + $(section "$1" .ARM.extab) + $(section "$1" .ARM.exidx) ))
}
mib() { printf '%.2f' "$(echo "$1 / 1048576" | bc -l)"; }
echo
echo "profile mobile ($(profile Cargo.toml | grep -E '^(opt-level|lto|codegen-units|panic)' | tr '\n' ' ')), $tern_std, lld, --pack-dyn-relocs=relr"
echo
echo '| ABI (built for) | library bytes | MiB | empty cdylib | library − empty | `.text` | unwind tables | `.rodata` | `.data.rel.ro` | vs 3 MiB |'
echo '|---|---:|---:|---:|---:|---:|---:|---:|---:|---|'
for t in "${targets[@]}"; do
  if [ -n "${missing[$t]:-}" ]; then
    echo "| ${abi[$t]} ($t) | not built: ${missing[$t]} | | | | | | | | |"
    continue
  fi
  lib="$tdir/$t/mobile/libtern_bindings.so"
  empty="$tdir/size-reference/$t/mobile/libtern_size_reference.so"
  b=$(stat -c %s "$lib"); e=$(stat -c %s "$empty")
  if [ "$b" -le "$budget" ]; then v="within, $(( budget - b )) to spare"; else v="OVER by $(( b - budget ))"; fi
  printf '| %s (%s) | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${abi[$t]}" "$t" "$b" "$(mib "$b")" "$e" \
    "$(( b - e ))" "$(section "$lib" .text)" "$(unwind "$lib")" "$(section "$lib" .rodata)" \
    "$(section "$lib" .data.rel.ro)" "$v"
done
