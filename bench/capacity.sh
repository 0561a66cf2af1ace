#!/usr/bin/env bash
# bench/capacity.sh — the figures of docs/capacity.md: what Redis-held rate caps cost.
#
#   bench/capacity.sh [CALLGATE_BINARY]     (default: target/release/callgate, else debug)
#
# 1. Memory, measured on the keys callgate itself writes: callgate (with records off, so
#    Redis holds only cap keys) and a fresh redis-server on random loopback ports; a cap of
#    60 per hour keyed on ownerUserID (an hour, so that no key expires while the run takes
#    minutes; its key is one byte longer than a per-minute cap's, all else is the same). USERS users make one allowed call each (Redis
#    used_memory before and after, and MEMORY USAGE of their keys); then FULL users make 60
#    each, filling their windows. Prints bytes per key with one call, per key with 60, and
#    per further allowed call.
# 2. Throughput of one Redis node for cap decisions: redis-benchmark runs callgate's own
#    check script (read from src/ratecap/redis.rs) on random users' keys, 50 clients, once
#    one call per round trip and once 16 pipelined (as several callgate instances'
#    concurrent decisions reach Redis). One Redis node runs scripts on one core: its
#    decisions/s is the figure for a cluster's node; a cluster of N masters carries about N
#    times it, as keys spread evenly (tests/ratecap.rs: caps_of_many_users_spread_over_every_master).
# 3. A list held in Redis: a set of LIST_IDS (1,000,000) IDs, its memory, and SMISMEMBER on
#    random IDs (half members) as a decision asks it, measured the same way as the caps.
#
# Needs redis-server, redis-cli, redis-benchmark, python3. Prints one summary at the end.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
CALLGATE=$(callgate_binary "${1:-}")
USERS=${USERS:-10000}
FULL=${FULL:-200}
REQUESTS=${REQUESTS:-300000}
LIST_IDS=${LIST_IDS:-1000000}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT


