#!/usr/bin/env bash
# bench/cluster.sh — Redis-capped decisions through callgate, one Redis node against a
# three-master Redis Cluster, and decisions asking a list held in Redis on the node, in one
# run (the through-callgate figures of docs/capacity.md).
#
#   bench/cluster.sh [CALLGATE_BINARY]     (default: target/release/callgate, else debug)
#
# Started here, on random loopback ports: one redis-server, three redis-servers joined into a
# cluster (redis-cli --cluster create, no replicas), and two callgates (--records false) with
# bench/load.sh's capredis policy — a cap keyed on ownerUserID, checked and counted on every
# request, never refusing — one on the node, one on the cluster (--redis-cluster). wrk drives
# them with bench/cap.lua (100,000 users) at full load, alternating node, cluster, node, ...
# Before each cap run its Redis's keys are emptied (FLUSHDB of database 0), so each run starts
# from the same state.
#
# Per run: callgate's decisions/s and p99, callgate's CPU per decision (/proc), and each
# Redis's CPU per decision (the change of used_cpu_sys + used_cpu_user in INFO cpu over the
# run, divided by the requests completed), its scripts run (INFO commandstats: their
# share of the decisions, and Redis's time inside them per call) and, after the run, its keys.
# Every decision must have run exactly one script: the run fails otherwise (a Redis error
# answered by --on-error would not be a capped decision).
#
# On one machine the three masters share the cores that callgate, wrk and the one node use:
# the cluster's absolute throughput here cannot exceed one node's. What the run does show:
# the client-side cost of cluster routing (callgate's throughput and CPU on the cluster
# against the node) and how the Redis work divides over the masters.
#
# A third run each round, `paced`, drives the same node at a third of that round's cluster
# rate, open loop (examples/fixed_rate: examples/ beside the callgate binary, or
# FIXED_RATE_BIN; skipped without it): the rate each master served, so that a master's CPU per
# script can be set against the node's at the same rate.
#
# A fourth run each round, `list`, comes right after the node's: a third callgate on the
# same node, on bench/policies/list — one list held in Redis (a set the script fills once, in
# database 1 of the node so that the cap runs' FLUSHDB leaves it: LIST_IDS IDs, u_0, u_2, u_4,
# ..., so half of cap.lua's users are members), asked on every request without a cache, its
# members refused. The same figures as a cap run, with SMISMEMBER in place of scripts: every
# decision must have sent exactly one SMISMEMBER and run no script, and callgate's
# /metrics must count the decisions, half of them refused (as many as cap.lua's users in the
# set), or the run fails. The summary sets its decisions/s against the node's cap run of the
# same round, and gives the set's memory (used_memory before and after filling it, and
# MEMORY USAGE).
#
# Build first: cargo build --release --bin callgate --example fixed_rate.
# Knobs (environment): ROUNDS=3 DURATION=10 WARMUP=3 THREADS=2 CONNS=32 LIST_IDS=1000000
# FIXED_RATE_BIN. The default run takes about three minutes. Needs redis-server, redis-cli,
# wrk, curl, python3.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
LIST_IDS=${LIST_IDS:-1000000}

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
CALLGATE=$(callgate_binary "${1:-}")
for tool in redis-server redis-cli wrk curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/callgate-cluster.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '[cluster] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# redis PORT [FLAG...]: a redis-server on 127.0.0.1:PORT, no persistence, in its own directory.
redis() {
    local port=$1
    shift
    mkdir -p "$WORK/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis-$port" "$@" \
        >"$WORK/redis-$port.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return; sleep 0.05; done
    cat "$WORK/redis-$port.log" >&2
    die "redis-server on $port did not start"
}

NODE=$(free_port)
redis "$NODE"
MASTERS=()
for _ in 1 2 3; do
    port=$(free_port)
    # Its cluster bus on a port of its own: by default port + 10000, refused above 55535.
    redis "$port" --cluster-enabled yes --cluster-config-file nodes.conf --cluster-port "$(free_port)"
    MASTERS+=("$port")
