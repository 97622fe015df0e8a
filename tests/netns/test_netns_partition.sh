#!/usr/bin/env bash
# test_netns_partition.sh - the cluster across hosts: a router, two prefill and
# two decode nodes, each in a network namespace of its own, joined by veth
# links to a bridge in a "switch" namespace (addresses 10.77.0.0/24 exist only
# inside these namespaces). UCX is held to TCP (UCX_TLS=tcp,self): namespaces
# share memory, so shared memory would bypass the links.
#
# Mid-stream, the link of a decode node that is serving streams is cut
# (ip link set ... down on the switch side); the router must notice (missed
# load reports), re-prefill those requests on the other decode node and finish
# every stream with the same text as an undisturbed run; the link is then
# healed and the cut node must be back in the registry.
#
# Exits 77 (ctest SKIP) with the reason where network namespaces cannot be
# made (not root, no iproute2, no bridge support). Usage: BIN_DIR [MODEL_DIR]
set -uo pipefail

BIN=${1:?usage: test_netns_partition.sh BIN_DIR}
TAG="mls$$"
SW="${TAG}sw"
HOSTS=(r p1 p2 d1 d2)
declare -A IP=([r]=10.77.0.1 [p1]=10.77.0.11 [p2]=10.77.0.12 [d1]=10.77.0.21 [d2]=10.77.0.22)
TMP=$(mktemp -d /tmp/mls-netns.XXXXXX)
PIDS=()
N_STREAMS=4
GEN=1500

