#!/usr/bin/env bash
# Measures the size of the shipping mobile library: the tern-bindings cdylib built with
# the `mobile` profile and the shipping link flags, stripped, next to two references
# built in the same run (an empty Rust cdylib and the SDK core alone), against the
# 3 MiB budget of issue #6. Reports only: it never fails on size.
#
#   bindings/scripts/size.sh            (host target, the proxy for arm64 here)
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

dir="$root/target/mobile"
section() { # section <file> <name>: size in bytes of a section (0 if absent)
  local hex
  hex=$(readelf -SW "$1" | sed 's/^ *\[ *[0-9]*\] *//' | awk -v s="$2" '$1 == s { print $5; exit }')
  printf '%d' "0x${hex:-0}"
}
row() { # row <label> <file>
  local bytes
  bytes=$(stat -c %s "$2")
  printf '| %s | %s | %.2f | %s | %s | %s | %s | %s |\n' "$1" "$bytes" "$(echo "$bytes / 1048576" | bc -l)" \
    "$(section "$2" .text)" "$(section "$2" .eh_frame)" "$(section "$2" .rodata)" \
    "$(section "$2" .data.rel.ro)" "$(section "$2" .rela.dyn)+$(section "$2" .relr.dyn)"
}
echo
echo "target: $(rustc -vV | sed -n 's/^host: //p'), profile mobile ($(grep -A8 '^\[profile.mobile\]' Cargo.toml | grep -E '^(opt-level|lto|codegen-units|panic)' | tr '\n' ' ')), link: $relr"
echo
echo '| library | bytes | MiB | .text | .eh_frame | .rodata | .data.rel.ro | .rela.dyn+.relr.dyn |'
echo '|---|---:|---:|---:|---:|---:|---:|---:|'
row "empty Rust cdylib (reference)" "$dir/examples/libfootprint_empty.so"
row "tern-sdk core (footprint_lib)" "$dir/examples/libfootprint_lib.so"
row "tern-bindings cdylib" "$dir/libtern_bindings.so"
printf '| budget (issue #6) | %s | 3.00 | | | | | |\n' "$budget"
size=$(stat -c %s "$dir/libtern_bindings.so")
if [ "$size" -le "$budget" ]; then
  echo "tern-bindings: $size bytes, $(( budget - size )) under the budget"
else
  echo "tern-bindings: $size bytes, $(( size - budget )) OVER the budget"
fi