PORT=$(free_port)
redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
rcli() { redis-cli -p "$PORT" "$@"; }
used_memory() { rcli info memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p'; }

mkdir -p "$WORK/policies" "$WORK/data"
cat >"$WORK/policies/10-cap.yaml" <<'YAML'
rules:
  - id: msg-rate
    rate_cap: { key: [ownerUserID], max: 60, per: 1h }
    decision: deny
    error: { code: 20002, message: "too many, try later" }
YAML
"$CALLGATE" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --policies "$WORK/policies" \
    --data-dir "$WORK/data" --records false --redis-url "redis://127.0.0.1:$PORT" --redis-timeout 2s \
    >"$WORK/out" 2>"$WORK/log" &
PIDS+=($!)
for _ in $(seq 200); do grep -q "serving callbacks on" "$WORK/out" 2>/dev/null && break; sleep 0.05; done
ADDR=$(sed -nE 's|.*serving callbacks on http://([0-9.:]+).*|\1|p' "$WORK/out")
[[ -n $ADDR ]] || { cat "$WORK/log" >&2; echo "callgate did not start" >&2; exit 1; }

# post FIRST COUNT CALLS_EACH: users u_FIRST.. u_(FIRST+COUNT-1), CALLS_EACH calls each, 8 at a
# time over keep-alive connections; fails unless every call was allowed.
post() {
    python3 - "$ADDR" "$@" <<'PY'
import http.client, sys, threading
addr, first, count, each = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
host, port = addr.rsplit(":", 1)
jobs = [(u, i) for u in range(first, first + count) for i in range(each)]
refused = []
def run(part):
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    for u, i in part:
        body = '{"callbackCommand":"callbackBeforeSendSingleMsgCommand","sendID":"s","recvID":"r","ownerUserID":"u_%d"}' % u
        c.request("POST", "/openim/callbackBeforeSendSingleMsgCommand", body, {"Content-Type": "application/json"})
        if b'"errCode":0' not in c.getresponse().read():
            refused.append(u)
threads = [threading.Thread(target=run, args=(jobs[t::8],)) for t in range(8)]
for t in threads: t.start()
for t in threads: t.join()
sys.exit(f"{len(refused)} calls refused" if refused else 0)
PY
}
key() { printf 'callgate:cap:msg-rate\x1f3600000\x1fownerUserID\x1f{u_%d}' "$1"; }
# usage_of FIRST COUNT: the mean MEMORY USAGE of those users' keys.
usage_of() {
    local total=0 n
    for n in $(seq "$1" $(($1 + $2 - 1))); do
        total=$((total + $(rcli memory usage "$(key "$n")" samples 0)))
    done
    echo $((total / $2))
}

before=$(used_memory)
post 0 "$USERS" 1
one_used=$(( ($(used_memory) - before) / USERS ))
one_usage=$(usage_of 0 200)
before=$(used_memory)
post 1000000 "$FULL" 60
full_used=$(( ($(used_memory) - before) / FULL ))
full_usage=$(usage_of 1000000 "$FULL")
[[ $(rcli zcard "$(key 1000000)") == 60 ]] || { echo "a full window does not hold 60" >&2; exit 1; }
encoding=$(rcli object encoding "$(key 1000000)")

# Throughput: the check script, as callgate sends it (one cap, max 60 per minute).
SCRIPT=$(python3 - "$REPO/src/ratecap/redis.rs" <<'PY'
import sys
s = open(sys.argv[1]).read()
start = s.index('const CHECK: &str = r"') + len('const CHECK: &str = r"')
print(s[start:s.index('";', start)])
PY
)
SHA=$(rcli script load "$SCRIPT")
bench() {
    redis-benchmark -p "$PORT" -c 50 -n "$REQUESTS" -r 1000000 -P "$1" -q \
        EVALSHA "$SHA" 1 "callgate:cap:bench{u___rand_int__}" 1 "t__rand_int__" 60 60000 0 0 |
        sed -nE 's/.*: ([0-9.]+) requests per second.*/\1/p' | tail -1
}
rps1=$(bench 1)
rps16=$(bench 16)

# A list held in Redis: a set of LIST_IDS IDs (made in one script), its memory, and
# SMISMEMBER (what a decision asks) on random IDs, half of them members.
before=$(used_memory)
rcli eval "for i = 1, tonumber(ARGV[1]) do redis.call('SADD', KEYS[1], 'u_' .. i) end return 1" 1 bench:banned "$LIST_IDS" >/dev/null
set_used=$(( $(used_memory) - before ))
set_encoding=$(rcli object encoding bench:banned)
list_rps=$(redis-benchmark -p "$PORT" -c 50 -n "$REQUESTS" -r $((LIST_IDS * 2)) -P 1 -q \
    SMISMEMBER bench:banned "u___rand_int__" | sed -nE 's/.*: ([0-9.]+) requests per second.*/\1/p' | tail -1)

cat <<EOF
redis $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)
memory, cap 60/1h keyed on ownerUserID (keys as callgate writes them):
  a key holding 1 call:   ${one_used} B (used_memory / ${USERS} keys), MEMORY USAGE ${one_usage} B
  a key holding 60 calls: ${full_used} B (used_memory / ${FULL} keys), MEMORY USAGE ${full_usage} B, encoding ${encoding}
  each further call:      $(( (full_used - one_used) / 59 )) B (used_memory), $(( (full_usage - one_usage) / 59 )) B (MEMORY USAGE)
throughput of one redis node, the check script on random users' keys, 50 clients:
  one call per round trip: ${rps1} decisions/s
  16 pipelined:            ${rps16} decisions/s
a list held in redis, ${LIST_IDS} IDs (${set_encoding}): $(( set_used / 1024 / 1024 )) MiB, $(( set_used / LIST_IDS )) B an ID
  SMISMEMBER of one random ID, one per round trip, 50 clients: ${list_rps} decisions/s
EOF
