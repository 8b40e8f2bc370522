#!/usr/bin/env bash
# Runs every test suite of the workspace. Installs its own test dependencies when they
# are missing — built tools into a cache outside the clone ($TERN_TOOLS_DIR, default
# ~/.cache/tern-tools), so a fresh clone does not rebuild them. Fails loudly; never
# skips a suite.
#
#   scripts/test.sh            everything (what CI runs)
#   FUZZ_SECONDS=5 scripts/test.sh   shorter fuzz smoke
#   TERN_KEEP_BUILDS=1 scripts/test.sh   keep the release and fuzzer builds for the
#                                        next run (removed once used by default: disk)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
tools="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}"
export PATH="$tools/bin:$HOME/.cargo/bin:$PATH"
fuzz_seconds=${FUZZ_SECONDS:-30}

step() { printf '\n==> %s\n' "$*"; }
fail() { printf '\nFAILED: %s\n' "$*" >&2; exit 1; }

# CI builds once: incremental caches only cost disk (gigabytes) and time there.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

# Each suite's output goes to the terminal and to a log; the summary repeats the end of
# every failed suite's log, so a long run's verdict carries its reasons.
logs="$root/target/test-logs"
mkdir -p "$logs"
declare -a suites_passed=()
declare -a suites_failed=()
declare -a failed_logs=()
run_suite() {
  local name=$1; shift
  step "$name"
  local start=$SECONDS log
  log="$logs/$(printf '%02d' $(( ${#suites_passed[@]} + ${#suites_failed[@]} + 1 ))).log"
  local ok=0
  "$@" > >(tee "$log") 2>&1 || ok=$?
  wait  # the tee of this suite has written everything
  # Each line carries the disk space left after the suite: a run that fills the disk
  # shows which suite took it.
  local line
  line="$(printf '%5ss  %6s free  %s' $((SECONDS - start)) "$(avail "$root/target")" "$name")"
  if [ "$ok" = 0 ]; then
    suites_passed+=("$line")
  else
    suites_failed+=("$line")
    failed_logs+=("$log")
  fi
}
avail() { df -h --output=avail "$1" 2>/dev/null | tail -n 1 | tr -d ' '; }
free_space() { df -h --output=avail,target "$root/target" "${TMPDIR:-/tmp}" 2>/dev/null | tail -n +2 | awk '{print "  free: " $1 " on " $2}'; }
# tidy DIR...: removes build directories no later suite of this run reads (the storm
# scenario's release build, the fuzzers' sanitizer builds, the Glean harness's check),
# unless TERN_KEEP_BUILDS=1. A clean CI clone does not need them again, and they take
# gigabytes of a disk we do not size.
tidy() {
  [ "${TERN_KEEP_BUILDS:-0}" = 1 ] && return 0
  local d
  for d in "$@"; do
    [ -d "$d" ] && echo "removing $d ($(du -sh "$d" | cut -f1); TERN_KEEP_BUILDS=1 keeps it)" && rm -rf "$d"
  done
  return 0
}
mkdir -p "$tools"
echo "tool cache: $tools"
free_space

step "toolchain"
command -v cargo >/dev/null || fail "cargo not found: install Rust with rustup"
cargo --version
rustup component list --installed 2>/dev/null | grep -qE '^(rustfmt|clippy)' || rustup component add rustfmt clippy

step "test dependencies"
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz into $tools (one time)"
  cargo install --locked --root "$tools" cargo-fuzz@0.13.2 || fail "could not install cargo-fuzz"
fi
cargo fuzz --version
if ! command -v s3s-fs >/dev/null; then
  echo "installing s3s-fs (S3-compatible test server) into $tools (one time)"
  cargo install --locked --root "$tools" s3s-fs@0.14.1 --features binary || fail "could not install s3s-fs"
fi
export TERN_S3S_FS="$(command -v s3s-fs)"
# The Kafka sink's scenarios run against tansu (a Kafka-protocol broker in Rust; Apache
# Kafka cannot be fetched here), started by the tests on loopback with SQLite storage.
tansu_bin="$tools/tansu/bin/tansu"
if [ ! -x "$tansu_bin" ]; then
  echo "installing tansu 0.6.0 (Kafka-protocol broker) into $tools/tansu (one time, about 10 minutes: SQLite storage only)"
  cargo install --locked --root "$tools/tansu" tansu@0.6.0 --features libsql \
    || fail "could not install tansu"
fi
export TERN_TANSU="$tansu_bin"
echo "tansu: $TERN_TANSU"
# The end-to-end suite drops UDP with iptables inside a private network namespace.
if ! command -v iptables >/dev/null; then
  echo "installing iptables (end-to-end UDP-block test, one time)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iptables; } \
    || fail "could not install iptables (needs apt and root)"
fi
command -v unshare >/dev/null || fail "unshare (util-linux) is required by the end-to-end suite"
echo "s3s-fs: $TERN_S3S_FS"

run_suite "format (cargo fmt --check)" cargo fmt --all -- --check
run_suite "module graphs without cycles (scripts/check-modules.py, with its self-test)" python3 "$root/scripts/check-modules.py"
run_suite "lints (cargo clippy -D warnings)" cargo clippy --workspace --all-targets --locked -- -D warnings
run_suite "unit, property and integration tests (cargo test)" cargo test --workspace --locked --no-fail-fast
# The storm scenario's release build; every later suite builds and runs debug binaries.
tidy "$root/target/release"
run_suite "benchmark harnesses build (sdk-core/bench-glean, outside the workspace)" \
  cargo check --quiet --locked --all-targets --manifest-path sdk-core/bench-glean/Cargo.toml \
  --target-dir "$root/target/bench-glean-check"
