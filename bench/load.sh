#!/usr/bin/env bash
# Load test of the callgate decision service, run from anywhere inside the repo:
#
#   bash bench/load.sh
#
# 1. Throughput: callgate (shipped policies/) against a bare warp server that answers the
#    same fixed allow body without parsing or deciding (examples/bare_warp.rs). Both run in
#    the same script, alternating bare, callgate, bare, callgate, ... so that the noise of a
#    shared machine falls on both alike. wrk posts OpenIM sample callbacks (bench/openim.lua).
#    Target: callgate reaches at least 0.85 of the bare server's requests/sec. A third
#    server, callgate with `--records false`, runs in the same rotation (NOREC=1, the
#    default) to show what writing a record of every callback costs.
# 2. Hot reload: a second callgate serves a generated 10,000-rule set; a changed 10,000-rule
#    file is written next to it and renamed over it, and /v1/status is polled every 10 ms
#    until the policy version changes. Target: live in under 1000 ms from the write.
#
# Everything listens on 127.0.0.1 only, on ports the kernel picks. Every process started
# here is stopped on exit. Apart from the build, the run takes about two minutes
# (ROUNDS x 3 x DURATION seconds of wrk, plus warm-ups and the reloads).
#
# 3. Scenarios (SCENARIOS=1, the default), in the same rotation: `cap`, callgate with a rate
#    cap checked and counted on every request (in memory; target >= 0.8 of bare); `capredis`,
#    the same cap in a real redis-server started here; `tencent`, durable Tencent
#    acknowledgements (target >= 10,000/s); `tencentdec`, signed Tencent before-callbacks
#    (C2C.CallbackBeforeSendMsg) decided by rules like the shipped ones (target >= 0.9 of
#    the OpenIM decisions' req/s, round by round), and `single`, OpenIM's one-to-one message
#    callback alone on the same set, for a like-for-like ratio. After the rounds Redis is killed and `capredis`
#    is measured again: p99 with Redis down (target < 10 ms).
#
# 4. Calibration (EXTRA="500 1000 2000 3000", in ns; EXTRA= turns it off), in the same rotation:
#    bare servers that busy-wait that long per request before answering (examples/bare_warp.rs,
#    second argument). Their ratios show what a fixed extra cost per request does to the ratio
#    on this machine, and so how much work per request a server may do to reach a target;
#    the summary places callgate on that scale.
#
# 5. Against the least a hand-written gate must do (issue 19), in the same rotation:
#    examples/min_gate.rs with records (min) and without (minnorec), a Node peer written
#    the same way (bench/peers/min_gate.js) when node is installed, and a Go net/http one
#    (bench/peers/min_gate.go, built in the work dir) when go is installed; with SCENARIOS=1
#    also `mincap`, min_gate --cap: the cap scenario's rate cap written by hand, the fair
#    yardstick for `cap` (cap/min compares a capped callgate with an uncapped gate). Then
#    latency at a fixed FIXED_RATE callbacks/s (examples/fixed_rate.rs, open loop), callgate
#    against min, in FIXED_ROUNDS short alternating rounds: on a shared machine a neighbour's
#    burst sets the p99 of whichever server it lands on, so the target is judged on the median
#    of each round's own p99 ratio (a burst spoils the rounds it hits, not the verdict).
#
# 6. The status page (PAGE=1, the default), in the same rotation: `page`, callgate whose
#    GET /v1/live (all the status page reads) is fetched once a second for the whole run, as
#    an open page does. Target: the same req/s as `callgate` (the page costs nothing).
#
# 7. A baseline (BASELINE=/path/to/another/callgate, off by default), in the same rotation:
#    another build of callgate, say the commit before a change, on the same policies.
#
# Knobs (environment): ROUNDS=5 DURATION=6 WARMUP=3 THREADS=2 CONNS=32 RELOADS=5 NOREC=1 SCENARIOS=1 EXTRA
# FIXED_RATE=5000 (0: off) FIXED_ROUNDS=9 FIXED_SECONDS=3 PAGE=1 BASELINE
# PIN=0 (PIN=1: servers on CPU 0, wrk on CPU 1 with one thread; steadier on 2 cores)

