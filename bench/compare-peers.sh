#!/usr/bin/env bash
# Measures peer proxies beside styx-proxy in one `styx-proxy bench` run.
#
# Installs HAProxy, nginx with its stream module and socat from Debian, starts each on its
# own loopback port forwarding to the bench backend, runs the bench once with every peer as
# --peer, prints the table, and stops what it started. Needs root for apt-get (when a
# package is missing) and a Linux machine. Not part of CI.
#
# Usage: bench/compare-peers.sh [STYX_PROXY_EXE] [-- BENCH_FLAGS...]
#   STYX_PROXY_EXE defaults to a release build made with cargo, in $CARGO_TARGET_DIR
#   or ./target. BENCH_FLAGS go to `styx-proxy bench`, for example --quick or --json.
#
# Ports: the bench backend 127.0.0.1:19000 (the bench's default), HAProxy 19101,
# nginx 19102, socat 19103. Override with BACKEND_PORT and PEER_PORT_BASE (the peers get
# PEER_PORT_BASE + 1, + 2, + 3).
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
backend_port="${BACKEND_PORT:-19000}"
port_base="${PEER_PORT_BASE:-19100}"
haproxy_port=$((port_base + 1))
nginx_port=$((port_base + 2))
socat_port=$((port_base + 3))
backend="127.0.0.1:${backend_port}"

proxy_exe=""
if (($# > 0)) && [[ "$1" != "--" ]]; then
    proxy_exe="$1"
    shift
fi
if (($# > 0)) && [[ "$1" == "--" ]]; then
    shift
fi
bench_flags=("$@")

log() { echo "compare-peers: $*" >&2; }

install_packages() {
    local missing=()
    local package
    for package in haproxy nginx libnginx-mod-stream socat; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return

    log "installing ${missing[*]}"
    # Keep the packages' own services (nginx on port 80, HAProxy) from starting: this
    # script runs every peer itself, on loopback only.
    local own_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=yes
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [[ -n "$own_policy" ]] && rm -f /usr/sbin/policy-rc.d
    return 0
}

build_proxy() {
    if [[ -n "$proxy_exe" ]]; then
        return
    fi
    log "building styx-proxy (release)"
    (cd "$repo_root" && cargo build --release -q -p styx-proxy)
    proxy_exe="${CARGO_TARGET_DIR:-$repo_root/target}/release/styx-proxy"
}

work_dir="$(mktemp -d -t styx-compare-peers.XXXXXX)"
started_pids=()

stop_peers() {
    local pid
    for pid in "${started_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started_pids[@]}"; do
        # Bounded wait: kill whatever is still there after 5 s.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work_dir"
}
trap stop_peers EXIT
trap 'exit 130' INT TERM

# Waits until 127.0.0.1:$2 accepts connections, or fails naming peer $1 and its log.
wait_for_port() {
    local name="$1" port="$2" log_file="$3"
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
            return
        fi
        sleep 0.1
    done
    log "$name did not listen on 127.0.0.1:${port} within 10 s; its log:"
    cat "$log_file" >&2 || true
    exit 1
}

start_haproxy() {
    # Splice is forced in both directions, as the fastest HAProxy TCP setup on Linux.
    cat >"$work_dir/haproxy.cfg" <<EOF
global
    # Above the 2,000 connections of idle-kib; each takes two descriptors.
    maxconn 5000

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option splice-request
    option splice-response

frontend bench
    bind 127.0.0.1:${haproxy_port}
    default_backend bench_backend

backend bench_backend
    server bench ${backend}
EOF
    haproxy -db -f "$work_dir/haproxy.cfg" >"$work_dir/haproxy.log" 2>&1 &
    haproxy_pid=$!
    started_pids+=("$haproxy_pid")
    wait_for_port haproxy "$haproxy_port" "$work_dir/haproxy.log"
}

start_nginx() {
    # One worker per core, as HAProxy and styx-proxy use every core by default.
    cat >"$work_dir/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes auto;
worker_rlimit_nofile 12000;
pid ${work_dir}/nginx.pid;
error_log ${work_dir}/nginx-error.log;

events {
    worker_connections 10000;
}

stream {
    server {
        listen 127.0.0.1:${nginx_port};
        proxy_pass ${backend};
    }
}
EOF
    nginx -p "$work_dir" -c "$work_dir/nginx.conf" >"$work_dir/nginx.log" 2>&1 &
    nginx_pid=$!
    started_pids+=("$nginx_pid")
    wait_for_port nginx "$nginx_port" "$work_dir/nginx.log"
}

start_socat() {
    socat "TCP-LISTEN:${socat_port},bind=127.0.0.1,reuseaddr,fork,backlog=1024" \
        "TCP:${backend},nodelay" >"$work_dir/socat.log" 2>&1 &
    socat_pid=$!
    started_pids+=("$socat_pid")
    wait_for_port socat "$socat_port" "$work_dir/socat.log"
}

install_packages
build_proxy
start_haproxy
start_nginx
start_socat

peer_args=(
    --backend "$backend"
    --peer "haproxy=127.0.0.1:${haproxy_port}" --peer-pid "haproxy=${haproxy_pid}"
    --peer "nginx=127.0.0.1:${nginx_port}"
    --peer "socat=127.0.0.1:${socat_port}"
)
# socat forks one process per connection, so its main PID shows neither the CPU nor the
# memory of the forwarding: socat is given no --peer-pid and gets no such figures.
# nginx's work happens in its workers, so they are the processes to watch. The master
# listens before it forks them, so they may not exist yet when the port accepts.
nginx_workers=""
for _ in $(seq 50); do
    nginx_workers="$(pgrep -P "$nginx_pid" || true)"
    [[ -n "$nginx_workers" ]] && break
    sleep 0.1
done
if [[ -z "$nginx_workers" ]]; then
    log "nginx started no worker within 5 s; its log:"
    cat "$work_dir/nginx.log" "$work_dir/nginx-error.log" >&2 || true
    exit 1
fi
for worker in $nginx_workers; do
    peer_args+=(--peer-pid "nginx=${worker}")
done

log "haproxy $(haproxy -v | head -n1 | awk '{print $3}'), $(nginx -v 2>&1 | sed 's/.*: //'), $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p')"
log "running: $proxy_exe bench ${peer_args[*]} ${bench_flags[*]}"
"$proxy_exe" bench "${peer_args[@]}" "${bench_flags[@]}"