done
redis-cli --cluster create "${MASTERS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$WORK/create.log" 2>&1 ||
    { cat "$WORK/create.log" >&2; die "redis-cli --cluster create failed"; }
for port in "${MASTERS[@]}"; do
    for _ in $(seq 200); do redis-cli -p "$port" cluster info | grep -q cluster_state:ok && break; sleep 0.05; done
    redis-cli -p "$port" cluster info | grep -q cluster_state:ok || die "the cluster did not come up"
done
say "one node on $NODE; cluster masters on ${MASTERS[*]}"

# The list: LIST_IDS IDs u_0, u_2, ... in a set in database 1 of the node, made by one script.
used_memory() { redis-cli -p "$NODE" info memory | tr -d '\r' | sed -n 's/^used_memory:\([0-9]*\)$/\1/p'; }
LIST_KEY=bench:banned
before=$(used_memory)
[[ $(redis-cli -p "$NODE" -n 1 eval "for i = 0, tonumber(ARGV[1]) - 1 do redis.call('SADD', KEYS[1], 'u_' .. (2 * i)) end return redis.call('SCARD', KEYS[1])" \
    1 "$LIST_KEY" "$LIST_IDS") == "$LIST_IDS" ]] || die "the list's set does not hold $LIST_IDS IDs"
SET_USED=$(( $(used_memory) - before ))
SET_USAGE=$(redis-cli -p "$NODE" -n 1 memory usage "$LIST_KEY" samples 0)
SET_ENCODING=$(redis-cli -p "$NODE" -n 1 object encoding "$LIST_KEY")
# The share of cap.lua's users (u_0 ... u_99999) in the set: the even ones, at most.
MEMBER_SHARE=$(awk -v n="$LIST_IDS" 'BEGIN { m = n < 50000 ? n : 50000; printf "%.1f", m * 100 / 100000 }')
say "the list: $LIST_IDS IDs in $LIST_KEY ($SET_ENCODING), $MEMBER_SHARE% of cap.lua's users"

declare -A ADDR=() ADMIN=() PID=()
# start_callgate NAME POLICY FLAG...: callgate with records off, on bench/policies/POLICY.
start_callgate() {
    local name=$1 policy=$2
    shift 2
    mkdir -p "$WORK/$name-data"
    "$CALLGATE" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --policies "$REPO/bench/policies/$policy" \
        --data-dir "$WORK/$name-data" --records false --on-error deny --redis-timeout 2s "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PID[$name]=$!
    PIDS+=($!)
    for _ in $(seq 200); do grep -q "serving callbacks on" "$WORK/$name.out" 2>/dev/null && break; sleep 0.05; done
    ADDR[$name]=$(sed -nE 's|.*serving callbacks on http://([0-9.:]+).*|\1|p' "$WORK/$name.out")
    ADMIN[$name]=$(sed -nE 's|.* admin on http://([0-9.:]+).*|\1|p' "$WORK/$name.out")
    [[ -n ${ADDR[$name]} ]] || { cat "$WORK/$name.log" >&2; die "$name did not start"; }
}
start_callgate node cap --redis-url "redis://127.0.0.1:$NODE"
start_callgate cluster cap --redis-url "redis://127.0.0.1:${MASTERS[0]}" --redis-cluster
start_callgate list list --redis-url "redis://127.0.0.1:$NODE/1"
# paced: the same callgate and node, at a third of the round's cluster rate (open loop,
# examples/fixed_rate): the rate each master served.
ADDR[paced]=${ADDR[node]} ADMIN[paced]=${ADMIN[node]} PID[paced]=${PID[node]}
declare -A PORTS_OF=([node]=$NODE [cluster]="${MASTERS[*]}" [paced]=$NODE [list]=$NODE)
FIXED_RATE_BIN=${FIXED_RATE_BIN:-$(dirname "$CALLGATE")/examples/fixed_rate}
NAMES=(node list cluster paced)
if [[ ! -x $FIXED_RATE_BIN ]]; then
    say "no $FIXED_RATE_BIN (cargo build --release --example fixed_rate): the paced run is skipped"
    NAMES=(node list cluster)
