#!/usr/bin/env bash
# Builds the host cdylib of tern-bindings and the in-repo uniffi-bindgen (same uniffi
# version), then generates the Kotlin and Swift bindings from the library.
#
#   bindings/scripts/generate.sh [out-dir]     (default: target/tern-bindings/gen)
#
# Prints the path of the built library on its last line.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
out=${1:-$root/target/tern-bindings/gen}

cargo build --quiet --locked -p tern-bindings --features cli --lib --bin uniffi-bindgen >&2
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
lib="$target_dir/debug/libtern_bindings.so"
[ -f "$lib" ] || { echo "generate.sh: $lib was not built" >&2; exit 1; }
bindgen="$target_dir/debug/uniffi-bindgen"

rm -rf "$out/kotlin" "$out/swift"
mkdir -p "$out/kotlin" "$out/swift"
"$bindgen" generate "$lib" --library --language kotlin --no-format --out-dir "$out/kotlin" >&2
"$bindgen" generate "$lib" --library --language swift --no-format --out-dir "$out/swift" >&2
echo "$lib"
