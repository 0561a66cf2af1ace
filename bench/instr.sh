#!/usr/bin/env bash
# Instructions per callback, counted by valgrind's callgrind: what a request costs in CPU work,
# repeatable on a shared machine where wall-clock figures are not (load.sh's throughput moves by
# ±10 % from run to run here; these counts by well under 1 %). Run from anywhere in the repo:
#
#   bash bench/instr.sh                 # every contender below
#   bash bench/instr.sh single tencentdec
#
# Each contender is started under callgrind; REQUESTS callbacks warm it up, its counters are
# zeroed, REQUESTS more are sent at RATE/s (examples/fixed_rate.rs, so no request waits on
# another), the counters are dumped, and their total divided by the requests sent is printed,
# with the callgrind file to read with `callgrind_annotate --inclusive=yes FILE`.
#
# Contenders: callgate (shipped policies, records on), norec (records off), cap (a rate cap
# on every callback, 5,000 owners, as load.sh's cap), min and minnorec
# (examples/min_gate.rs with and without records: the least a hand-written gate does, issue
# 19), mincap (min_gate --cap, records on: cap's rate cap written by hand, on cap's
# requests), single (OpenIM's one-to-one message callback) and tencentdec (Tencent's
# C2C.CallbackBeforeSendMsg, signed), the last two on the same policy set (issue 16).
#
# Instructions are not time (a cache miss or a syscall costs more than its count says, and the
# kernel's share is not counted), so the ratios here guide work; load.sh's are the targets.
# Totals move by a few per cent between runs of the same build, with how work happens to batch
# (the record writer's group commits, the runtime's wake-ups); the cost of a function the
# request calls (`callgrind_annotate --inclusive=yes`, e.g. `record::decided_line`) does not.
# valgrind has no SHA instructions, so a Tencent Sign is hashed in software here, and counted
# at several times what it costs on a CPU with them.
#
# Knobs: REQUESTS=2000 RATE=400 CONNS=4. Needs valgrind and a release build (made here).

set -euo pipefail

REQUESTS=${REQUESTS:-2000}
RATE=${RATE:-400}
CONNS=${CONNS:-4}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
CALLGATE="$TARGET_DIR/release/callgate"
MIN_GATE="$TARGET_DIR/release/examples/min_gate"
FIXED_RATE="$TARGET_DIR/release/examples/fixed_rate"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/callgate-instr.XXXXXX")
PIDS=()

say() { printf '== %s\n' "$*" >&2; }
die() {
    printf 'instr.sh: %s\n' "$*" >&2
    exit 1
}
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

command -v valgrind >/dev/null 2>&1 || die "valgrind is not installed (apt-get install valgrind)"
say "building (release)"
cargo build --release --quiet --bin callgate --example min_gate --example fixed_rate

# The policy set of single and tencentdec: the shipped one plus rules of the same kinds (a
# list, a regex) on Tencent's C2C message callback, as load.sh's.
mkdir -p "$WORK/tencent-policies"
cp -r "$REPO/policies/." "$WORK/tencent-policies/"
cp "$REPO/bench/policies/tencent/20-tencent.yaml" "$WORK/tencent-policies/"

# Request files (PATH<TAB>BODY per line), as fixed_rate reads them.
for i in $(seq 0 4999); do
    printf '/openim/callbackAfterRemoveBlackCommand\t{"callbackCommand":"callbackAfterRemoveBlackCommand","ownerUserID":"u_%d","blackUserID":"u_1005"}\n' "$i"
done >"$WORK/cap.tsv"
grep -P '^/openim/callbackBeforeSendSingleMsgCommand\t' bench/openim-requests.tsv | head -1 >"$WORK/single.tsv"
TC_TOKEN=instr-token
TC_TIME=$(date +%s)
TC_SIGN=$(printf '%s%s' "$TC_TOKEN" "$TC_TIME" | sha256sum | cut -d' ' -f1)
TC_BODY=$(sed -n "s/^wrk.body = '\(.*\)'$/\1/p" bench/tencent_before.lua | sed 's/\\\\/\\/g')
TC_PATH=$(sed -n 's/^wrk.path = "\(.*\)"$/\1/p' bench/tencent_before.lua | sed -e "s/@TIME@/$TC_TIME/" -e "s/@SIGN@/$TC_SIGN/")
printf '%s\t%s\n' "$TC_PATH" "$TC_BODY" >"$WORK/tencentdec.tsv"