set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-6}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
RELOADS=${RELOADS:-5}
PIN=${PIN:-0}
NOREC=${NOREC:-1}
PAGE=${PAGE:-1}
BASELINE=${BASELINE:-}
SCENARIOS=${SCENARIOS:-1}
EXTRA=${EXTRA-500 1000 2000 3000}
FIXED_RATE=${FIXED_RATE:-5000}
FIXED_ROUNDS=${FIXED_ROUNDS:-9}
FIXED_SECONDS=${FIXED_SECONDS:-3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
LUA="$REPO/bench/openim.lua"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CALLGATE="$TARGET_DIR/release/callgate"
BARE="$TARGET_DIR/release/examples/bare_warp"
MIN_GATE="$TARGET_DIR/release/examples/min_gate"
FIXED_RATE_BIN="$TARGET_DIR/release/examples/fixed_rate"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/callgate-load.XXXXXX")
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Give each a moment to finish gracefully, then make sure.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '[load] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- build and tools ---------------------------------------------------------------------

say "building release: callgate, examples/bare_warp and examples/min_gate"
timeout 900 cargo build --release --quiet --bin callgate --example bare_warp --example min_gate --example fixed_rate ||
    die "release build failed"

if ! command -v wrk >/dev/null 2>&1; then
    say "wrk not found; installing it with apt-get"
    (apt-get install -y wrk >/dev/null 2>&1 ||
        { apt-get update >/dev/null 2>&1 && apt-get install -y wrk >/dev/null 2>&1; }) ||
        die "cannot install wrk"
fi
command -v python3 >/dev/null 2>&1 || die "python3 is needed for the reload test"

SERVER_CPU=()
WRK_CPU=()
if [[ "$PIN" == 1 ]]; then
    SERVER_CPU=(taskset -c 0)
    WRK_CPU=(taskset -c 1)
    THREADS=1
fi

# --- helpers -----------------------------------------------------------------------------

# wait_for_line FILE PATTERN PID: prints the first line of FILE matching PATTERN, waiting up
# to 30 s; fails if PID exits first.
wait_for_line() {
    local file=$1 pattern=$2 pid=$3 line
    for _ in $(seq 600); do
        line=$(grep -m1 -- "$pattern" "$file" 2>/dev/null || true)
        if [[ -n "$line" ]]; then
            printf '%s\n' "$line"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# start_callgate NAME POLICY_DIR [FLAG...]: starts callgate, waits until it serves, and
# sets CG_PID, CG_ADDR and CG_ADMIN. Logs are JSON so the script can read them.
start_callgate() {
    local name=$1 dir=$2 line
    shift 2
    mkdir -p "$WORK/$name-data"
    "${SERVER_CPU[@]}" "${CG_BIN:-$CALLGATE}" serve \
        --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 \
        --policies "$dir" --data-dir "$WORK/$name-data" --log-format json "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" &
    CG_PID=$!
    PIDS+=("$CG_PID")
    line=$(wait_for_line "$WORK/$name.out" "serving callbacks on" "$CG_PID") || {
        cat "$WORK/$name.log" >&2
        die "$name did not start"
    }
    CG_ADDR=$(sed -E 's|.*serving callbacks on http://([0-9.:]+).*|\1|' <<<"$line")
    CG_ADMIN=$(sed -E 's|.*admin on http://([0-9.:]+).*|\1|' <<<"$line")
    say "$name: pid $CG_PID, callbacks $CG_ADDR, admin $CG_ADMIN"
}

ALLOW='{"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0}'
PROBE_BODY='{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_1001","blackUserID":"u_1005"}'

# probe ADDR: one OpenIM callback; prints the answer body.
probe() {
    curl -sS --max-time 2 -X POST \
        -H 'Content-Type: application/json; charset=utf-8' -H 'operationID: probe' \
        --data-binary "$PROBE_BODY"$'\n' \
        "http://$1/openim/callbackAfterRemoveBlackCommand" 2>/dev/null || true
}

# to_ms VALUE: wrk's latency ("850.00us", "1.23ms", "2.00s") in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n = n / 1000
        else if (v ~ /ms$/) n = n
        else if (v ~ /m$/) n = n * 60000
        else if (v ~ /s$/) n = n * 1000
        printf "%.3f", n
    }'
}

median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# cpu_ticks PID: user + system CPU time of the whole process (all threads), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

