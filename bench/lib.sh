# bench/lib.sh — what more than one bench script needs; sourced, never run.

# callgate_binary [PATH]: PATH, else the repository's release build, else its debug build;
# exits when none is there.
callgate_binary() {
    local bin=${1:-}
    if [[ -z $bin ]]; then
        bin=$REPO/target/release/callgate
        [[ -x $bin ]] || bin=$REPO/target/debug/callgate
    fi
    [[ -x $bin ]] || { echo "no callgate binary at $bin: build one, or pass its path" >&2; exit 1; }
    echo "$bin"
}

# free_port: a port free on 127.0.0.1 just now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
