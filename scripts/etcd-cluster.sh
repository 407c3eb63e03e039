#!/usr/bin/env bash
# Starts or stops a 3-node etcd cluster on 127.0.0.1 for manual testing and
# benchmarks of eskv's etcd backend. (`cargo test -p eskv-etcd` does not need
# it: its tests start and stop their own clusters.)
#
#   scripts/etcd-cluster.sh start DIR   # data dirs, logs, PIDs under DIR
#   export ETCD_ENDPOINTS="$(cat DIR/ETCD_ENDPOINTS)"
#   scripts/etcd-cluster.sh stop DIR    # kills the nodes by their PIDs
#
# Client ports are ETCD_BASE_PORT+1..3 (default 23791-23793), peer ports
# ETCD_BASE_PORT+11..13 (23801-23803). Installs etcd-server and
# protobuf-compiler with apt-get when etcd is missing.
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd="$1"
dir="$2"
base="${ETCD_BASE_PORT:-23790}"
nodes=(n1 n2 n3)

health() { # port -> 0 when the member reports a leader
    local port="$1" reply
    { exec 3<>"/dev/tcp/127.0.0.1/$port"; } 2>/dev/null || return 1
    printf 'GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' >&3
    reply="$(timeout 2 cat <&3 || true)"
    exec 3<&- 3>&-
    [[ "$reply" == *'"health":"true"'* ]]
}

stop() {
    local pidfile
    for pidfile in "$dir"/*.pid; do
        [ -f "$pidfile" ] || continue
        kill -9 "$(cat "$pidfile")" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

start() {
    if ! command -v etcd >/dev/null 2>&1; then
        echo "etcd-cluster: installing etcd-server and protobuf-compiler" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server protobuf-compiler >/dev/null
    fi
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    stop # leftovers from an earlier run
    local initial="" endpoints="" i
    for i in 1 2 3; do
        initial+="${initial:+,}n$i=http://127.0.0.1:$((base + 10 + i))"
        endpoints+="${endpoints:+,}127.0.0.1:$((base + i))"
    done
    for i in 1 2 3; do
        local client="http://127.0.0.1:$((base + i))" peer="http://127.0.0.1:$((base + 10 + i))"
        etcd --name "n$i" --data-dir "$dir/n$i.etcd" \
            --listen-client-urls "$client" --advertise-client-urls "$client" \
            --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
            --initial-cluster "$initial" --initial-cluster-token "eskv-$base" \
            --initial-cluster-state new --logger zap --log-level warn \
            >"$dir/n$i.log" 2>&1 </dev/null &
        echo $! >"$dir/n$i.pid"
    done
    echo "$endpoints" >"$dir/ETCD_ENDPOINTS"
    local deadline=$((SECONDS + 30))
    for i in 1 2 3; do
        until health $((base + i)); do
            if [ $SECONDS -ge $deadline ] || ! kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
                echo "etcd-cluster: n$i did not become healthy; log tail:" >&2
                tail -n 20 "$dir/n$i.log" >&2 || true
                stop
                exit 1
            fi
            sleep 0.1
        done
    done
    echo "etcd-cluster: healthy at $endpoints (PIDs in $dir/*.pid)"
}

case "$cmd" in
    start) start ;;
    stop) stop; echo "etcd-cluster: stopped" ;;
    *) usage ;;
esac