fi
# cap.lua's requests, for fixed_rate: PATH<TAB>BODY, 100,000 users.
awk 'BEGIN { for (n = 0; n < 100000; n++) printf "/openim/callbackAfterRemoveBlackCommand\t{\"callbackCommand\":\"callbackAfterRemoveBlackCommand\",\"ownerUserID\":\"u_%d\",\"blackUserID\":\"u_1005\"}\n", n }' \
    >"$WORK/requests.tsv"

ALLOW='{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'
# probe ADDR [USER]: callgate's answer to USER's (u_probe's) unblock.
probe() {
    curl -sS --max-time 2 -X POST -H 'Content-Type: application/json' \
        --data-binary '{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"'"${2:-u_probe}"'","blackUserID":"u_1005"}' \
        "http://$1/openim/callbackAfterRemoveBlackCommand" 2>/dev/null || true
}
for name in node cluster list; do
    for _ in $(seq 100); do [[ "$(probe "${ADDR[$name]}")" == "$ALLOW" ]] && break; sleep 0.1; done
    [[ "$(probe "${ADDR[$name]}")" == "$ALLOW" ]] || { cat "$WORK/$name.log" >&2; die "$name does not allow the probe"; }
done
# A member of the list is refused (u_0 is one), so the list is really asked.
probe "${ADDR[list]}" u_0 | grep -q '"errCode":20003' || { cat "$WORK/list.log" >&2; die "list does not refuse u_0"; }

# snap PORT: "cpu_seconds scripts script_usec smismembers smismember_usec" of a Redis,
# cumulative (commands that failed not counted).
snap() {
    { redis-cli -p "$1" info cpu; redis-cli -p "$1" info commandstats; } | tr -d '\r' | awk -F'[:,=]' '
        $1 == "used_cpu_sys" || $1 == "used_cpu_user" { cpu += $2 }
        $1 == "cmdstat_evalsha" || $1 == "cmdstat_eval" || $1 == "cmdstat_smismember" {
            k = $1 == "cmdstat_smismember" ? "s" : "e"
            for (i = 2; i < NF; i += 2) {
                if ($i == "calls") calls[k] += $(i + 1)
                if ($i == "usec") usec[k] += $(i + 1)
                if ($i == "failed_calls") failed[k] += $(i + 1)
            }
        }
        END { printf "%.6f %d %d %d %d\n", cpu, calls["e"] - failed["e"], usec["e"], calls["s"] - failed["s"], usec["s"] }'
}
# decided NAME: "allowed denied" decisions of its callgate, cumulative (its /metrics).
decided() {
    curl -sS --max-time 5 "http://${ADMIN[$1]}/metrics" | awk '
        /^callgate_decisions_total/ && /outcome="allow"/ { a += $NF }
        /^callgate_decisions_total/ && /outcome="deny"/ { d += $NF }
        END { printf "%d %d\n", a, d }'
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)
# flush NAME: empties database 0 of its Redis (the caps' keys; the list's set is in database 1).
flush() {
    local port
    [[ $1 == list ]] && return
    for port in ${PORTS_OF[$1]}; do redis-cli -p "$port" flushdb >/dev/null; done
}