tidy "$root/target/bench-glean-check"
run_suite "docs build (cargo doc, warnings denied)" env RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
# Installs cargo-deny into .tools/ when missing; advisories only with a local RustSec
# database (the script says whether they were checked).
run_suite "supply chain (scripts/deny.sh: cargo deny licenses, bans, sources; advisories if a database is local)" \
  "$root/scripts/deny.sh"

# fuzz_smoke CRATE TARGET: runs a cargo-fuzz target of CRATE (protocol, relay) for
# FUZZ_SECONDS, its corpus seeded from the protocol's test vectors.
fuzz_smoke() {
  local crate=$1 target=$2 corpus="$root/$1/fuzz/corpus/$2"
  mkdir -p "$corpus"
  # Seed with the checked-in test vectors (hex → bytes).
  python3 - "$root/protocol/tests/vectors" "$corpus" <<'PY'
import pathlib, sys
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in src.glob("*.hex"):
    data = bytes.fromhex("".join(f.read_text().split()))
    if dst.name == "frame_decoder":
        data = b"\x40" + data          # first byte: chunk size for the stream decoder
    elif dst.name == "relay_frame":
        pass                           # whole frames, as a QUIC stream delivers them
    elif not f.stem.startswith("config_bundle") and len(data) > 6 and data[5] == 0:
        data = data[6:]                # payload target: strip the frame header
    (dst / f.stem).write_bytes(data)
PY
  local log="$root/target/fuzz-$target.log"
  mkdir -p "$root/target"
  if (cd "$crate" && RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz "$target" "$corpus" -- \
      -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 -print_final_stats=1) >"$log" 2>&1; then
    grep -E '^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))' "$log"
  else
    tail -n 80 "$log"
    echo "fuzz target $target failed; crash input under $crate/fuzz/artifacts/$target/" >&2
    return 1
  fi
}
run_suite "fuzz smoke: frame_decoder (${fuzz_seconds}s)" fuzz_smoke protocol frame_decoder
run_suite "fuzz smoke: payloads (${fuzz_seconds}s)" fuzz_smoke protocol payloads
run_suite "fuzz smoke: ingest_view (${fuzz_seconds}s)" fuzz_smoke protocol ingest_view
run_suite "fuzz smoke: relay_frame (${fuzz_seconds}s)" fuzz_smoke relay relay_frame
tidy "$root/protocol/fuzz/target" "$root/relay/fuzz/target"

# The bindings: Kotlin host-JVM suite (installs kotlinc from npm and JNA/JUnit from apt
# when missing; includes a live round trip through `tern-fleet stack`).
run_suite "bindings API snapshots + Swift symbol checks (bindings/scripts/check-api.sh)" "$root/bindings/scripts/check-api.sh"
run_suite "kotlin host tests (bindings/scripts/test-kotlin.sh)" "$root/bindings/scripts/test-kotlin.sh"
run_suite "kotlin fleet: 300 devices on the Kotlin layer against stub + 3 relays, exactly once, logins, push, exposures, app updates; 60 with consent roles (bindings/scripts/test-fleet-kotlin.sh)" "$root/bindings/scripts/test-fleet-kotlin.sh"
run_suite "android glue + instrumented tests compile against the Tern API (bindings/scripts/check-android.sh)" \
  "$root/bindings/scripts/check-android.sh"
run_suite "mobile cargo check of tern-bindings (aarch64-linux-android, aarch64-apple-ios)" "$root/bindings/scripts/check-mobile.sh"

# The relay dashboard in headless Chromium (installs Debian chromium and npm
# playwright-core into .tools/ when missing; screenshots in target/dashboard-artifacts/).
run_suite "relay dashboard browser test (relay/scripts/test-dashboard.sh)" "$root/relay/scripts/test-dashboard.sh"
run_suite "stub API tour smoke (scripts/stub-tour.sh --smoke)" "$root/scripts/stub-tour.sh" --smoke
run_suite "main job smoke (scripts/run.sh --smoke: stub, 3 relays, 5 devices, a relay SIGKILL)" "$root/scripts/run.sh" --smoke
run_suite "main job smoke with the engagement checks (scripts/run.sh --smoke --exposures --logins --push --app-updates: each report line against the stub's views)" \
  "$root/scripts/run.sh" --smoke --exposures --logins --push --app-updates
run_suite "main job smoke with consent (scripts/run.sh --smoke --consent: pending, denied, deletion requests against the stub)" \
  "$root/scripts/run.sh" --smoke --consent
run_suite "main job smoke over Kafka (scripts/run.sh --smoke --sink kafka: the relays forward to tansu, delivery read back from the topic)" \
  "$root/scripts/run.sh" --smoke --sink kafka

step "summary"
i=0
for s in "${suites_failed[@]+"${suites_failed[@]}"}"; do
  echo "  FAIL  $s: the end of its output ($(basename "${failed_logs[$i]}") in $logs):"
  tail -n 25 "${failed_logs[$i]}" | sed 's/^/      | /'
  i=$((i + 1))
done
free_space
for s in "${suites_passed[@]}"; do echo "  ok    $s"; done
for s in "${suites_failed[@]+"${suites_failed[@]}"}"; do echo "  FAIL  $s"; done
echo "suites: ${#suites_passed[@]} passed, ${#suites_failed[@]} failed in ${SECONDS}s"
[ "${#suites_failed[@]}" -eq 0 ] || exit 1
