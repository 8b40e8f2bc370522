#!/usr/bin/env bash
# Supply-chain checks with cargo-deny (rules: deny.toml at the root).
#
#   scripts/deny.sh          (also a suite of scripts/test.sh)
#
# - licenses, bans, sources of the workspace: always, failing on any violation;
# - licenses and sources of the harness crates outside the workspace (the fuzz crates,
#   sdk-core/bench-glean), each with its own Cargo.lock: always. Their duplicate
#   versions are not banned: they are built here only, never shipped;
# - advisories (RustSec): only when a RustSec database is already on this machine
#   (cargo-deny fetches it from GitHub, which the build machines cannot reach). Set
#   TERN_ADVISORY_DB to a clone of the advisory-db, or have one under
#   $CARGO_HOME/advisory-dbs. Without one the script says so; it never passes silently
#   on advisories.
#
# Installs cargo-deny into the tool cache ($TERN_TOOLS_DIR, default ~/.cache/tern-tools) when missing (one time, a few minutes).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tools="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}"
export PATH="$tools/bin:$PATH"
version=0.20.2

if ! cargo-deny --version 2>/dev/null | grep -q " $version\$"; then
  echo "installing cargo-deny $version into $tools (one time)"
  cargo install --locked --root "$tools" "cargo-deny@$version" >/dev/null
fi
cargo-deny --version

# cargo-deny reads the manifest of every package in the lock files, for every platform;
# a build downloads only what this host compiles (no windows-sys, no Android crates on a
# fresh Linux machine). Fetch them all from the registry first; the checks run offline.
cargo fetch --locked --quiet
for m in protocol/fuzz relay/fuzz sdk-core/bench-glean; do
  cargo fetch --locked --quiet --manifest-path "$m/Cargo.toml"
done

echo "workspace: licenses, bans, sources"
cargo deny --locked --offline --config deny.toml check licenses bans sources

for m in protocol/fuzz relay/fuzz sdk-core/bench-glean; do
  echo "$m (outside the workspace): licenses, sources"
  cargo deny --locked --offline --manifest-path "$m/Cargo.toml" --config deny.toml check licenses sources
done

db=${TERN_ADVISORY_DB:-}
if [ -z "$db" ]; then
  for d in "${CARGO_HOME:-$HOME/.cargo}"/advisory-dbs/*/; do
    [ -d "$d/crates" ] && db=${d%/} && break
  done
fi
if [ -n "$db" ] && [ -d "$db/crates" ]; then
  echo "advisories: RustSec database at $db (not refreshed)"
  cargo deny --locked --offline --config deny.toml check --disable-fetch advisories
else
  echo "advisories: NOT CHECKED - no local RustSec database (set TERN_ADVISORY_DB to a clone of"
  echo "  the RustSec advisory-db, or run 'cargo deny fetch' where GitHub is reachable);"
  echo "  licenses, bans and sources above were checked."
fi
echo "supply-chain checks passed"