# run_wrk LABEL ADDR SECONDS [PID] [LUA]: runs wrk, keeps its output in $WORK/wrk-LABEL.txt,
# and sets RPS, P50 and P99 (ms), and CPU_US: the server's CPU time per request in µs (PID's
# user + system time over the run, divided by the requests wrk completed).
run_wrk() {
    local label=$1 addr=$2 secs=$3 pid=${4:-} lua=${5:-$LUA} out="$WORK/wrk-$1.txt" bad t0=0 t1=0 n
    [[ -n "$pid" ]] && t0=$(cpu_ticks "$pid")
    timeout $((secs + 30)) "${WRK_CPU[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency \
        -s "$lua" "http://$addr" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($label)"; }
    [[ -n "$pid" ]] && t1=$(cpu_ticks "$pid")
    RPS=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    [[ -n "$RPS" ]] || { cat "$out" >&2; die "no Requests/sec in wrk output ($label)"; }
    P50=$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")
    P99=$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")
    n=$(awk '/requests in/ { print $1 }' "$out")
    CPU_US=$(awk -v t=$((t1 - t0)) -v hz="$TICK" -v n="$n" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    bad=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")
    if [[ -n "$bad" ]] || grep -q "Socket errors" "$out"; then
        say "warning: $label: $(grep -E 'Non-2xx|Socket errors' "$out" | tr '\n' ' ')"
    fi
}

# --- 1. throughput: bare warp vs callgate ------------------------------------------------

"${SERVER_CPU[@]}" "$BARE" 127.0.0.1:0 >"$WORK/bare.out" 2>"$WORK/bare.log" &
BARE_PID=$!
PIDS+=("$BARE_PID")
line=$(wait_for_line "$WORK/bare.out" "listening on" "$BARE_PID") || {
    cat "$WORK/bare.log" >&2
    die "bare_warp did not start"
}
BARE_ADDR=$(sed -E 's|.*listening on http://([0-9.:]+).*|\1|' <<<"$line")
for _ in $(seq 200); do
    [[ "$(probe "$BARE_ADDR")" == "$ALLOW" ]] && break
    sleep 0.05
done
[[ "$(probe "$BARE_ADDR")" == "$ALLOW" ]] || die "bare_warp at $BARE_ADDR does not answer"
say "bare_warp: pid $BARE_PID, $BARE_ADDR"

# The contenders, in the order each round runs them.
NAMES=(bare callgate)
declare -A ADDR=([bare]=$BARE_ADDR) PID=([bare]=$BARE_PID)
CALIBRATION=()
for ns in $EXTRA; do
    name="bare+${ns}ns"
    "${SERVER_CPU[@]}" "$BARE" 127.0.0.1:0 "$ns" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PIDS+=("$!")
    PID[$name]=$!
    line=$(wait_for_line "$WORK/$name.out" "listening on" "${PID[$name]}") || die "$name did not start"
    ADDR[$name]=$(sed -E 's|.*listening on http://([0-9.:]+).*|\1|' <<<"$line")
    CALIBRATION+=("$name")
done
start_callgate callgate "$REPO/policies"
ADDR[callgate]=$CG_ADDR PID[callgate]=$CG_PID
if [[ "$PAGE" == 1 ]]; then
    # The same callgate with its status page open: /v1/live fetched once a second, as the
    # page does, for the whole run.
    start_callgate page "$REPO/policies"
    ADDR[page]=$CG_ADDR PID[page]=$CG_PID
    NAMES+=(page)
    (while kill -0 "${PID[page]}" 2>/dev/null; do
        curl -s -o /dev/null --max-time 2 "http://$CG_ADMIN/v1/live" || true
        sleep 1
    done) &
    PIDS+=("$!")
fi
if [[ -n "$BASELINE" ]]; then
    # Another build of callgate (say, the commit before a change), in the same rotation.
    CG_BIN=$BASELINE start_callgate baseline "$REPO/policies"
    ADDR[baseline]=$CG_ADDR PID[baseline]=$CG_PID
    NAMES+=(baseline)
fi
# start_peer NAME COMMAND...: starts a minimal gate that prints "listening on http://ADDR".
start_peer() {
    local name=$1 line
    shift
    "${SERVER_CPU[@]}" "$@" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    PIDS+=("$!")
    PID[$name]=$!
    line=$(wait_for_line "$WORK/$name.out" "listening on" "${PID[$name]}") || die "$name did not start"
    ADDR[$name]=$(sed -E 's|.*listening on http://([0-9.:]+).*|\1|' <<<"$line")
    say "$name: pid ${PID[$name]}, ${ADDR[$name]}"
}
# The least a hand-written gate must do (issue 19): parse, allowlist, regex, answer, and a
# record line to a writer thread (min) or none (minnorec); Node and Go peers written the same
# way, with records.
start_peer min "$MIN_GATE" 127.0.0.1:0 "$WORK/min-records.jsonl"
start_peer minnorec "$MIN_GATE" 127.0.0.1:0 -
NAMES+=(min minnorec)
if command -v node >/dev/null 2>&1; then
    start_peer node node "$REPO/bench/peers/min_gate.js" 0 "$WORK/node-records.jsonl"
    NAMES+=(node)
else
    say "node not installed: the Node peer is skipped"
fi
if command -v go >/dev/null 2>&1; then
    # The standard library only, no go.mod. The build cache and GOPATH live in the work dir
    # and go with it, and the caller's GOFLAGS do not apply.
    GOCACHE="$WORK/go-cache" GOPATH="$WORK/go-path" GOFLAGS= \
        go build -o "$WORK/min_gate_go" "$REPO/bench/peers/min_gate.go" >&2 ||
        die "cannot build bench/peers/min_gate.go"
    start_peer go "$WORK/min_gate_go" 127.0.0.1:0 "$WORK/go-records.jsonl"
    NAMES+=(go)
else
    say "go not installed: the Go peer is skipped"
fi
if [[ "$NOREC" == 1 ]]; then
    start_callgate norec "$REPO/policies" --records false
    ADDR[norec]=$CG_ADDR PID[norec]=$CG_PID
    NAMES+=(norec)
fi
declare -A LUA_OF=()
if [[ "$SCENARIOS" == 1 ]]; then
    command -v redis-server >/dev/null 2>&1 ||
        (apt-get install -y redis-server >/dev/null 2>&1 ||
            { apt-get update >/dev/null 2>&1 && apt-get install -y redis-server >/dev/null 2>&1; }) ||
        die "cannot install redis-server"
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.05
    done
    start_callgate cap "$REPO/bench/policies/cap"
    ADDR[cap]=$CG_ADDR PID[cap]=$CG_PID LUA_OF[cap]="$REPO/bench/cap.lua"
    start_callgate capredis "$REPO/bench/policies/cap" --redis-url "redis://127.0.0.1:$REDIS_PORT"
    ADDR[capredis]=$CG_ADDR PID[capredis]=$CG_PID LUA_OF[capredis]="$REPO/bench/cap.lua"
    # The same cap written by hand into the minimal gate, with records (issue 19's yardstick
    # for `cap`).
    start_peer mincap "$MIN_GATE" 127.0.0.1:0 "$WORK/mincap-records.jsonl" --cap
    LUA_OF[mincap]="$REPO/bench/cap.lua"
    start_callgate tencent "$REPO/policies" --tencent-app-id 1400000001
    ADDR[tencent]=$CG_ADDR PID[tencent]=$CG_PID LUA_OF[tencent]="$REPO/bench/tencent.lua"
    # Tencent before-callbacks decided: the shipped policies plus rules of the same kinds
    # (a list, a regex) on C2C.CallbackBeforeSendMsg, signed as Tencent signs them.
    mkdir -p "$WORK/tencent-policies"
    cp -r "$REPO/policies/." "$WORK/tencent-policies/"
    cp "$REPO/bench/policies/tencent/20-tencent.yaml" "$WORK/tencent-policies/"
    TC_TOKEN=load-test-token TC_TIME=$(date +%s)
    TC_SIGN=$(printf '%s%s' "$TC_TOKEN" "$TC_TIME" | sha256sum | cut -d' ' -f1)
    sed -e "s/@TIME@/$TC_TIME/" -e "s/@SIGN@/$TC_SIGN/" "$REPO/bench/tencent_before.lua" >"$WORK/tencent_before.lua"
    start_callgate tencentdec "$WORK/tencent-policies" --tencent-app-id 1400000001 \
        --tencent-token "$TC_TOKEN" --tencent-max-skew 1h
    ADDR[tencentdec]=$CG_ADDR PID[tencentdec]=$CG_PID LUA_OF[tencentdec]="$WORK/tencent_before.lua"
    TC_ANSWER=$(curl -sS --max-time 2 -X POST -H 'Content-Type: application/json' \
        --data-binary '{"CallbackCommand":"C2C.CallbackBeforeSendMsg","From_Account":"u_1001","To_Account":"u_1002"}' \
        "http://${ADDR[tencentdec]}$(sed -n 's/^wrk.path = "\(.*\)"$/\1/p' "$WORK/tencent_before.lua")")
    [[ "$TC_ANSWER" == '{"ActionStatus":"OK","ErrorCode":0,"ErrorInfo":""}' ]] ||
        die "tencentdec does not allow the bench's C2C callback: $TC_ANSWER"
    # The OpenIM callback of the same kind (a one-to-one message), on the same policy set.
    start_callgate single "$WORK/tencent-policies"
    ADDR[single]=$CG_ADDR PID[single]=$CG_PID LUA_OF[single]="$REPO/bench/openim_single.lua"
    NAMES+=(cap capredis mincap tencent tencentdec single)
fi
NAMES+=("${CALIBRATION[@]}")
for name in "${NAMES[@]}"; do
    [[ "$(probe "${ADDR[$name]}")" == "$ALLOW" ]] ||
        die "$name at ${ADDR[$name]} does not allow the probe callback: $(probe "${ADDR[$name]}")"
done

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "wrk -t$THREADS -c$CONNS, $ROUNDS rounds of ${DURATION}s each, alternating ${NAMES[*]} (PIN=$PIN)"
say "warm-up: ${WARMUP}s each; load average before: $LOAD_BEFORE"
for name in "${NAMES[@]}"; do
    run_wrk "warm-$name" "${ADDR[$name]}" "$WARMUP" "" "${LUA_OF[$name]:-$LUA}"
done

# Per contender: space-separated values, one per round.
declare -A RPS_OF=() P50_OF=() P99_OF=() CPU_OF=() RATIO_OF=()
RUN_LINES=()
for round in $(seq "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
        run_wrk "$name-$round" "${ADDR[$name]}" "$DURATION" "${PID[$name]}" "${LUA_OF[$name]:-$LUA}"
        RPS_OF[$name]+="$RPS " P50_OF[$name]+="$P50 " P99_OF[$name]+="$P99 " CPU_OF[$name]+="$CPU_US "
        [[ "$name" == bare ]] && bare_rps=$RPS
        RATIO_OF[$name]+="$(awk -v a="$RPS" -v b="$bare_rps" 'BEGIN { printf "%.3f", a / b }') "
        line=$(printf 'round %d  %-14s %9.0f req/s  p50 %7.3f ms  p99 %7.3f ms  server CPU %6.2f us/req' \
            "$round" "$name" "$RPS" "$P50" "$P99" "$CPU_US")
        RUN_LINES+=("$line")
        say "$line"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

# Every server must still answer: none died or wedged during the run.
for name in "${NAMES[@]}"; do
    [[ "$(probe "${ADDR[$name]}")" == "$ALLOW" ]] || die "$name stopped answering during the run"
done

# Latency at a fixed moderate load (FIXED_RATE/s, open loop, latency from each request's due
# time): callgate against the minimal gate, alternating, FIXED_ROUNDS rounds of
# FIXED_SECONDS each; FIXED_RATIOS keeps each round's own p99 ratio.
FIXED_LINES=()
declare -A FIXED_P50=() FIXED_P90=() FIXED_P99=()
FIXED_RATIOS=""
if [[ "$FIXED_RATE" != 0 ]]; then
    for round in $(seq "$FIXED_ROUNDS"); do
        declare -A round_p99=()
        for name in callgate min; do
            out=$(timeout $((FIXED_SECONDS + 30)) "${WRK_CPU[@]}" "$FIXED_RATE_BIN" "${ADDR[$name]}" "$FIXED_RATE" \
                "$FIXED_SECONDS" 16 "$REPO/bench/openim-requests.tsv") || die "fixed_rate failed on $name: $out"
            FIXED_LINES+=("$(printf 'round %d  %-9s %s' "$round" "$name" "$out")")
            FIXED_P50[$name]+="$(sed -E 's/.* p50 ([0-9.]+) .*/\1/' <<<"$out") "
            FIXED_P90[$name]+="$(sed -E 's/.* p90 ([0-9.]+) .*/\1/' <<<"$out") "
            round_p99[$name]=$(sed -E 's/.* p99 ([0-9.]+) .*/\1/' <<<"$out")
            FIXED_P99[$name]+="${round_p99[$name]} "
            say "${FIXED_LINES[-1]}"
        done
        FIXED_RATIOS+="$(awk -v a="${round_p99[callgate]}" -v b="${round_p99[min]}" 'BEGIN { printf "%.2f", a / b }') "
    done
fi

# Redis down: kill it and measure the Redis-capped server again (the circuit breaker answers
# per --on-error, allow by default, without calling Redis).
if [[ "$SCENARIOS" == 1 ]]; then
    kill -KILL "$REDIS_PID" 2>/dev/null || true
    wait "$REDIS_PID" 2>/dev/null || true
    run_wrk "redis-down" "${ADDR[capredis]}" "$DURATION" "${PID[capredis]}" "$REPO/bench/cap.lua"
    DOWN_RPS=$RPS DOWN_P99=$P99
    TENCENT_RECORDS=$(cat "$WORK"/tencent-data/records-*.jsonl 2>/dev/null | grep -c '"source":"tencent"' || true)
fi

# shellcheck disable=SC2086 # the values are space-separated numbers
med() { median ${1}; }
MED_BARE=$(med "${RPS_OF[bare]}")
MED_CG=$(med "${RPS_OF[callgate]}")
RATIO=$(awk -v a="$MED_CG" -v b="$MED_BARE" 'BEGIN { printf "%.3f", a / b }')
RATIO_OK=$(awk -v r="$RATIO" 'BEGIN { print (r >= 0.85) ? "MET" : "NOT MET" }')
CPU_RATIO=$(awk -v b="$(med "${CPU_OF[bare]}")" -v c="$(med "${CPU_OF[callgate]}")" 'BEGIN { printf "%.3f", b / c }')
RECORDED=$(cat "$WORK"/callgate-data/records-*.jsonl 2>/dev/null | wc -l)
ERRORS=$(grep -c '"level":"ERROR"' "$WORK/callgate.log" || true)
ERROR_KINDS=$(grep '"level":"ERROR"' "$WORK/callgate.log" | grep -o '"message":"[^"]*"' |
    sort | uniq -c | sort -rn | head -3 || true)

# Stop the throughput servers so the reload test has the machine to itself.
for name in "${NAMES[@]}"; do
    kill -TERM "${PID[$name]}" 2>/dev/null || true
    wait "${PID[$name]}" 2>/dev/null || true
done

# --- 2. hot reload of a 10,000-rule set ---------------------------------------------------

RELOAD_DIR="$WORK/reload-policies"
NEXT_DIR="$WORK/reload-next"
mkdir -p "$RELOAD_DIR/lists" "$NEXT_DIR"

cat >"$WORK/gen_rules.py" <<'PY'
"""Writes a 10,000-rule policy file with the same mix as benches/eval.rs: a third
equals/in on ID fields, a third in_list over shared 1,000-ID lists, a third regex; exact
and glob `on`; a few any/not combinators."""
import random
import sys

def users(rng, n):
    return ["u_%d" % rng.randrange(200000, 1000000) for _ in range(n)]

FAMILIES = [
    (["callbackAfterRemoveBlackCommand", "callbackBeforeAddBlackCommand"],
     ["callbackAfter*Black*", "*BlackCommand"], ["ownerUserID", "blackUserID"]),
    (["callbackBeforeSendSingleMsgCommand", "callbackAfterSendSingleMsgCommand"],
     ["callbackBeforeSend*", "*SingleMsgCommand"], ["sendID", "recvID"]),
    (["callbackBeforeSendGroupMsgCommand", "callbackAfterSendGroupMsgCommand"],
     ["*GroupMsgCommand", "callbackBefore*"], ["sendID", "groupID"]),
    (["callbackBeforeAddFriendCommand", "callbackAfterDeleteFriendCommand"],
     ["*FriendCommand"], ["fromUserID", "toUserID"]),
]
LISTS = ["banned", "vip", "partners", "staff"]
WORDS = ["relay", "notify", "ops", "billing", "audit", "sync"]

def lists(dir_):
    rng = random.Random(1)
    with open(dir_ + "/00-lists.yaml", "w") as f:
        f.write("lists:\n")
        for k, name in enumerate(LISTS):
            ids = users(rng, 1000)
            if k % 2 == 0:
                with open("%s/lists/%s.txt" % (dir_, name), "w") as lf:
                    lf.write("".join(i + "\n" for i in ids))
                f.write("  %s: { file: lists/%s.txt }\n" % (name, name))
            else:
                f.write("  %s: [%s]\n" % (name, ", ".join('"%s"' % i for i in ids)))

def value(rng, field):
    if field == "groupID":
        return str(rng.randrange(4000000000, 9000000000))
    return "u_%d" % rng.randrange(200000, 1000000)

def regex(rng, field):
    if field == "groupID":
        return "^%d[0-9]{5}$" % rng.randrange(40000, 90000)
    return rng.choice([
        "^u_%d[0-9]{2}$" % rng.randrange(2000, 10000),
        "^u_%d\\d{3}$" % rng.randrange(200, 1000),
        "^(bot|sys)_%s" % rng.choice(WORDS),
        "_%s\\d+$" % rng.choice(WORDS),
    ])

def rules(path, n, seed):
    rng = random.Random(seed)
    out = ["# generated: %d rules, revision %d\nrules:\n" % (n, seed)]
    for i in range(n):
        cmds, globs, fields = rng.choice(FAMILIES)
        out.append("  - id: r%05d\n" % i)
        roll = rng.randrange(20)
        if roll < 3:
            out.append('    on: ["%s"]\n' % rng.choice(globs))
        elif roll < 19:
            out.append("    on: [%s]\n" % rng.choice(cmds))
        field, other = rng.choice(fields), rng.choice(fields)
        out.append("    when:\n")
        kind = i % 3
        if kind == 0:
            out.append('      %s: { equals: "%s" }\n' % (field, value(rng, field)))
        elif kind == 1:
            f = other if field == "groupID" else field
            out.append("      %s: { in_list: %s }\n" % (f, rng.choice(LISTS[:3])))
        else:
            out.append("      %s: { regex: '%s' }\n" % (field, regex(rng, field)))
        if rng.randrange(25) == 0 and other != "groupID":
            out.append("      not: { %s: { in_list: staff } }\n" % other)
        if rng.randrange(2):
            out.append("    decision: allow\n")
        else:
            out.append('    decision: deny\n    error: { code: %d, message: "refused by policy" }\n'
                       % (20000 + i % 1000))
    with open(path, "w") as f:
        f.write("".join(out))

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "lists":
        lists(sys.argv[2])
    else:
        rules(sys.argv[2], 10000, int(sys.argv[3]))
PY

python3 "$WORK/gen_rules.py" lists "$RELOAD_DIR"
python3 "$WORK/gen_rules.py" rules "$RELOAD_DIR/10-rules.yaml" 1
for k in $(seq "$RELOADS"); do
    python3 "$WORK/gen_rules.py" rules "$NEXT_DIR/rev-$k.yaml" $((k + 1))
done
say "generated a 10,000-rule set ($(wc -c <"$RELOAD_DIR/10-rules.yaml") bytes of rules)"

start_callgate reload "$RELOAD_DIR"

cat >"$WORK/reload.py" <<'PY'
"""For each prepared revision: write it beside the live file, rename it over the live file,
and poll /v1/status every 10 ms until policy_version changes. Prints one line per reload:
`RELOAD <ms from start of write to live> <ms from rename to live> <rules> <ok>`."""
import json
import os
import sys
import time
import urllib.request

admin, live, revisions = sys.argv[1], sys.argv[2], sys.argv[3:]

def status():
    with urllib.request.urlopen("http://%s/v1/status" % admin, timeout=2) as r:
        return json.load(r)

tmp = os.path.join(os.path.dirname(live), ".10-rules.yaml.tmp")
for rev in revisions:
    with open(rev, "rb") as f:
        text = f.read()
    time.sleep(1.0)  # let the previous reload and its file events settle
    before = status()["policy_version"]
    t_write = time.monotonic()
    with open(tmp, "wb") as f:
        f.write(text)
    os.rename(tmp, live)
    t_rename = time.monotonic()
    deadline = t_rename + 10.0
    while True:
        s = status()
        if s["policy_version"] != before:
            t_live = time.monotonic()
            break
        if time.monotonic() > deadline:
            print("RELOAD timeout timeout %s %s" % (s["rules"], s["last_reload"]["ok"]), flush=True)
            sys.exit(1)
        time.sleep(0.010)
    print("RELOAD %.1f %.1f %d %s" % ((t_live - t_write) * 1e3, (t_live - t_rename) * 1e3,
                                      s["rules"], s["last_reload"]["ok"]), flush=True)
PY

RELOAD_MS=()
RELOAD_LINES=()
while read -r tag ms rename_ms rules ok; do
    [[ "$tag" == RELOAD ]] || continue
    [[ "$ms" == timeout ]] && die "reload did not go live within 10 s (rules $rules, ok $ok)"
    [[ "$rules" == 10000 && "$ok" == True ]] || die "reload loaded $rules rules, ok=$ok"
    RELOAD_MS+=("$ms")
    line=$(printf 'reload %d  write->live %7.1f ms  (rename->live %7.1f ms)' "${#RELOAD_MS[@]}" "$ms" "$rename_ms")
    RELOAD_LINES+=("$line")
    say "$line"
done < <(timeout 120 python3 "$WORK/reload.py" "$CG_ADMIN" "$RELOAD_DIR/10-rules.yaml" \
    $(for k in $(seq "$RELOADS"); do printf '%s ' "$NEXT_DIR/rev-$k.yaml"; done))
[[ ${#RELOAD_MS[@]} == "$RELOADS" ]] || die "only ${#RELOAD_MS[@]} of $RELOADS reloads measured"

MED_RELOAD=$(median "${RELOAD_MS[@]}")
MAX_RELOAD=$(printf '%s\n' "${RELOAD_MS[@]}" | sort -g | tail -1)
RELOAD_OK=$(awk -v m="$MAX_RELOAD" 'BEGIN { print (m < 1000) ? "MET" : "NOT MET" }')
# callgate logs how long each reload's load took (the first load logs no took_ms).
LOAD_TOOK=$(grep -o '"took_ms":[0-9]*' "$WORK/reload.log" | cut -d: -f2 | tr '\n' ' ' || true)

# --- summary -----------------------------------------------------------------------------

{
    echo
    echo "==================== callgate load summary ===================="
    echo "machine: $(nproc) CPUs; wrk -t$THREADS -c$CONNS, ${DURATION}s per run, PIN=$PIN"
    echo "body mix: callbackAfterRemoveBlack x4, callbackBeforeAddBlack x2,"
    echo "          callbackBeforeSendSingleMsg x1, callbackBeforeSendGroupMsg x1"
    echo "policies: $REPO/policies (shipped)"
    printf '%s\n' "${RUN_LINES[@]}"
    echo "load average before/after: $LOAD_BEFORE / $LOAD_AFTER"
    printf '%-14s %10s %10s %10s %14s %18s\n' server "req/s" "p50 ms" "p99 ms" "CPU us/req" "req/s vs bare"
    for name in "${NAMES[@]}"; do
        printf '%-14s %10.0f %10.3f %10.3f %14.2f %18s\n' "$name" "$(med "${RPS_OF[$name]}")" \
            "$(med "${P50_OF[$name]}")" "$(med "${P99_OF[$name]}")" "$(med "${CPU_OF[$name]}")" \
            "$(med "${RATIO_OF[$name]}")"
    done
    echo "(medians over rounds; the last column is the median of each round's own ratio)"
    echo "per-round ratio callgate/bare: ${RATIO_OF[callgate]}"
    printf 'ratio callgate/bare of median req/s: %s   target >= 0.85: %s\n' "$RATIO" "$RATIO_OK"
    printf 'CPU per request, bare/callgate: %s (the throughput ratio if both were CPU-bound alone)\n' "$CPU_RATIO"
    # The absolute target proposed in the issue notes, for when the ratio says more about
    # the machine than about callgate (see the calibration below).
    printf 'absolute: callgate %.0f decisions/s at p99 %.3f ms   proposed target >= 50,000/s at p99 < 5 ms: %s\n' \
        "$MED_CG" "$(med "${P99_OF[callgate]}")" \
        "$(awk -v r="$MED_CG" -v p="$(med "${P99_OF[callgate]}")" 'BEGIN { print (r >= 50000 && p < 5) ? "MET" : "NOT MET" }')"
    echo "callgate wrote $RECORDED records; $ERRORS error lines in its log"
    if [[ -n "$BASELINE" ]]; then
        printf 'baseline (%s): median %.0f req/s, ratio %s, CPU %.2f us/req; callgate: ratio %s, CPU %.2f us/req\n' \
            "$BASELINE" "$(med "${RPS_OF[baseline]}")" "$(med "${RATIO_OF[baseline]}")" "$(med "${CPU_OF[baseline]}")" \
            "$(med "${RATIO_OF[callgate]}")" "$(med "${CPU_OF[callgate]}")"
    fi
    if [[ "$PAGE" == 1 ]]; then
        printf 'status page open (GET /v1/live each second): median %.0f req/s, ratio %s, CPU %.2f us/req; callgate without it: ratio %s, CPU %.2f us/req\n' \
            "$(med "${RPS_OF[page]}")" "$(med "${RATIO_OF[page]}")" "$(med "${CPU_OF[page]}")" \
            "$(med "${RATIO_OF[callgate]}")" "$(med "${CPU_OF[callgate]}")"
    fi
    if [[ ${#CALIBRATION[@]} -gt 0 ]]; then
        echo "---- calibration: a bare server that does N ns more work per request ----"
        for name in "${CALIBRATION[@]}"; do
            printf '%-14s median ratio %s  CPU %6.2f us/req\n' "$name" "$(med "${RATIO_OF[$name]}")" "$(med "${CPU_OF[$name]}")"
        done
        printf 'callgate       median ratio %s  CPU %6.2f us/req\n' "$(med "${RATIO_OF[callgate]}")" "$(med "${CPU_OF[callgate]}")"
        echo "(a server reaches a ratio only if its own extra work per request is below the N whose ratio is that)"
    fi
    if [[ -n "$ERROR_KINDS" ]]; then sed 's/^/  /' <<<"$ERROR_KINDS"; fi
    if [[ "$SCENARIOS" == 1 ]]; then
        echo "---- scenarios (same rounds; ratios are each round's own against bare) ----"
        printf 'cap (in memory, every request): median ratio %s   target >= 0.8: %s\n' "$(med "${RATIO_OF[cap]}")" \
            "$(awk -v r="$(med "${RATIO_OF[cap]}")" 'BEGIN { print (r >= 0.8) ? "MET" : "NOT MET" }')"
        printf 'cap (redis, every request): median %.0f req/s, ratio %s, p50 %.3f ms, p99 %.3f ms\n' \
            "$(med "${RPS_OF[capredis]}")" "$(med "${RATIO_OF[capredis]}")" "$(med "${P50_OF[capredis]}")" "$(med "${P99_OF[capredis]}")"
        printf 'redis down: %.0f req/s, p99 %.3f ms   target p99 < 10 ms: %s\n' "$DOWN_RPS" "$DOWN_P99" \
            "$(awk -v p="$DOWN_P99" 'BEGIN { print (p < 10) ? "MET" : "NOT MET" }')"
        printf 'durable Tencent acks: median %.0f /s (fsynced before each ack), %s records   target >= 10,000/s: %s\n' \
            "$(med "${RPS_OF[tencent]}")" "$TENCENT_RECORDS" \
            "$(awk -v r="$(med "${RPS_OF[tencent]}")" 'BEGIN { print (r >= 10000) ? "MET" : "NOT MET" }')"
        TC_RATIOS=$(paste -d' ' <(tr ' ' '\n' <<<"${RPS_OF[tencentdec]}") <(tr ' ' '\n' <<<"${RPS_OF[callgate]}") |
            awk 'NF == 2 && $2 > 0 { printf "%.3f ", $1 / $2 }')
        printf 'Tencent before-callback decisions (C2C, signed): median %.0f req/s, p99 %.3f ms; per round vs OpenIM decisions (callgate): %s\n' \
            "$(med "${RPS_OF[tencentdec]}")" "$(med "${P99_OF[tencentdec]}")" "$TC_RATIOS"
        printf 'Tencent/OpenIM decisions: median ratio %s   target >= 0.9: %s\n' "$(med "$TC_RATIOS")" \
            "$(awk -v r="$(med "$TC_RATIOS")" 'BEGIN { print (r >= 0.9) ? "MET" : "NOT MET" }')"
        TC_SINGLE=$(paste -d' ' <(tr ' ' '\n' <<<"${RPS_OF[tencentdec]}") <(tr ' ' '\n' <<<"${RPS_OF[single]}") |
            awk 'NF == 2 && $2 > 0 { printf "%.3f ", $1 / $2 }')
        printf 'like for like, Tencent C2C / OpenIM callbackBeforeSendSingleMsgCommand (%.0f req/s, CPU %.2f us/req): median ratio %s (rounds: %s)   target >= 0.9: %s\n' \
            "$(med "${RPS_OF[single]}")" "$(med "${CPU_OF[single]}")" "$(med "$TC_SINGLE")" "$TC_SINGLE" \
            "$(awk -v r="$(med "$TC_SINGLE")" 'BEGIN { print (r >= 0.9) ? "MET" : "NOT MET" }')"
        printf 'recording cost on OpenIM decisions (norec vs callgate req/s): %s\n' \
            "$(awk -v a="$(med "${RPS_OF[callgate]}")" -v b="$(med "${RPS_OF[norec]:-0}")" 'BEGIN { if (b > 0) printf "%.1f%% (target <= 20%%)", (1 - a / b) * 100; else print "n/a (NOREC=0)" }')"
    fi
    echo "---- against the minimal gate (examples/min_gate.rs), round by round ----"
    # per_round A B: each round's req/s of A over B's, then their median.
    per_round() {
        paste -d' ' <(tr ' ' '\n' <<<"${RPS_OF[$1]:-}") <(tr ' ' '\n' <<<"${RPS_OF[$2]:-}") |
            awk 'NF == 2 && $2 > 0 { printf "%.3f ", $1 / $2 }'
    }
    # cap/min is issue 19's line (a capped callgate against an uncapped gate); cap/mincap
    # holds it to a gate that runs the same cap, and mincap/min is what that cap costs it.
    for pair in "callgate min 0.95" "norec minnorec 0.95" "cap min 0.93" "cap mincap 0.93" "mincap min -" \
        "node min -" "go min -" "min bare -"; do
        read -r a b target <<<"$pair"
        [[ -n "${RPS_OF[$a]:-}" && -n "${RPS_OF[$b]:-}" ]] || continue
        ratios=$(per_round "$a" "$b")
        verdict=""
        [[ "$target" != "-" ]] && verdict="   target >= $target: $(awk -v r="$(med "$ratios")" -v t="$target" 'BEGIN { print (r >= t) ? "MET" : "NOT MET" }')"
        printf '%-9s / %-9s median %s  (rounds: %s)%s\n' "$a" "$b" "$(med "$ratios")" "$ratios" "$verdict"
    done
    printf 'p99 at full load: callgate %.3f ms, min %.3f ms\n' "$(med "${P99_OF[callgate]}")" "$(med "${P99_OF[min]}")"
    if [[ ${#FIXED_LINES[@]} -gt 0 ]]; then
        echo "---- latency at a fixed $FIXED_RATE callbacks/s (examples/fixed_rate.rs, 16 connections) ----"
        printf '%s\n' "${FIXED_LINES[@]}"
        for q in 50 90 99; do
            declare -n of="FIXED_P$q"
            printf 'p%s callgate %s ms, min %s ms (medians over rounds)\n' "$q" "$(med "${of[callgate]}")" "$(med "${of[min]}")"
            unset -n of
        done
        FIXED_RATIO=$(med "$FIXED_RATIOS")
        printf 'p99 callgate/min per round: %s median %s   target <= 1.2: %s\n' "$FIXED_RATIOS" "$FIXED_RATIO" \
            "$(awk -v r="$FIXED_RATIO" 'BEGIN { print (r <= 1.2) ? "MET" : "NOT MET" }')"
    fi
    echo "---- hot reload, 10,000 rules, write-and-rename ----"
    printf '%s\n' "${RELOAD_LINES[@]}"
    echo "load_dir inside callgate (took_ms, from its log): ${LOAD_TOOK:-n/a}"
    printf 'reload write->live: median %.1f ms, max %.1f ms   target < 1000 ms: %s\n' \
        "$MED_RELOAD" "$MAX_RELOAD" "$RELOAD_OK"
    echo "================================================================"
}