# run NAME SECONDS [RATE]: empties its Redis, runs wrk (or fixed_rate at RATE/s), and sets RPS, P99, N (requests), CG_US
# (callgate CPU µs a decision), SCRIPT_AVG (Redis's µs inside a script, all its Redis
# together), and per Redis port REDIS_US, SCRIPTS, SCRIPT_US and KEYS; SMIS (SMISMEMBERs
# sent, all its Redis together), SMIS_AVG (Redis's µs inside one) and DENIED (% of the
# decisions refused).
declare -A REDIS_US=() SCRIPTS=() SCRIPT_US=() KEYS=() BEFORE=()
# within COUNT: whether COUNT is the run's N requests, give or take the CONNS in flight.
within() { awk -v t="$1" -v n="$N" -v c="$CONNS" 'BEGIN { exit !(t >= n && t <= n + c) }'; }
run() {
    local name=$1 secs=$2 rate=${3:-} out="$WORK/wrk.txt" port t0 t1 total=0 usec=0 smis=0 smis_usec=0 a0 d0 a1 d1
    flush "$name"
    for port in ${PORTS_OF[$name]}; do BEFORE[$port]=$(snap "$port"); done
    read -r a0 d0 <<<"$(decided "$name")"
    t0=$(cpu_ticks "${PID[$name]}")
    if [[ -n $rate ]]; then
        timeout $((secs + 30)) "$FIXED_RATE_BIN" "${ADDR[$name]}" "$rate" "$secs" "$CONNS" "$WORK/requests.tsv" \
            >"$out" 2>&1 || { cat "$out" >&2; die "fixed_rate failed ($name)"; }
        t1=$(cpu_ticks "${PID[$name]}")
        read -r N RPS P99 <<<"$(sed -nE 's/.*sent ([0-9]+) in .* \(([0-9]+)\/s\).* p99 ([0-9.]+) .*/\1 \2 \3/p' "$out")"
    else
        timeout $((secs + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency -s "$REPO/bench/cap.lua" \
            "http://${ADDR[$name]}" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($name)"; }
        t1=$(cpu_ticks "${PID[$name]}")
        ! grep -qE 'Non-2xx|Socket errors' "$out" || { cat "$out" >&2; die "errors under load ($name)"; }
        RPS=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
        N=$(awk '/requests in/ { print $1 }' "$out")
        P99=$(awk '$1 == "99%" { v = $2; n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /[0-9]s$/) n *= 1000; printf "%.2f", n }' "$out")
    fi
    [[ -n $N && -n $RPS ]] || { cat "$out" >&2; die "no count of requests ($name)"; }
    CG_US=$(awk -v t=$((t1 - t0)) -v hz="$TICK" -v n="$N" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
    for port in ${PORTS_OF[$name]}; do
        read -r c0 s0 u0 m0 v0 <<<"${BEFORE[$port]}"
        read -r c1 s1 u1 m1 v1 <<<"$(snap "$port")"
        REDIS_US[$port]=$(awk -v a="$c0" -v b="$c1" -v n="$N" 'BEGIN { printf "%.1f", (b - a) * 1e6 / n }')
        SCRIPTS[$port]=$((s1 - s0))
        SCRIPT_US[$port]=$(awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) 'BEGIN { printf "%.1f", s ? u / s : 0 }')
        KEYS[$port]=$(redis-cli -p "$port" dbsize)
        total=$((total + s1 - s0)) usec=$((usec + u1 - u0)) smis=$((smis + m1 - m0)) smis_usec=$((smis_usec + v1 - v0))
    done
    SCRIPT_AVG=$(awk -v u="$usec" -v s="$total" 'BEGIN { printf "%.1f", s ? u / s : 0 }')
    SMIS=$smis
    SMIS_AVG=$(awk -v u="$smis_usec" -v s="$smis" 'BEGIN { printf "%.1f", s ? u / s : 0 }')
    # callgate's own count of its decisions (/metrics): all of them allowed on a cap that
    # never refuses; on the list, the members refused.
    read -r a1 d1 <<<"$(decided "$name")"
    DENIED=$(awk -v a=$((a1 - a0)) -v d=$((d1 - d0)) 'BEGIN { printf "%.1f", a + d ? d * 100 / (a + d) : 0 }')
    # One script (list: one SMISMEMBER) a decision: wrk's count and Redis's (and callgate's)
    # may differ by the requests in flight when wrk stops.
    within $((a1 - a0 + d1 - d0)) || die "$name: wrk counted $N decisions, callgate $((a1 - a0 + d1 - d0))"
    if [[ $name == list ]]; then
        within "$smis" && ((total == 0)) || die "$name: $N decisions but $smis SMISMEMBERs and $total scripts"
        # Exact only when the set holds every even user of cap.lua (LIST_IDS of 50,000 or
        # more): wrk's threads walk the users in order, so a smaller set's share of a short
        # run is not its share of the users.
        if ((LIST_IDS >= 50000)); then
            awk -v d="$DENIED" -v m="$MEMBER_SHARE" 'BEGIN { exit !(d >= m - 1 && d <= m + 1) }' ||
                die "$name: $DENIED% of the decisions refused, $MEMBER_SHARE% expected"
        else
            ((d1 > d0)) || die "$name: no decision refused"
        fi
    else
        within "$total" && ((smis == 0)) || die "$name: $N decisions but $total scripts run (and $smis SMISMEMBERs)"
        ((d1 == d0)) || die "$name: $((d1 - d0)) decisions refused"
    fi
}

# median "V1 V2 ...": the median of space-separated numbers.
median() { printf '%s\n' $1 | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "warm-up, ${WARMUP}s each; then $ROUNDS rounds of ${DURATION}s, alternating ${NAMES[*]} (wrk -t$THREADS -c$CONNS)"
run node "$WARMUP"
run list "$WARMUP"
run cluster "$WARMUP"
declare -A RPS_OF=() CG_OF=() RTOTAL_OF=() P99_OF=()
declare -A MASTER_US=() MASTER_SHARE=()
PER_SCRIPT="" LIST_RATIOS="" DENIED_OF=""
LINES=()
for round in $(seq "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        if [[ $name == paced ]]; then run paced "$DURATION" $((CLUSTER_RPS / 3)); else run "$name" "$DURATION"; fi
        [[ $name == cluster ]] && CLUSTER_RPS=$RPS
        rtotal=0 detail="" per_script=""
        scripts=0
        for port in ${PORTS_OF[$name]}; do scripts=$((scripts + SCRIPTS[$port])); done
        k=0
        for port in ${PORTS_OF[$name]}; do
            rtotal=$(awk -v a="$rtotal" -v b="${REDIS_US[$port]}" 'BEGIN { printf "%.1f", a + b }')
            if [[ $name == cluster ]]; then
                share=$(awk -v s="${SCRIPTS[$port]}" -v t="$scripts" 'BEGIN { printf "%.1f", s * 100 / t }')
                k=$((k + 1))
                detail+=$(printf '  m%d %4s us %4s%% %s keys' "$k" "${REDIS_US[$port]}" "$share" "${KEYS[$port]}")
                MASTER_US[$k]+="${REDIS_US[$port]} " MASTER_SHARE[$k]+="$share "
                per_script+=$(awk -v u="${REDIS_US[$port]}" -v n="$N" -v s="${SCRIPTS[$port]}" 'BEGIN { printf "%.1f ", u * n / s }')
            fi
        done
        [[ $name == cluster ]] && PER_SCRIPT+="$(median "$per_script") "
        RPS_OF[$name]+="$RPS " CG_OF[$name]+="$CG_US " RTOTAL_OF[$name]+="$rtotal " P99_OF[$name]+="$P99 "
        [[ $name == node ]] && NODE_RPS=$RPS
        if [[ $name == list ]]; then
            ratio=$(awk -v a="$RPS" -v b="$NODE_RPS" 'BEGIN { printf "%.2f", a / b }')
            LIST_RATIOS+="$ratio "
            DENIED_OF+="$DENIED "
            detail=$(printf '  %s SMISMEMBER/dec, %s%% refused; list/cap %s' \
                "$(awk -v s="$SMIS" -v n="$N" 'BEGIN { printf "%.3f", s / n }')" "$DENIED" "$ratio")
            what="in SMISMEMBER" avg=$SMIS_AVG
        else
            what="in scripts" avg=$SCRIPT_AVG
        fi
        line=$(printf 'round %d %-8s %7d decisions/s  p99 %6s ms  callgate %5s us/dec  redis %5s us/dec (%s %4s us)%s' \
            "$round" "$name" "$RPS" "$P99" "$CG_US" "$rtotal" "$what" "$avg" "$detail")
        LINES+=("$line")
        say "$line"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

RATIOS=$(paste -d' ' <(tr ' ' '\n' <<<"${RPS_OF[cluster]}") <(tr ' ' '\n' <<<"${RPS_OF[node]}") |
    awk 'NF == 2 && $2 > 0 { printf "%.2f ", $1 / $2 }')
cat <<EOF

========== Redis-capped decisions: one node against a 3-master cluster; a list held in Redis ==========
redis $(redis-server --version | sed -E 's/.*v=([0-9.]+).*/\1/'), $(nproc) cores; wrk -t$THREADS -c$CONNS, ${DURATION}s a run; load average before/after: $LOAD_BEFORE / $LOAD_AFTER
$(printf '%s\n' "${LINES[@]}")
(us/dec: CPU microseconds per decision; redis: all its Redis processes together (INFO cpu); in scripts:
 Redis's time inside a script a call (INFO commandstats, wall time: it grows when the process is preempted);
 m1-m3: each master's CPU per decision of the whole run, its share of the scripts run, its keys after the run;
 paced: the one node at a third of the round's cluster rate (open loop, $CONNS connections), the rate each master served;
 list: a list of $LIST_IDS IDs held in the one node, asked on every decision, no cache, no cap; in SMISMEMBER: Redis's
 time inside one a call; refused: the decisions callgate counted refused (/metrics), $MEMBER_SHARE% of cap.lua's users are in the list;
 list/cap: its decisions/s over the round's one-node cap run)
medians over $ROUNDS rounds:
  one node: $(median "${RPS_OF[node]}") decisions/s, callgate $(median "${CG_OF[node]}") us/dec, redis $(median "${RTOTAL_OF[node]}") us/dec, p99 $(median "${P99_OF[node]}") ms
$([[ -n ${RPS_OF[paced]:-} ]] && echo "  paced:    $(median "${RPS_OF[paced]}") decisions/s, callgate $(median "${CG_OF[paced]}") us/dec, redis $(median "${RTOTAL_OF[paced]}") us/dec, p99 $(median "${P99_OF[paced]}") ms")
  cluster:  $(median "${RPS_OF[cluster]}") decisions/s, callgate $(median "${CG_OF[cluster]}") us/dec, redis $(median "${RTOTAL_OF[cluster]}") us/dec, p99 $(median "${P99_OF[cluster]}") ms
            each master: $(for k in 1 2 3; do printf 'm%d %s us/dec, %s%%   ' "$k" "$(median "${MASTER_US[$k]}")" "$(median "${MASTER_SHARE[$k]}")"; done)
            a master's CPU per script it ran: $(median "$PER_SCRIPT") us (rounds: $PER_SCRIPT)
  cluster / one node, decisions/s per round: $RATIOS
  list:     $(median "${RPS_OF[list]}") decisions/s, callgate $(median "${CG_OF[list]}") us/dec, redis $(median "${RTOTAL_OF[list]}") us/dec, p99 $(median "${P99_OF[list]}") ms, refused $(median "$DENIED_OF")%
            list / cap (one node), decisions/s per round: $LIST_RATIOS(median $(median "$LIST_RATIOS"))
            the set: $LIST_IDS IDs ($SET_ENCODING), used_memory +$(awk -v b="$SET_USED" 'BEGIN { printf "%.1f", b / 1048576 }') MiB ($((SET_USED / LIST_IDS)) B an ID), MEMORY USAGE $(awk -v b="$SET_USAGE" 'BEGIN { printf "%.1f", b / 1048576 }') MiB
On this machine the three masters share the $(nproc) cores with callgate, wrk and each other, so the
cluster's throughput here cannot exceed one node's: the ratio is what cluster routing costs callgate
(and three Redis processes instead of one), not what a cluster carries. Each master runs its share of
the scripts; compare a master's CPU per script with the paced node's (the same rate): where they match,
N masters on cores of their own carry about N times one node's decisions.
EOF