# contender NAME: sets CMD (the server's command line) and REQS (its requests file).
contender() {
    local serve=("$CALLGATE" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$WORK/$1-data")
    REQS=$REPO/bench/openim-requests.tsv
    case $1 in
    callgate) CMD=("${serve[@]}" --policies policies) ;;
    norec) CMD=("${serve[@]}" --policies policies --records false) ;;
    cap) CMD=("${serve[@]}" --policies "$REPO/bench/policies/cap") REQS=$WORK/cap.tsv ;;
    min) CMD=("$MIN_GATE" 127.0.0.1:0 "$WORK/min-records.jsonl") ;;
    minnorec) CMD=("$MIN_GATE" 127.0.0.1:0 -) ;;
    mincap) CMD=("$MIN_GATE" 127.0.0.1:0 "$WORK/mincap-records.jsonl" --cap) REQS=$WORK/cap.tsv ;;
    single) CMD=("${serve[@]}" --policies "$WORK/tencent-policies") REQS=$WORK/single.tsv ;;
    tencentdec)
        CMD=("${serve[@]}" --policies "$WORK/tencent-policies" --tencent-app-id 1400000001
            --tencent-token "$TC_TOKEN" --tencent-max-skew 1h)
        REQS=$WORK/tencentdec.tsv
        ;;
    *) die "unknown contender $1 (callgate norec cap min minnorec mincap single tencentdec)" ;;
    esac
}

# measure NAME: prints "NAME  instructions/request  file".
measure() {
    local name=$1 out addr pid line sent
    contender "$name"
    out=$WORK/$name.cg
    valgrind --tool=callgrind --callgrind-out-file="$out" "${CMD[@]}" >"$WORK/$name.out" 2>"$WORK/$name.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 1200); do
        line=$(grep -m1 -E 'serving callbacks on|listening on' "$WORK/$name.out" 2>/dev/null || true)
        [[ -n "$line" ]] && break
        kill -0 "$pid" 2>/dev/null || { cat "$WORK/$name.log" >&2; die "$name exited"; }
        sleep 0.05
    done
    [[ -n "$line" ]] || die "$name did not start in 60 s"
    addr=$(sed -E 's|.*(serving callbacks on\|listening on) http://([0-9.:]+).*|\2|' <<<"$line")
    local seconds
    seconds=$(awk -v n="$REQUESTS" -v r="$RATE" 'BEGIN { printf "%.3f", n / r }')
    "$FIXED_RATE" "$addr" "$RATE" "$seconds" "$CONNS" "$REQS" >"$WORK/$name.warm" ||
        die "$name: warm-up failed: $(cat "$WORK/$name.warm")"
    callgrind_control -z "$pid" >/dev/null 2>&1
    "$FIXED_RATE" "$addr" "$RATE" "$seconds" "$CONNS" "$REQS" >"$WORK/$name.run" ||
        die "$name: run failed: $(cat "$WORK/$name.run")"
    grep -q ', 0 errors' "$WORK/$name.run" || die "$name: errors: $(cat "$WORK/$name.run")"
    callgrind_control -d "$pid" >/dev/null 2>&1
    sent=$(sed -E 's/^fixed_rate sent ([0-9]+) .*/\1/' "$WORK/$name.run")
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    # The dump made by callgrind_control -d is the file with a numbered suffix.
    local dump
    dump=$(ls -t "$out".* 2>/dev/null | head -1)
    [[ -n "$dump" ]] || die "$name: no callgrind dump"
    awk -v n="$sent" -v name="$name" -v f="$dump" \
        '/^summary:|^totals:/ { printf "%-10s %9.0f instructions/request  (%d requests; %s)\n", name, $2 / n, n, f; exit }' "$dump"
}

NAMES=("$@")
((${#NAMES[@]})) || NAMES=(callgate norec cap min minnorec mincap single tencentdec)
for name in "${NAMES[@]}"; do
    measure "$name"
done
say "callgrind files kept in $WORK"
PIDS=()
