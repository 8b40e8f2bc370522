#!/usr/bin/env bash
# The main job: the full local stack on embedded defaults — tern-server-stub, three
# tern-relay processes (local-disk spools, temp directories) and a fleet of simulated
# devices, each a real tern-sdk with its own SQLite store — with progress bars and a
# delivery report (recorded, delivered, duplicates suppressed, lost, latency, QUIC vs
# HTTPS share, relay metrics URLs). Exits non-zero if anything was lost.
#
#   scripts/run.sh [tern-fleet options]   release build; defaults: 50 devices,
#                                         2,000 events/s, 20 s. `--help` lists the flags:
#                                         --devices, --rate, --duration, chaos switches
#                                         (--kill-relay-at, --backend-outage-at,
#                                         --block-udp-at, --loss, --delay), --keep-running,
#                                         --sink kafka (the relays forward to a Kafka
#                                         broker; the report reads the topic back)
#   scripts/run.sh --smoke [options]      debug build, a short run with a relay kill
#                                         (used by the test command)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

if [ "${1:-}" = "--smoke" ]; then
  shift
  profile=(); bin_dir=debug
  args=(--devices 5 --rate 500 --duration 4s --kill-relay-at 1s --restart-after 2s --quiet "$@")
else
  profile=(--release); bin_dir=release
  args=("$@")
fi
# `--sink kafka` runs the relays' Kafka sink against tansu (a Kafka-protocol broker),
# installed once into the tool cache like the test command does (about 15 minutes).
case " $* " in
  *" --sink kafka "*|*" --sink=kafka "*)
    tools="${TERN_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tern-tools}"
    if [ -z "${TERN_TANSU:-}" ] && [ ! -x "$tools/tansu/bin/tansu" ]; then
      echo "installing tansu 0.6.0 (Kafka-protocol broker) into $tools/tansu (one time)..."
      cargo install --locked --root "$tools/tansu" tansu@0.6.0 --features libsql \
        || { echo "could not install tansu" >&2; exit 1; }
    fi
    export TERN_TANSU="${TERN_TANSU:-$tools/tansu/bin/tansu}"
    ;;
esac
echo "building tern-fleet, tern-relay and tern-server-stub (${bin_dir})..."
cargo build --quiet --locked "${profile[@]}" -p tern-fleet -p tern-relay -p tern-server-stub --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/$bin_dir/tern-fleet" "${args[@]}"
