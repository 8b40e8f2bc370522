#!/usr/bin/env bash
# Rolling restart of a tern-relay cluster, one relay at a time, without losing an event.
# A rollback is the same command with the previous binary installed.
#
#   relay/scripts/rolling-restart.sh \
#     --relay relay-1 http://10.0.0.1:9465 http://10.0.0.1:9464 \
#     --relay relay-2 http://10.0.0.2:9465 http://10.0.0.2:9464 \
#     --token-file /etc/tern/admin.token \
#     --restart 'ssh {id} sudo systemctl start tern-relay' \
#     [--shard-map /etc/tern/shard_map.json --publish-map 'tern-publish-map {file}'] \
#     [--exit-timeout 60] [--ready-timeout 120] [--settle 5]
#
# For each relay, in the order given:
#   1. with --shard-map: write the map with this relay `draining` (version + 1) and
#      publish it (every relay reloads it: file watch or SIGHUP), so devices that fetch
#      the map stop choosing it;
#   2. POST /admin/v1/drain: the relay stops taking connections and requests, tells its
#      devices (push notice, QUIC close code `draining`), answers what it accepted,
#      hands its spool prefix over and exits 0;
#   3. wait until its admin listener is gone (the process exited);
#   4. run the --restart command ({id} is replaced by the relay id); skip it with
#      --restart '' when a supervisor restarts the relay by itself;
#   5. wait for /readyz (metrics URL) to answer 200;
#   6. with --shard-map: write the map with this relay `active` again (version + 1),
#      publish it; wait --settle seconds; next relay.
# Any failure stops the rollout at that relay with a non-zero exit and a message saying
# where it stopped; relays already done stay done.
#
# Per-relay tokens: --token-file ID=FILE overrides --token-file FILE for that relay.
# Needs: curl, jq (with --shard-map).
set -euo pipefail

die() { echo "rolling-restart: $*" >&2; exit 1; }
log() { echo "rolling-restart: $(date -u +%H:%M:%S) $*" >&2; }

ids=(); admins=(); metrics=()
token_file=""
declare -A token_for=()
restart_cmd=""
restart_set=0
shard_map=""
publish_cmd=""
exit_timeout=60
ready_timeout=120
settle=5
while [ $# -gt 0 ]; do
  case "$1" in
    --relay)
      [ $# -ge 4 ] || die "--relay needs ID ADMIN_URL METRICS_URL"
      ids+=("$2"); admins+=("${3%/}"); metrics+=("${4%/}"); shift 4 ;;
    --token-file)
      [ $# -ge 2 ] || die "--token-file needs a value"
      if [[ "$2" == *=* ]]; then token_for["${2%%=*}"]="${2#*=}"; else token_file=$2; fi
      shift 2 ;;
    --restart) [ $# -ge 2 ] || die "--restart needs a value"; restart_cmd=$2; restart_set=1; shift 2 ;;
    --shard-map) shard_map=$2; shift 2 ;;
    --publish-map) publish_cmd=$2; shift 2 ;;
    --exit-timeout) exit_timeout=$2; shift 2 ;;
    --ready-timeout) ready_timeout=$2; shift 2 ;;
    --settle) settle=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ ${#ids[@]} -gt 0 ] || die "no --relay given (see --help)"
[ "$restart_set" = 1 ] || die "--restart is required (use --restart '' if a supervisor restarts relays)"
command -v curl >/dev/null || die "curl is required"
if [ -n "$shard_map" ]; then
  command -v jq >/dev/null || die "jq is required with --shard-map"
  [ -f "$shard_map" ] || die "shard map $shard_map not found"
fi

token_of() {
  local id=$1 f=${token_for[$1]:-$token_file}
  [ -n "$f" ] || die "no token for $id: give --token-file FILE or --token-file $id=FILE"
  [ -r "$f" ] || die "token file $f (for $id) is not readable"
  tr -d '[:space:]' <"$f"
}

# Sets relay $1's state in the shard map to $2 and bumps the version, atomically.
set_state() {
  local id=$1 state=$2 tmp
  tmp=$(mktemp "$(dirname "$shard_map")/.shard_map.XXXXXX")
  jq --arg id "$id" --arg state "$state" '
      if any(.nodes[]; .id == $id) | not then error("relay \($id) is not in the shard map") else . end
      | .version += 1
      | .nodes |= map(if .id == $id then .state = $state else . end)' "$shard_map" >"$tmp" \
    || { rm -f "$tmp"; die "could not update $shard_map for $id"; }
  mv "$tmp" "$shard_map"
  log "shard map version $(jq .version "$shard_map"): $id $state"
  if [ -n "$publish_cmd" ]; then
    bash -c "${publish_cmd//\{file\}/$shard_map}" || die "publishing the shard map failed"
  fi
}

# Waits until the relay's admin listener stops answering (the process exited).
wait_gone() {
  local url=$1 deadline=$(( $(date +%s) + exit_timeout ))
  while curl -s -o /dev/null --max-time 2 "$url/admin/v1/status"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

wait_ready() {
  local url=$1 deadline=$(( $(date +%s) + ready_timeout ))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url/readyz")" = 200 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.2
  done
}

for i in "${!ids[@]}"; do
  id=${ids[$i]} admin=${admins[$i]} metrics_url=${metrics[$i]}
  token=$(token_of "$id")
  t0=$(date +%s%N)
  log "[$((i + 1))/${#ids[@]}] $id: draining"
  if [ -n "$shard_map" ]; then set_state "$id" draining; sleep 3; fi
  code=$(curl -s -o /tmp/rolling-restart.$$ -w '%{http_code}' --max-time 10 -X POST \
    -H "Authorization: Bearer $token" -H "X-Tern-Operator: rolling-restart" \
    "$admin/admin/v1/drain") || code=000
  [ "$code" = 202 ] || die "$id: drain refused (HTTP $code: $(cat /tmp/rolling-restart.$$ 2>/dev/null)); stopped here"
  rm -f /tmp/rolling-restart.$$
  wait_gone "$admin" || die "$id: still running ${exit_timeout}s after the drain; stopped here (check its log)"
  log "$id: exited"
  if [ -n "$restart_cmd" ]; then
    bash -c "${restart_cmd//\{id\}/$id}" || die "$id: restart command failed; stopped here"
  fi
  wait_ready "$metrics_url" || die "$id: not ready ${ready_timeout}s after the restart; stopped here"
  if [ -n "$shard_map" ]; then set_state "$id" active; fi
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "$id: back and ready in $((ms / 1000)).$(printf '%03d' $((ms % 1000))) s"
  if [ "$i" -lt $(( ${#ids[@]} - 1 )) ]; then sleep "$settle"; fi
done
log "done: ${#ids[@]} relays restarted"
