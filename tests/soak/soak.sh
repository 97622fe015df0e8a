#!/usr/bin/env bash
# soak.sh - the cluster at saturation for a while, with nodes killed and
# restarted, must stay flat: the router's and the never-killed decode node's
# RSS do not grow beyond a margin, every KV page comes back, and requests
# keep completing (those on a killed node are re-prefilled elsewhere).
#
# Usage: soak.sh BIN_DIR [SECONDS]   (default 60; CI runs it short, operators
# run it for minutes or hours). Loopback only: a router, two prefill and two
# decode nodes; `mlaserve bench serve` keeps 16 requests in flight; every
# KILL_EVERY seconds one of p1 / d1 (in turn) is SIGKILLed and restarted.
# Prints the figures it checks; exits 0 when flat, 1 otherwise.
set -uo pipefail

BIN=${1:?usage: soak.sh BIN_DIR [SECONDS]}
DURATION=${2:-60}
KILL_EVERY=${KILL_EVERY:-10}
RSS_MARGIN_KB=${RSS_MARGIN_KB:-65536}   # 64 MiB over the warmed-up RSS
PAGES=256
TMP=$(mktemp -d /tmp/mls-soak.XXXXXX)
declare -A PID

fail() {
  echo "FAIL: $*"
  for f in "$TMP"/*.log; do echo "--- $f"; tail -n 10 "$f"; done
  exit 1
}
cleanup() {
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null; done
  [[ -n "${LOAD:-}" ]] && kill -9 "$LOAD" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$TMP"
}
trap cleanup EXIT

"$BIN/mlaserve" genmodel --preset demo --out "$TMP/model" --force >/dev/null 2>&1 || fail "genmodel"
KEYARGS=()
if "$BIN/mlaserve-router" --help 2>&1 | grep -q -- --cluster-key-file; then
  head -c 48 /dev/urandom | base64 >"$TMP/cluster.key"
  chmod 600 "$TMP/cluster.key"
  KEYARGS=(--cluster-key-file "$TMP/cluster.key")
fi
"$BIN/mlaserve-router" --tokenizer "$TMP/model" --port 0 --node-port 0 --port-file "$TMP/ports" \
  "${KEYARGS[@]}" >"$TMP/router.log" 2>&1 &
PID[router]=$!
for ((i = 0; i < 100; i++)); do [[ -s "$TMP/ports" ]] && break; sleep 0.1; done
read -r HTTP NODE_PORT <"$TMP/ports" || fail "the router wrote no ports"

start_node() { # name role
  local role=$2
  "$BIN/mlaserve-$role" --model "$TMP/model" --router "127.0.0.1:$NODE_PORT" --node-id "$1" \
    --threads 1 --kv-pages $PAGES "${KEYARGS[@]}" >>"$TMP/$1.log" 2>&1 &
  PID[$1]=$!
}
start_node p0 prefill
start_node p1 prefill
start_node d0 decode
start_node d1 decode

metric() { # URL-port name: the sum of a metric's series
  curl -sS -m 5 "http://127.0.0.1:$1/metrics" | awk -v n="$2" 'index($1, n) == 1 {s += $2} END {print s + 0}'
}
nodes() { metric "$HTTP" "mlaserve:nodes{role=\"$1\"" | cut -d. -f1; }
wait_nodes() {
  for ((i = 0; i < 600; i++)); do
    [[ "$(nodes prefill)" == 2 && "$(nodes decode)" == 2 ]] && return 0
    sleep 0.1
  done
  return 1
}
wait_nodes || fail "the nodes never all registered"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
d0_metrics_port() { sed -n 's|.*metrics http://127.0.0.1:\([0-9]*\)/metrics.*|\1|p' "$TMP/d0.log" | head -1; }
D0M=$(d0_metrics_port)

load_round() { # one bench round in the background
  "$BIN/mlaserve" bench serve --url "http://127.0.0.1:$HTTP" --num-prompts 48 --max-concurrency 16 \
    --input-len 96 --output-len 48 --vocab-size 2000 --seed "$1" --no-progress --timeout 120 \
    --result-json "$TMP/round$1.json" >>"$TMP/bench.log" 2>&1 &
  LOAD=$!
}

# warm up one round, then take the baselines
load_round 0
wait "$LOAD"
RSS_ROUTER0=$(rss "${PID[router]}")
RSS_D00=$(rss "${PID[d0]}")
echo "warmed up: router RSS ${RSS_ROUTER0} kB, d0 RSS ${RSS_D00} kB"

T_END=$((SECONDS + DURATION))
NEXT_KILL=$((SECONDS + KILL_EVERY))
ROUND=1
VICTIMS=(d1 p1)
KILLS=0
load_round $ROUND
while ((SECONDS < T_END)); do
  if ! kill -0 "$LOAD" 2>/dev/null; then
    wait "$LOAD"
    ROUND=$((ROUND + 1))
    load_round $ROUND
  fi
  if ((SECONDS >= NEXT_KILL)); then
    v=${VICTIMS[$((KILLS % 2))]}
    kill -9 "${PID[$v]}" 2>/dev/null
    wait "${PID[$v]}" 2>/dev/null
    role=prefill; [[ $v == d* ]] && role=decode
    start_node "$v" "$role"
    KILLS=$((KILLS + 1))
    NEXT_KILL=$((SECONDS + KILL_EVERY))
  fi
  for p in router p0 d0; do kill -0 "${PID[$p]}" 2>/dev/null || fail "$p died"; done
  sleep 0.5
done
wait "$LOAD"
wait_nodes || fail "the restarted nodes did not all come back"

# flat: pages all back on d0, RSS within the margin, requests completing
for ((i = 0; i < 100; i++)); do
  free=$(metric "$D0M" "mlaserve:kv_pages_free")
  [[ "${free%.*}" == "$PAGES" ]] && break
  sleep 0.1
done
RESERVED=$(metric "$D0M" "mlaserve:kv_pages_reserved")
RSS_ROUTER1=$(rss "${PID[router]}")
RSS_D01=$(rss "${PID[d0]}")
read -r DONE FAILED < <(python3 -c '
import glob, json, sys
done = failed = 0
for f in glob.glob(sys.argv[1] + "/round*.json"):
    r = json.load(open(f))
    done += r.get("completed", 0); failed += r.get("failed", 0)
print(done, failed)' "$TMP")
echo "after ${DURATION} s, ${ROUND} rounds, ${KILLS} kills: requests completed ${DONE}, failed ${FAILED}"
echo "router RSS ${RSS_ROUTER0} -> ${RSS_ROUTER1} kB; d0 RSS ${RSS_D00} -> ${RSS_D01} kB;" \
  "d0 pages free ${free}/${PAGES}, reserved ${RESERVED}"
[[ "${free%.*}" == "$PAGES" ]] || fail "d0 holds $((PAGES - ${free%.*})) pages with no request running"
[[ "${RESERVED%.*}" == 0 ]] || fail "d0 still has reserved pages"
((RSS_ROUTER1 - RSS_ROUTER0 <= RSS_MARGIN_KB)) || fail "the router's RSS grew by $((RSS_ROUTER1 - RSS_ROUTER0)) kB"
((RSS_D01 - RSS_D00 <= RSS_MARGIN_KB)) || fail "d0's RSS grew by $((RSS_D01 - RSS_D00)) kB"
((DONE > 0)) || fail "no request completed"
((FAILED * 10 <= DONE)) || fail "more than one request in ten failed ($FAILED of $((DONE + FAILED)))"
echo "1 passed, 0 failed"
