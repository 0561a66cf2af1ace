#!/usr/bin/env bash
# Soak test of callgate, run from anywhere inside the repo:
#
#   bash bench/soak.sh                  # 10 minutes of load
#   SOAK_SECONDS=60 bash bench/soak.sh  # a short run
#
# 1. Builds release (callgate and examples/soak.rs), writes a policy set with the driver
#    (`soak write-policies`: an in_list allow from a list file, equals denies, a regex deny, a
#    dry-run rule, two rate caps), and starts `callgate serve` on 127.0.0.1 with random ports,
#    records rotating at 8 MiB, and a Tencent app ID and token (signed callbacks).
# 2. The driver (`soak run`) measures the maximum throughput for CALIBRATE_SECONDS, then drives
#    SOAK_SECONDS of load at SOAK_FRACTION of it, at a fixed rate over SOAK_WORKERS workers:
#    ~80% valid OpenIM callbacks (the shared samples, and crafted bodies whose answer the
#    driver knows), ~10% invalid, ~10% hostile (random bytes, bad UTF-8, 10,000-deep nesting,
#    huge numbers, 100 KB strings, odd Unicode IDs, path traversal, long queries, signed and
#    badly signed Tencent callbacks). Every answer is checked byte for byte. Every second it
#    rewrites the policy directory (two revisions with the same answers, by write-and-rename)
#    and polls /v1/status until the new version is live; every 30 s it samples the server's
#    VmRSS and the record files' total size, which callgate's own retention
#    (--record-max-total-bytes, 32 MiB) must keep within its limit.
# 3. Stops the server with SIGTERM and checks that it exits cleanly and logged no panic and
#    no error.
#
# Target: zero wrong answers, zero 5xx, zero transport errors and hangs, reloads live, RSS
# flat (end within max(20%, 30 MB) of the value 60 s into the load). Exit 0 on PASS.
#
# Only 127.0.0.1 is ever targeted. The run is bounded in time (the driver stops at its
# deadline; `timeout` backs it up) and in requests (SOAK_MAX_REQUESTS). Every process started
# here is stopped on exit, and the work directory is removed (SOAK_KEEP=1 keeps it, with the
# server's log).
#
# Knobs (environment): SOAK_SECONDS=600 CALIBRATE_SECONDS=10 SOAK_FRACTION=0.7 SOAK_WORKERS=64
# SOAK_MAX_REQUESTS=20000000 SOAK_POOL_IDLE_SECONDS=5 (how long the driver keeps idle
# connections; callgate closes them after --idle-timeout, 120 s; 90 is reqwest's and Go's default)
# SOAK_KEEP=0 SOAK_REDIS=0 (SOAK_REDIS=1: rate caps and the record stream in a real
# redis-server started here, so the soak also covers the shared-state path; the answers
# must be the same as in memory)

set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
CALIBRATE_SECONDS=${CALIBRATE_SECONDS:-10}
SOAK_FRACTION=${SOAK_FRACTION:-0.7}
SOAK_WORKERS=${SOAK_WORKERS:-64}
SOAK_MAX_REQUESTS=${SOAK_MAX_REQUESTS:-20000000}
SOAK_POOL_IDLE_SECONDS=${SOAK_POOL_IDLE_SECONDS:-5}
SOAK_KEEP=${SOAK_KEEP:-0}
SOAK_REDIS=${SOAK_REDIS:-0}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
CALLGATE="$REPO/target/release/callgate"
DRIVER="$REPO/target/release/examples/soak"
APP_ID=1400000001
TOKEN="soak-$(od -An -tx8 -N8 /dev/urandom | tr -d ' \n')"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/callgate-soak.XXXXXX")
SERVER_PID=
DRIVER_PID=
REDIS_PID=

cleanup() {
    local pid
    for pid in "$DRIVER_PID" "$SERVER_PID" "$REDIS_PID"; do
        [[ -n "$pid" ]] || continue
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$SOAK_KEEP" == 1 ]]; then
        say "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '[soak.sh] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# --- build, policies, server -------------------------------------------------------------

say "source: $(git rev-parse --short HEAD 2>/dev/null || echo '?') with $(git --no-optional-locks status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | wc -l) changed files under src/ and Cargo.*"
say "building release: callgate and examples/soak"
timeout 1800 cargo build --release --quiet --bin callgate --example soak || die "release build failed"

POLICIES="$WORK/policies"
DATA="$WORK/data"
RECORD_LIMIT=33554432
"$DRIVER" write-policies "$POLICIES"
"$CALLGATE" validate --policies "$POLICIES" >&2 || die "the soak policy set does not validate"

REDIS_ARGS=()
if [[ "$SOAK_REDIS" == 1 ]]; then
    command -v redis-server >/dev/null 2>&1 || die "SOAK_REDIS=1 needs redis-server (apt-get install -y redis-server)"
    REDIS_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 100); do
        redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
        sleep 0.05
    done
    REDIS_ARGS=(--redis-url "redis://127.0.0.1:$REDIS_PORT")
    say "redis-server pid $REDIS_PID on 127.0.0.1:$REDIS_PORT: caps and the record stream are there"
