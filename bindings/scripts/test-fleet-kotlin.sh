#!/usr/bin/env bash
# The fleet on the shipped layer, as real processes: `tern-fleet run --layer kotlin`
# starts tern-server-stub and three tern-relay processes, and a few hundred simulated
# devices that are the Kotlin layer an Android app links (`dev.tern.Tern` over the
# generated bindings and the native library through JNA, on the host JVM; the pod is
# bindings/kotlin/src/fleet, built by build-fleet-kotlin.sh). The verdict comes from the
# stub's own counters, read while the stack is still up: every event the Kotlin layer
# recorded is stored exactly once (unique events == recorded, no sequence gaps, no
# rejected batch) and every device was heard from. Times are printed, never asserted.
#
#   bindings/scripts/test-fleet-kotlin.sh [devices]     (default 300)
#
# Debug builds. Installs kotlinc and JNA when missing (kotlin-tools.sh); fails loudly,
# never skips.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root"
die() { echo "test-fleet-kotlin.sh: $*" >&2; exit 1; }
devices=${1:-300}

pod_dir=$("$root/bindings/scripts/build-fleet-kotlin.sh" | tail -n 1)
cargo build --quiet --locked -p tern-fleet -p tern-server-stub -p tern-relay --bins
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
fleet="$target_dir/debug/tern-fleet"
[ -x "$fleet" ] || die "$fleet was not built"

work=$(mktemp -d -t tern-fleet-kotlin.XXXXXX)
keep_work() { echo "test-fleet-kotlin.sh: failed; logs kept in $work (pod-*.log, stub.log, relay-*)" >&2; }
trap 'status=$?; if [ "$status" -eq 0 ]; then rm -rf "$work"; else keep_work; fi' EXIT

python3 - "$fleet" "$pod_dir" "$work" "$devices" <<'PY'
import json, signal, subprocess, sys, time, urllib.request

fleet, pod_dir, work, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cmd = [fleet, "run", "--layer", "kotlin", "--kotlin-pod", pod_dir,
       "--devices", str(devices), "--rate", "1500", "--duration", "8s",
       "--work-dir", work, "--json", f"{work}/report.json", "--keep-running", "--quiet"]
print("$ " + " ".join(cmd), flush=True)
started = time.monotonic()
p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
stub = None
problems = []
try:
    for line in p.stdout:
        print(line, end="", flush=True)
        if line.strip().startswith("stub "):
            stub = line.split()[1]
        if line.startswith("the stack keeps running"):
            break
    else:
        sys.exit(f"tern-fleet ended before its report (exit {p.wait()}); see the logs")
    if stub is None:
        sys.exit("tern-fleet did not print the stub's URL")
    report = json.load(open(f"{work}/report.json"))
    s = json.load(urllib.request.urlopen(f"{stub}/verify/summary", timeout=30))
    print(f"stub /verify/summary: {json.dumps(s)}")
    recorded = report["recorded"]
    def expect(ok, what):
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            problems.append(what)
    expect(report["layer"] == "kotlin", f"the devices ran the Kotlin layer (report layer {report['layer']!r})")
    expect(report["devices"] == devices, f"{devices} devices in the report ({report['devices']})")
    expect(recorded > 0, f"the Kotlin layer recorded events ({recorded})")
    expect(s["events_unique"] == recorded,
           f"every recorded event stored once: unique {s['events_unique']} == recorded {recorded}")
    expect(s["sequence_gaps"] == 0, f"no sequence gaps ({s['sequence_gaps']})")
    expect(s["batches_rejected"] == 0, f"no batch rejected ({s['batches_rejected']})")
    expect(s["devices"] == devices, f"every device heard: {s['devices']} == {devices}")
    expect(report["lost"] == 0, f"the report's verdict: {report['lost']} lost")
finally:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
        try:
            for line in p.stdout:
                print(line, end="")
            code = p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            code = p.wait()
            problems.append("tern-fleet did not stop within 120 s of SIGINT")
        if code != 0:
            problems.append(f"tern-fleet exited {code}")
print(f"{devices} Kotlin devices, run took {time.monotonic() - started:.0f} s")
if problems:
    sys.exit("test-fleet-kotlin.sh: " + "; ".join(problems))
print("kotlin fleet: every event the Kotlin layer recorded was stored exactly once")
PY
