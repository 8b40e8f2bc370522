#!/usr/bin/env bash
# Connection-storm and descriptor figures for issue 19: runs tern-fleet (release build,
# no chaos) with the SDK's request-failure debug log, samples the open file descriptors
# of its device processes (`tern-fleet pod`) while it runs, and prints
#   - the fleet's delivery report (HTTPS share, failovers, delivery latency),
#   - why requests failed (the SDK's `request failed` log lines, by error kind),
#   - QUIC handshake times (the SDK's `quic connected` log lines: p50/p90/p99/max),
#   - descriptors: the peak count, and what the devices hold, by kind, per device.
#
#   scripts/storm-figures.sh [out-dir] [tern-fleet options]
#   e.g. scripts/storm-figures.sh /tmp/storm --devices 1000 --rate 50000 --duration 20s
#
# Builds nothing: run `cargo build --release -p tern-fleet -p tern-relay
# -p tern-server-stub` first. Note the machine load (printed) next to any figure.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-/tmp/storm}; shift || true
mkdir -p "$out"
rm -rf "$out/work"
fleet="${TERN_FLEET:-$root/target/release/tern-fleet}"
[ -x "$fleet" ] || { echo "build first: $fleet not found" >&2; exit 1; }
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
NO_COLOR=1 RUST_LOG="warn,tern_sdk::net::failover=debug,tern_sdk::net::transport=debug" \
  "$fleet" --quiet --work-dir "$out/work" "$@" >"$out/report.txt" 2>"$out/fleet.log" &
pid=$!
peak=0
: >"$out/fds.txt"
while kill -0 "$pid" 2>/dev/null; do
  pods=$(pgrep -f "tern-fleet pod --spec $out/work" || true)
  n=0
  for p in $pods; do n=$((n + $(ls /proc/$p/fd 2>/dev/null | wc -l || echo 0))); done
  if [ "$n" -gt "$peak" ]; then
    peak=$n
    # What the descriptors are, at the peak.
    for p in $pods; do for f in /proc/$p/fd/*; do readlink "$f" 2>/dev/null || true; done; done >"$out/fds.txt"
  fi
  sleep 1
done
wait "$pid" && rc=0 || rc=$?
cat "$out"/work/pod-*.log >"$out/sdk.log" 2>/dev/null || : >"$out/sdk.log"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); tern-fleet exit $rc"
echo "--- report"; cat "$out/report.txt"
echo "--- request failures by kind (SDK debug log)"
sed 's/\x1b\[[0-9;]*m//g' "$out/sdk.log" | { grep 'request failed' || true; } \
  | sed -E 's/.*error=//; s/relay [^ ]+ //; s/[0-9]+(\.[0-9]+)?(ms|s|µs)/N/g; s/[0-9]+ datagrams/N datagrams/' \
  | cut -c1-110 | sort | uniq -c | sort -rn | head -20 || true
echo "--- QUIC handshakes (ms)"
 sed 's/\x1b\[[0-9;]*m//g' "$out/sdk.log" | { grep -o 'handshake_ms=[0-9]*' || true; } | cut -d= -f2 | sort -n \
  | awk '{a[NR]=$1} END {if (NR) printf "n=%d p50=%d p90=%d p99=%d max=%d\n", NR, a[int(NR*.5)+1], a[int(NR*.9)+1], a[int(NR*.99)+1], a[NR]; else print "none logged"}'
echo "--- handshake timeouts"
grep -c 'quic handshake timed out' "$out/sdk.log" || true
echo "--- descriptors at the peak: $peak"
devices=$(grep -oE 'device-[0-9]+' "$out/fds.txt" | sort -u | wc -l)
sed -E 's#.*/device-[0-9]+/#device/#; s#^socket:.*#socket#; s#^/.*/devices/.*#device-other#; s#^anon_inode:##; s#^pipe:.*#pipe#' "$out/fds.txt" \
  | sort | uniq -c | sort -rn | head -20
echo "devices holding files: $devices; descriptors per device: $(awk -v p="$peak" -v d="$devices" 'BEGIN{if (d) printf "%.2f", p/d; else print "n/a"}')"