fi

"$CALLGATE" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "${REDIS_ARGS[@]}" \
    --policies "$POLICIES" --data-dir "$DATA" --record-max-bytes 8388608 \
    --record-max-total-bytes "$RECORD_LIMIT" --tencent-app-id "$APP_ID" --tencent-token "$TOKEN" --log-format json \
    >"$WORK/server.out" 2>"$WORK/server.log" &
SERVER_PID=$!

line=
for _ in $(seq 600); do
    line=$(grep -m1 -- "serving callbacks on" "$WORK/server.out" 2>/dev/null || true)
    [[ -n "$line" ]] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.05
done
[[ -n "$line" ]] || { cat "$WORK/server.log" >&2; die "callgate did not start"; }
BASE=$(sed -E 's|.*serving callbacks on (http://127\.0\.0\.1:[0-9]+).*|\1|' <<<"$line")
ADMIN=$(sed -E 's|.*admin on (http://127\.0\.0\.1:[0-9]+).*|\1|' <<<"$line")
[[ "$BASE" == http://127.0.0.1:* && "$ADMIN" == http://127.0.0.1:* ]] || die "cannot read addresses from: $line"
say "callgate pid $SERVER_PID: callbacks $BASE, admin $ADMIN"
say "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"

# --- the soak ----------------------------------------------------------------------------

set +e
timeout $((SOAK_SECONDS + CALIBRATE_SECONDS + 300)) "$DRIVER" run \
    --base "$BASE" --admin "$ADMIN" --pid "$SERVER_PID" \
    --policies "$POLICIES" --data-dir "$DATA" \
    --tencent-app-id "$APP_ID" --tencent-token "$TOKEN" \
    --seconds "$SOAK_SECONDS" --calibrate-seconds "$CALIBRATE_SECONDS" \
    --fraction "$SOAK_FRACTION" --workers "$SOAK_WORKERS" --max-requests "$SOAK_MAX_REQUESTS" \
    --pool-idle-seconds "$SOAK_POOL_IDLE_SECONDS" --record-max-total-bytes "$RECORD_LIMIT" &
DRIVER_PID=$!
wait "$DRIVER_PID"
DRIVER_RC=$?
DRIVER_PID=
set -e

# --- the server after the soak -----------------------------------------------------------

say "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
SERVER_RC=gone
if kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID"
    for _ in $(seq 200); do
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        SERVER_RC="still running 20 s after SIGTERM"
    else
        set +e
        wait "$SERVER_PID"
        SERVER_RC=$?
        set -e
    fi
    SERVER_PID=
fi

LOG="$WORK/server.log"
PANICS=$(grep -ci 'panic' "$LOG" || true)
ERRORS=$(grep -c '"level":"ERROR"' "$LOG" || true)
WARNS=$(grep -c '"level":"WARN"' "$LOG" || true)
{
    echo "---- server ----"
    echo "exit after SIGTERM: $SERVER_RC; log: $(wc -l <"$LOG") lines, $PANICS mentioning panic, $ERRORS ERROR, $WARNS WARN"
    echo "WARN reasons (bad requests are logged by design):"
    grep '"level":"WARN"' "$LOG" | grep -o '"reason":"[a-z_]*"' | sort | uniq -c | sort -rn | sed 's/^/  /' || true
    grep '"level":"WARN"' "$LOG" | grep -v '"reason"' | grep -o '"message":"[^"]\{0,120\}' |
        sort | uniq -c | sort -rn | head -5 | sed 's/^/  /' || true
    if [[ "$ERRORS" != 0 || "$PANICS" != 0 ]]; then
        echo "first ERROR / panic lines:"
        grep -i -m5 -e '"level":"ERROR"' -e panic "$LOG" | cut -c1-400 | sed 's/^/  /'
    fi
    echo "records left in the data directory: $(ls "$DATA" | wc -l) files, $(du -sh "$DATA" | cut -f1)"
    if [[ -n "$REDIS_PID" ]]; then
        echo "redis: $(redis-cli -p "$REDIS_PORT" XLEN callgate:records 2>/dev/null || echo '?') entries in callgate:records (capped), $(redis-cli -p "$REDIS_PORT" DBSIZE 2>/dev/null || echo '?') keys"
    fi
    if [[ "$DRIVER_RC" == 0 && "$SERVER_RC" == 0 && "$PANICS" == 0 && "$ERRORS" == 0 ]]; then
        echo "SOAK: PASS (driver verdict PASS, clean exit, no panic, no error logged)"
    else
        echo "SOAK: FAIL (driver exit $DRIVER_RC, server exit $SERVER_RC, $PANICS panic lines, $ERRORS error lines)"
    fi
}
[[ "$DRIVER_RC" == 0 && "$SERVER_RC" == 0 && "$PANICS" == 0 && "$ERRORS" == 0 ]]
