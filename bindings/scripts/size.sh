#!/usr/bin/env bash
# Measures the size of the shipping mobile library: the tern-bindings cdylib built with
# the `mobile` profile and the shipping link flags, stripped, next to two references
# built in the same run (an empty Rust cdylib and the SDK core alone), against the
# 3 MiB budget of issue #6. Reports only: it never fails on size.
#
#   bindings/scripts/size.sh            (host target, plus the ARM proxies below)
#
# ARM: no NDK here, so the same library is also built for aarch64-unknown-linux-gnu
# (arm64-v8a's ISA) and thumbv7neon-unknown-linux-gnueabihf (armeabi-v7a's: Android
# compiles armv7 as Thumb-2 with NEON) with Debian's cross compilers, linked by lld
# (the NDK's linker) with relative relocations packed (`--pack-dyn-relocs=relr`, what
# the NDK does for minSdk >= 28). Needs `apt-get install gcc-aarch64-linux-gnu
# gcc-arm-linux-gnueabihf lld` and `rustup target add aarch64-unknown-linux-gnu
# thumbv7neon-unknown-linux-gnueabihf`; without them those rows say why they are
# missing (this script reports, it is not a test).
#
# Flags (the same as build-android.sh): the workspace `mobile` profile (opt-level "z",
# fat LTO, codegen-units 1, panic = "unwind", strip) and packed relative relocations
# (`-z pack-relative-relocs`, DT_RELR) on the final link only. SQLite's compile options
# come from `.cargo/config.toml` ([env] LIBSQLITE3_FLAGS) like in every build.
# Slow (fat LTO of the whole stack, a few minutes on 2 cores): not part of scripts/test.sh.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
budget=3145728
relr=${TERN_SIZE_LINK_ARGS:--C link-arg=-Wl,-z,pack-relative-relocs}

# shellcheck disable=SC2086 # the link arguments are words
cargo rustc --locked --profile mobile -p tern-bindings --lib -- $relr
# shellcheck disable=SC2086
cargo rustc --locked --profile mobile -p tern-sdk --example footprint_lib -- $relr
# shellcheck disable=SC2086
cargo rustc --locked --profile mobile -p tern-sdk --example footprint_empty -- $relr

# ARM proxies (see the header).
arm_targets=(aarch64-unknown-linux-gnu thumbv7neon-unknown-linux-gnueabihf)
declare -A arm_cc=([aarch64-unknown-linux-gnu]=aarch64-linux-gnu-gcc [thumbv7neon-unknown-linux-gnueabihf]=arm-linux-gnueabihf-gcc)
declare -A arm_missing=()
lldbin=$(mktemp -d)
trap 'rm -rf "$lldbin"' EXIT
for t in "${arm_targets[@]}"; do
  cc=${arm_cc[$t]}
  if ! command -v "$cc" >/dev/null || ! command -v ld.lld >/dev/null; then
    arm_missing[$t]="needs $cc and ld.lld (apt-get install gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf lld)"
    continue
  fi
  if ! rustup target list --installed 2>/dev/null | grep -qx "$t"; then
    arm_missing[$t]="needs rustup target add $t"
    continue
  fi
  # gcc 12 has no --ld-path: a directory with `ld` -> ld.lld, passed with -B.
  ln -sf "$(command -v ld.lld)" "$lldbin/ld"
  tu=$(echo "$t" | tr 'a-z-' 'A-Z_')
  tl=$(echo "$t" | tr '-' '_')
  env "CARGO_TARGET_${tu}_LINKER=$cc" "CC_${tl}=$cc" "AR_${tl}=${cc%-gcc}-ar" \
    cargo rustc --locked --profile mobile -p tern-bindings --lib --target "$t" -- \
    -C "link-arg=-B$lldbin" -C link-arg=-Wl,--pack-dyn-relocs=relr
done

dir="$root/target/mobile"
section() { # section <file> <name>: size in bytes of a section (0 if absent)
  local hex
  hex=$(readelf -SW "$1" | sed 's/^ *\[ *[0-9]*\] *//' | awk -v s="$2" '$1 == s { print $5; exit }')
  printf '%d' "0x${hex:-0}"
}
unwind() { # unwind <file>: bytes of unwind tables (DWARF, or ARM EHABI on armv7)
  echo $(( $(section "$1" .eh_frame) + $(section "$1" .eh_frame_hdr) + $(section "$1" .gcc_except_table) \
    + $(section "$1" .ARM.extab) + $(section "$1" .ARM.exidx) ))
}
row() { # row <label> <file>
  local bytes
  bytes=$(stat -c %s "$2")
  printf '| %s | %s | %.2f | %s | %s | %s | %s | %s |\n' "$1" "$bytes" "$(echo "$bytes / 1048576" | bc -l)" \
    "$(section "$2" .text)" "$(unwind "$2")" "$(section "$2" .rodata)" \
    "$(section "$2" .data.rel.ro)" "$(( $(section "$2" .rela.dyn) + $(section "$2" .rel.dyn) ))+$(section "$2" .relr.dyn)"
}
echo
echo "target: $(rustc -vV | sed -n 's/^host: //p'), profile mobile ($(grep -A8 '^\[profile.mobile\]' Cargo.toml | grep -E '^(opt-level|lto|codegen-units|panic)' | tr '\n' ' ')), link: $relr"
echo
echo '| library | bytes | MiB | .text | unwind tables | .rodata | .data.rel.ro | .rel(a).dyn+.relr.dyn |'
echo '|---|---:|---:|---:|---:|---:|---:|---:|'
row "empty Rust cdylib (reference)" "$dir/examples/libfootprint_empty.so"
row "tern-sdk core (footprint_lib)" "$dir/examples/libfootprint_lib.so"
row "tern-bindings cdylib" "$dir/libtern_bindings.so"
for t in "${arm_targets[@]}"; do
  if [ -n "${arm_missing[$t]:-}" ]; then
    echo "| tern-bindings cdylib, $t | not built: ${arm_missing[$t]} | | | | | | |"
  else
    row "tern-bindings cdylib, $t" "$root/target/$t/mobile/libtern_bindings.so"
  fi
done
printf '| budget (issue #6) | %s | 3.00 | | | | | |\n' "$budget"
verdict() { # verdict <label> <file>
  local size
  size=$(stat -c %s "$2")
  if [ "$size" -le "$budget" ]; then
    echo "$1: $size bytes, $(( budget - size )) under the budget"
  else
    echo "$1: $size bytes, $(( size - budget )) OVER the budget"
  fi
}
verdict "tern-bindings ($(rustc -vV | sed -n 's/^host: //p'))" "$dir/libtern_bindings.so"
for t in "${arm_targets[@]}"; do
  [ -z "${arm_missing[$t]:-}" ] && verdict "tern-bindings ($t)" "$root/target/$t/mobile/libtern_bindings.so"
done
true
