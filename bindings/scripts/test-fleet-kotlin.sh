#!/usr/bin/env bash
# The fleet on the shipped layer, as real processes: `tern-fleet run --layer kotlin`
# starts tern-server-stub and three tern-relay processes, and a few hundred simulated
# devices that are the Kotlin layer an Android app links (`dev.tern.Tern` over the
# generated bindings and the native library through JNA, on the host JVM; the pod is
# bindings/kotlin/src/fleet, built by build-fleet-kotlin.sh). The verdict comes from the
# stub's own counters, read while the stack is still up: every event the Kotlin layer
# recorded is stored exactly once (unique events == recorded, no sequence gaps, no
# rejected batch), every device was heard from, and each device's QUIC socket is bound
# to its own loopback address. Times are printed, never asserted.
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

def pod_udp_addresses(parent):
    """Local IPv4 addresses of the UDP sockets the Kotlin pods (children of `parent`) hold."""
    import os
    pods = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and b"dev.tern.fleet.PodKt" in cmdline:
            pods.append(pid)
    inodes = set()
    for pid in pods:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    found = []
    for line in open("/proc/net/udp").read().splitlines()[1:]:
        cols = line.split()
        if cols[9] in inodes:
            raw = bytes.fromhex(cols[1].split(":")[0])[::-1]
            found.append(".".join(str(b) for b in raw))
    return found
cmd = [fleet, "run", "--layer", "kotlin", "--kotlin-pod", pod_dir,
       "--devices", str(devices), "--rate", "1500", "--duration", "8s",
       "--logins", "--push", "--exposures", "--app-updates", "--work-dir", work, "--json", f"{work}/report.json", "--keep-running", "--quiet"]
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
    ex = report.get("exposures") or {}
    ed = ex.get("devices", {})
    expect((ed.get("recorded") or 0) >= devices and ex.get("stored") == ed.get("recorded")
           and ex.get("stored_events") == ex.get("stored") and ed.get("failed") == 0
           and ed.get("without_bundle") == 0,
           f"flag reads through the layer recorded exposures, each stored once: {ed.get('recorded')} "
           f"recorded, stub {ex.get('stored')} ({ex.get('stored_events')} events), "
           f"{ed.get('reads')} reads, {ed.get('without_bundle')} devices without config")
    up = report.get("app_updates") or {}
    ud = up.get("devices", {})
    expect(ud.get("devices") == devices and ud.get("updated") == (devices + 1) // 2 and ud.get("failed") == 0
           and up.get("stub_installs") == devices and up.get("stub_updates") == ud.get("updated")
           and up.get("stub_updates_wrong") == 0 and up.get("stub_launch_opens") == devices + ud.get("updated", -1)
           and up.get("stub_install_ids_split") == 0 and up.get("stub_devices_on_cellular") == devices // 2,
           f"app updates through the layer: {ud.get('updated')} of {ud.get('devices')} devices updated; stub "
           f"{up.get('stub_installs')} installs, {up.get('stub_updates')} updates ({up.get('stub_updates_wrong')} wrong), "
           f"{up.get('stub_launch_opens')} launch opens, {up.get('stub_devices_on_cellular')} devices seen on cellular, "
           f"{up.get('stub_install_ids_split')} with split install ids")
    push = report.get("push") or {}
    pd = push.get("devices", {})
    expect(pd.get("devices_with_token") == devices and push.get("stub_devices") == devices
           and push.get("stub_token_digest") == pd.get("token_digest")
           and pd.get("received") == devices and push.get("stub_received") == devices
           and push.get("stub_opened") == pd.get("opened") == (devices + 1) // 2
           and pd.get("failed") == 0,
           f"push through the layer: {pd.get('devices_with_token')} devices with a token, stub "
           f"{push.get('stub_devices')} (newest: {push.get('stub_token_digest') == pd.get('token_digest')}); "
           f"received {pd.get('received')}/{push.get('stub_received')}, opened {pd.get('opened')}/{push.get('stub_opened')}")
    logins = report.get("logins") or {}
    aliases = logins.get("devices", {}).get("aliases")
    expect(aliases == devices and logins.get("stub_aliases") == devices
           and logins.get("devices", {}).get("failed") == 0 and logins.get("stub_realiased") == 0,
           f"every device aliased through the layer, each alias stored once: {aliases} aliases, "
           f"stub {logins.get('stub_aliases')} ({logins.get('stub_realiased')} re-aliased)")
    # Each device sends from its own address (`device_address(i)` of fleet/src/devices.rs,
    # set by the pod through `localAddress`): the pods' UDP sockets, read from /proc.
    expected = {f"127.{1 + ((i >> 16) & 0x7f)}.{(i >> 8) & 0xff}.{i & 0xff}" for i in range(devices)}
    found = pod_udp_addresses(p.pid)
    expect(set(found) == expected and len(found) == devices,
           f"each device's QUIC socket bound to its own address: {len(set(found))} distinct "
           f"of {len(found)} sockets, {len(expected & set(found))} of {devices} expected")
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

# Consent through the layer: grant, deny and delete roles by device index (fleet/src/consent.rs,
# Roles.kt). The fleet fails the run when the stub's deletions and identities disagree.
n = 60
cmd = [fleet, "run", "--layer", "kotlin", "--kotlin-pod", pod_dir, "--devices", str(n),
       "--rate", "300", "--duration", "4s", "--consent", "--work-dir", f"{work}/consent",
       "--json", f"{work}/consent.json", "--quiet"]
print("$ " + " ".join(cmd), flush=True)
code = subprocess.run(cmd).returncode
if code != 0:
    problems.append(f"the consent run exited {code}")
else:
    c = json.load(open(f"{work}/consent.json")).get("consent") or {}
    d = c.get("devices", {})
    roles = n // 3
    for what, got, want in [
        ("grants", d.get("grants"), roles),
        ("deletions", d.get("deletions"), roles),
        ("deletions at the stub", c.get("stub_deletions"), roles),
        ("denied impressions refused", d.get("impressions_refused"), 2 * roles),
        ("impressions at the stub", c.get("stub_impressions"), 0),
        ("events still held", d.get("pending_now"), 0),
    ]:
        ok = got == want
        print(("ok    " if ok else "FAIL  ") + f"consent: {what} {got} (expected {want})", flush=True)
        if not ok:
            problems.append(f"consent: {what} {got}, expected {want}")
if problems:
    sys.exit("test-fleet-kotlin.sh: " + "; ".join(problems))
print("kotlin fleet: every event the Kotlin layer recorded was stored exactly once")
PY
