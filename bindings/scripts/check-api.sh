#!/usr/bin/env bash
# Compares the public API surface of the Kotlin (generated + dev.tern layer + the
# dev.tern.android glue) and Swift (generated + Tern layer incl. its glue) bindings with
# the snapshots in bindings/api/. An unintended
# API change fails; an intended one is a visible diff:
#
#   UPDATE_API_SNAPSHOT=1 bindings/scripts/check-api.sh     rewrites the snapshots
#
# Also checks that every TernFFI symbol the Swift layer uses exists in the generated
# Swift module, and every layer symbol the glue and the XCTest suite use exists in the
# layer, and parses the Swift sources for syntax errors (Swift cannot be compiled on
# this machine).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
gen="$root/target/tern-bindings/gen"
"$root/bindings/scripts/generate.sh" "$gen" >/dev/null
surface="python3 $root/bindings/scripts/api_surface.py"
api="$root/bindings/api"
mkdir -p "$api"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

$surface kotlin "$gen/kotlin/dev/tern/ffi/tern_bindings.kt" >"$tmp/kotlin-generated.api"
$surface kotlin $(find "$root/bindings/kotlin/src/main" -name '*.kt' | sort) >"$tmp/kotlin-wrapper.api"
$surface swift "$gen/swift/TernFFI.swift" >"$tmp/swift-generated.api"
$surface swift $(find "$root/bindings/swift/Sources/Tern" -name '*.swift' | sort) >"$tmp/swift-wrapper.api"
$surface kotlin $(find "$root/bindings/android/src/main/kotlin" -name '*.kt' | sort) >"$tmp/android-glue.api"

status=0
for f in kotlin-generated kotlin-wrapper android-glue swift-generated swift-wrapper; do
  if [ "${UPDATE_API_SNAPSHOT:-0}" = 1 ]; then
    cp "$tmp/$f.api" "$api/$f.api"
    echo "updated bindings/api/$f.api"
  elif ! diff -u "$api/$f.api" "$tmp/$f.api"; then
    echo "API CHANGED: bindings/api/$f.api differs (run with UPDATE_API_SNAPSHOT=1 if intended)" >&2
    status=1
  else
    echo "ok bindings/api/$f.api"
  fi
done

# Every generated symbol the Swift layer references must exist in the generated module,
# and every layer symbol the glue and the XCTest suite use must exist in the layer.
python3 "$root/bindings/scripts/swift_symbols.py" "$gen/swift/TernFFI.swift" \
  $(find "$root/bindings/swift/Sources/Tern" -name '*.swift' | sort) \
  --uses $(find "$root/bindings/swift/Sources/Tern" "$root/bindings/swift/Tests" -name '*.swift' ! -name Tern.swift | sort) \
  || status=1

# Swift syntax (no compiler here): tree-sitter-swift parses the layer, the glue, the
# XCTest suite and Package.swift. Installed from npm into target/ when missing (the
# packages ship prebuilt parsers; --ignore-scripts: nothing is downloaded at install).
ts="$root/target/tern-bindings/swift-syntax"
if [ ! -d "$ts/node_modules/tree-sitter-swift" ]; then
  mkdir -p "$ts"
  (cd "$ts" && npm install --silent --no-save --ignore-scripts --no-audit --no-fund \
      tree-sitter@0.22.4 tree-sitter-swift@0.7.1 >/dev/null) \
    || { echo "check-api.sh: could not install tree-sitter-swift from npm" >&2; exit 1; }
fi
NODE_PATH="$ts/node_modules" node "$root/bindings/scripts/swift_syntax.js" \
  $(find "$root/bindings/swift/Sources/Tern" "$root/bindings/swift/Tests" -name '*.swift' | sort) \
  "$root/bindings/swift/Package.swift" \
  || status=1
exit $status