skip() { echo "SKIP: $*"; exit 77; }
fail() {
  echo "FAIL: $*"
  for f in "$TMP"/*.log; do echo "--- $f"; tail -n 15 "$f"; done
  for f in "$TMP"/*.sse; do [[ -e "$f" ]] && { echo "--- $f"; head -c 400 "$f"; echo; }; done
  exit 1
}
ns() { ip netns exec "$TAG$1" "${@:2}"; }

cleanup() {
  # the daemons are started by `ip netns exec` directly (it execs them), so
  # these pids are theirs; whatever else runs in the namespaces goes too
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for h in "${HOSTS[@]}"; do
    for p in $(ip netns pids "$TAG$h" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done
  done
  wait 2>/dev/null
  for h in "${HOSTS[@]}"; do ip netns del "$TAG$h" 2>/dev/null; done
  ip netns del "$SW" 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

[[ $(id -u) -eq 0 ]] || skip "network namespaces need root"
command -v ip >/dev/null || skip "no iproute2 (ip)"
command -v curl >/dev/null || skip "no curl"
ip netns add "$SW" 2>/dev/null || skip "cannot create a network namespace here"
ip -n "$SW" link add br0 type bridge 2>/dev/null || skip "no bridge support in this kernel"
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up

# the hosts: one veth each, the switch end on the bridge
for h in "${HOSTS[@]}"; do
  ip netns add "$TAG$h" || fail "netns $h"
  ip link add "v$h" netns "$TAG$h" type veth peer name "s$h" netns "$SW" || fail "veth $h"
  ip -n "$SW" link set "s$h" master br0 up
  ip -n "$TAG$h" addr add "${IP[$h]}/24" dev "v$h"
  ip -n "$TAG$h" link set "v$h" up
  ip -n "$TAG$h" link set lo up
done

# the model (demo: it has a tokenizer)
MODEL=${2:-}
if [[ -z "$MODEL" ]]; then
  MODEL="$TMP/model"
  "$BIN/mlaserve" genmodel --preset demo --out "$MODEL" --force >/dev/null 2>&1 || fail "genmodel"
fi

export UCX_TLS=tcp,self UCX_WARN_UNUSED_ENV_VARS=n
KEYARGS=()
if "$BIN/mlaserve-router" --help 2>&1 | grep -q -- --cluster-key-file; then
  head -c 48 /dev/urandom | base64 > "$TMP/cluster.key"
  chmod 600 "$TMP/cluster.key"
  KEYARGS=(--cluster-key-file "$TMP/cluster.key")
fi

ip netns exec "${TAG}r" "$BIN/mlaserve-router" --tokenizer "$MODEL" --host "${IP[r]}" --port 8000 --node-port 7100 \
  "${KEYARGS[@]}" >"$TMP/router.log" 2>&1 &
PIDS+=($!)
for h in p1 p2 d1 d2; do
  role=prefill; [[ $h == d* ]] && role=decode
  ip netns exec "$TAG$h" "$BIN/mlaserve-$role" --model "$MODEL" --router "${IP[r]}:7100" --listen "${IP[$h]}" \
    --metrics-port 9100 --node-id "$h" --threads 1 --kv-pages 512 "${KEYARGS[@]}" \
    >"$TMP/$h.log" 2>&1 &
  PIDS+=($!)
done

api() { ns r curl -sS -m "${2:-30}" "http://${IP[r]}:8000$1" "${@:3}"; }
nodes_up() { # prints how many nodes of role $1 the router counts
  api /metrics 5 | awk -v r="$1" '$1 ~ "^mlaserve:nodes\\{" && $1 ~ "role=\""r"\"" {print int($2)}'
}
wait_nodes() { # role count seconds
  for ((i = 0; i < $3 * 5; i++)); do
    [[ "$(nodes_up "$1")" == "$2" ]] && return 0
    sleep 0.2
  done
  return 1
}
wait_nodes prefill 2 90 || fail "2 prefill nodes never registered"
wait_nodes decode 2 90 || fail "2 decode nodes never registered"

BODY='{"prompt":"The links between the hosts","max_tokens":'$GEN',"temperature":0,"ignore_eos":true,"stream":true}'
text_of() { # the concatenated "text" fields of an SSE completion stream
  python3 -c '
import json, sys
out = []
for line in open(sys.argv[1], encoding="utf-8"):
    if line.startswith("data: ") and line.strip() != "data: [DONE]":
        ev = json.loads(line[6:])
        if "error" in ev:
            print("ERROR", ev["error"]); sys.exit(0)
        for c in ev.get("choices", []):
            out.append(c.get("text") or "")
print("".join(out))' "$1"
}

# the reference: one undisturbed stream
api /v1/completions 120 -N -H 'Content-Type: application/json' -d "$BODY" >"$TMP/ref.sse" ||
  fail "the reference request failed"
REF=$(text_of "$TMP/ref.sse")
[[ -n "$REF" && "$REF" != ERROR* ]] || fail "empty reference: $REF"

for ((i = 0; i < N_STREAMS; i++)); do
  api /v1/completions 300 -N -H 'Content-Type: application/json' -d "$BODY" >"$TMP/s$i.sse" &
  SPIDS+=($!)
done
# wait until a decode node runs streams, then cut its link
running_on() { ns "$1" curl -sS -m 2 "http://${IP[$1]}:9100/metrics" |
  awk '$1 ~ /^mlaserve:num_requests_running/ {s += $2} END {print int(s)}'; }
CUT=
for ((i = 0; i < 300; i++)); do
  for d in d1 d2; do
    if [[ "$(running_on $d)" -ge 1 ]] 2>/dev/null; then CUT=$d; break; fi
  done
  [[ -n "$CUT" ]] && break
  sleep 0.1
done
[[ -n "$CUT" ]] || fail "no stream ran on a decode node (nothing to cut)"
ip -n "$SW" link set "s$CUT" down
echo "cut $CUT's link while it ran $(running_on $CUT 2>/dev/null || echo some) stream(s)"
wait_nodes decode 1 20 || fail "the router did not notice $CUT's partition within 20 s"
sleep 3
ip -n "$SW" link set "s$CUT" up
echo "healed $CUT's link"

for p in "${SPIDS[@]}"; do wait "$p"; done
for ((i = 0; i < N_STREAMS; i++)); do
  got=$(text_of "$TMP/s$i.sse")
  [[ "$got" == "$REF" ]] || fail "stream $i differs from the undisturbed run: '${got:0:120}...'"
done
echo "all $N_STREAMS streams finished with the undisturbed text"
RETRIES=$(api /metrics 5 | awk '$1 ~ /^mlaserve:request_retries_total/ {s += $2} END {print int(s)}')
[[ "$RETRIES" -ge 1 ]] || fail "no request was retried: the cut hit no stream"
echo "$RETRIES request(s) re-prefilled elsewhere"
wait_nodes decode 2 30 || fail "$CUT did not come back within 30 s of the heal"
echo "$CUT is back"
# and the healed cluster serves
api /v1/completions 120 -H 'Content-Type: application/json' \
  -d '{"prompt":"after","max_tokens":8,"temperature":0}' | grep -q '"finish_reason"' ||
  fail "no completion after the heal"
echo "1 passed, 0 failed"
