#!/usr/bin/env bash
# Measures peer proxies beside styx-proxy in one `styx-proxy bench` run and, with
# --tools, with iperf3 and wrk as well.
#
# Installs HAProxy, nginx with its stream module and socat from Debian, starts each on its
# own loopback port forwarding to the bench backend, runs the bench once with every peer as
# --peer, prints the table, and stops what it started. Needs root for apt-get (when a
# package is missing) and a Linux machine. Not part of CI.
#
# With --tools (or TOOLS=1) a second part follows. iperf3 and wrk from Debian measure
# direct, styx-proxy (splice and copy engines), HAProxy and nginx stream on loopback, with
# an `iperf3 -s` and a one-worker nginx HTTP server as backends, and python3 prints the
# tables. See run_tools for what each figure is.
#
# Usage: bench/compare-peers.sh [--tools] [STYX_PROXY_EXE] [-- BENCH_FLAGS...]
#   STYX_PROXY_EXE defaults to a release build made with cargo, in $CARGO_TARGET_DIR
#   or ./target. BENCH_FLAGS go to `styx-proxy bench`, for example --quick or --json.
#
# Ports: the bench backend 127.0.0.1:19000 (the bench's default), HAProxy 19101,
# nginx 19102, socat 19103. Override with BACKEND_PORT and PEER_PORT_BASE (the peers get
# PEER_PORT_BASE + 1, + 2, + 3).
#
# Ports of the --tools part count from TOOLS_PORT_BASE (default 19200). iperf3 -s listens
# on + 0 and the HTTP backend on + 10. The paths to them through styx-splice, styx-copy,
# HAProxy and nginx listen on + 1 to + 4 (iperf3) and + 11 to + 14 (HTTP). TOOLS_SECONDS
# (default 3) is the length of each iperf3 and wrk run, in whole seconds.
set -euo pipefail

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
backend_port="${BACKEND_PORT:-19000}"
port_base="${PEER_PORT_BASE:-19100}"
haproxy_port=$((port_base + 1))
nginx_port=$((port_base + 2))
socat_port=$((port_base + 3))
backend="127.0.0.1:${backend_port}"

tools="${TOOLS:-0}"
tools_port_base="${TOOLS_PORT_BASE:-19200}"
tools_seconds="${TOOLS_SECONDS:-3}"

log() { echo "compare-peers: $*" >&2; }

while (($# > 0)) && [[ "$1" == --?* ]]; do
    case "$1" in
        --tools) tools=1 ;;
        *)
            log "unknown option $1; expected --tools, STYX_PROXY_EXE or -- BENCH_FLAGS"
            exit 2
            ;;
    esac
    shift
done

proxy_exe=""
if (($# > 0)) && [[ "$1" != "--" ]]; then
    proxy_exe="$1"
    shift
fi
if (($# > 0)) && [[ "$1" == "--" ]]; then
    shift
fi
bench_flags=("$@")

if [[ "$tools" != 0 && "$tools" != 1 ]]; then
    log "invalid TOOLS=${tools}; expected 0 or 1"
    exit 2
fi
if [[ ! "$tools_port_base" =~ ^[1-9][0-9]*$ ]] || ((tools_port_base > 65535 - 14)); then
    log "invalid TOOLS_PORT_BASE=${tools_port_base}; expected a port from 1 to 65521, as the part uses it up to + 14"
    exit 2
fi
if [[ ! "$tools_seconds" =~ ^[1-9][0-9]*$ ]]; then
    # iperf3 3.12 reads -t as a whole number of seconds.
    log "invalid TOOLS_SECONDS=${tools_seconds}; expected a whole number of seconds, 1 or more"
    exit 2
fi

install_packages() {
    local wanted=(haproxy nginx libnginx-mod-stream socat)
    if [[ "$tools" == 1 ]]; then
        wanted+=(iperf3 wrk)
    fi

    local missing=()
    local package
    for package in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return

    log "installing ${missing[*]}"
    # Keep the packages' own services (nginx on port 80, HAProxy, the iperf3 daemon) from
    # starting, because this script runs every peer itself, on loopback only.
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

port_accepts() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Starts the command after NAME and PORTS in the background, logging to
# $work_dir/NAME.log, and waits until it listens on every port in PORTS (a
# space-separated list). Sets started_pid.
start_listener() {
    local name="$1" ports="$2"
    shift 2
    local log_file="$work_dir/${name}.log"

    # Another process on one of these ports would accept the readiness probe while the new
    # one fails to bind, and its figures would be measured under this name.
    local port
    for port in $ports; do
        if port_accepts "$port"; then
            log "127.0.0.1:${port} (for ${name}) is already in use; stop its owner or move the ports with PEER_PORT_BASE, BACKEND_PORT or TOOLS_PORT_BASE"
            exit 1
        fi
    done

    "$@" >"$log_file" 2>&1 &
    started_pid=$!
    started_pids+=("$started_pid")

    for port in $ports; do
        wait_for_port "$name" "$port" "$log_file"
    done
}

# Waits until 127.0.0.1:$2 accepts connections while started_pid runs, or fails naming
# peer $1 and its log.
wait_for_port() {
    local name="$1" port="$2" log_file="$3"
    for _ in $(seq 100); do
        if ! kill -0 "$started_pid" 2>/dev/null; then
            log "$name exited before it listened on 127.0.0.1:${port}; its log:"
            cat "$log_file" >&2 || true
            exit 1
        fi
        if port_accepts "$port"; then
            return
        fi
        sleep 0.1
    done
    log "$name did not listen on 127.0.0.1:${port} within 10 s; its log:"
    cat "$log_file" >&2 || true
    exit 1
}

# Starts one HAProxy that forwards 127.0.0.1:PORT to UPSTREAM for every PORT UPSTREAM pair
# after NAME. Sets started_pid.
start_haproxy() {
    local name="$1"
    shift
    local config="$work_dir/${name}.cfg"

    # Splice is forced in both directions, as the fastest HAProxy TCP setup on Linux.
    cat >"$config" <<EOF
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
EOF
    local ports=""
    while (($# >= 2)); do
        cat >>"$config" <<EOF

frontend port_$1
    bind 127.0.0.1:$1
    default_backend upstream_$1

backend upstream_$1
    server upstream $2
EOF
        ports+=" $1"
        shift 2
    done

    start_listener "$name" "$ports" haproxy -db -f "$config"
}

# Starts one nginx with a stream server forwarding 127.0.0.1:PORT to UPSTREAM for every
# PORT UPSTREAM pair after NAME. Sets started_pid to the master's PID.
start_nginx_stream() {
    local name="$1"
    shift
    local config="$work_dir/${name}.conf"

    # One worker per core, as HAProxy and styx-proxy use every core by default.
    cat >"$config" <<EOF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes auto;
worker_rlimit_nofile 12000;
pid ${work_dir}/${name}.pid;
error_log ${work_dir}/${name}-error.log;

events {
    worker_connections 10000;
}

stream {
EOF
    local ports=""
    while (($# >= 2)); do
        cat >>"$config" <<EOF
    server {
        listen 127.0.0.1:$1;
        proxy_pass $2;
    }
EOF
        ports+=" $1"
        shift 2
    done
    echo "}" >>"$config"

    start_listener "$name" "$ports" nginx -p "$work_dir" -c "$config"
}

start_socat() {
    start_listener socat "$socat_port" \
        socat "TCP-LISTEN:${socat_port},bind=127.0.0.1,reuseaddr,fork,backlog=1024" \
        "TCP:${backend},nodelay"
}

run_bench() {
    start_haproxy haproxy "$haproxy_port" "$backend"
    local haproxy_pid="$started_pid"
    start_nginx_stream nginx "$nginx_port" "$backend"
    local nginx_pid="$started_pid"
    start_socat

    local peer_args=(
        --backend "$backend"
        --peer "haproxy=127.0.0.1:${haproxy_port}" --peer-pid "haproxy=${haproxy_pid}"
        --peer "nginx=127.0.0.1:${nginx_port}"
        --peer "socat=127.0.0.1:${socat_port}"
    )
    # socat forks one process per connection, so its main PID shows neither the CPU nor the
    # memory of the forwarding: socat is given no --peer-pid and gets no such figures.
    # nginx's work happens in its workers, so they are the processes to watch. The master
    # listens before it forks them, so they may not exist yet when the port accepts.
    local nginx_workers=""
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
    local worker
    for worker in $nginx_workers; do
        peer_args+=(--peer-pid "nginx=${worker}")
    done

    log "haproxy $(haproxy -v | head -n1 | awk '{print $3}'), $(nginx -v 2>&1 | sed 's/.*: //'), $(socat -V | sed -n 's/^socat version \([^ ]*\).*/socat \1/p')"
    log "running: $proxy_exe bench ${peer_args[*]} ${bench_flags[*]}"
    "$proxy_exe" bench "${peer_args[@]}" "${bench_flags[@]}"
}

# Starts the HTTP backend that wrk talks to: one nginx worker that returns a fixed
# 200 "ok\n" for every request.
start_http_backend() {
    local port="$1"
    local config="$work_dir/http-backend.conf"

    # keepalive_requests is raised from nginx's default of 1,000, so the keep-alive
    # latency run stays on one connection. At the default the backend closes it every
    # 1,000 requests, and wrk's reconnect lands in the figures. The temp paths keep nginx
    # out of its system folders.
    cat >"$config" <<EOF
daemon off;
worker_processes 1;
worker_rlimit_nofile 12000;
pid ${work_dir}/http-backend.pid;
error_log ${work_dir}/http-backend-error.log;

events {
    worker_connections 10000;
}

http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path ${work_dir}/http-temp/body;
    proxy_temp_path ${work_dir}/http-temp/proxy;
    fastcgi_temp_path ${work_dir}/http-temp/fastcgi;
    uwsgi_temp_path ${work_dir}/http-temp/uwsgi;
    scgi_temp_path ${work_dir}/http-temp/scgi;

    server {
        listen 127.0.0.1:${port};
        location / {
            return 200 "ok\n";
        }
    }
}
EOF
    mkdir -p "$work_dir/http-temp"
    start_listener http-backend "$port" nginx -p "$work_dir" -c "$config"
}

# Runs one iperf3 or wrk command, its output to OUTPUT, its stderr to OUTPUT.stderr and,
# when it fails, its exit status to OUTPUT.status. A failed run does not stop the script:
# the tables leave it out of the median and list it.
run_tool() {
    local output="$1"
    shift
    # A hard stop well past the run's length, so a proxy that stalls a run cannot hang
    # the script. timeout exits 124 when it stops the command.
    local status=0
    timeout "$((tools_seconds + 30))" "$@" >"$output" 2>"${output}.stderr" || status=$?
    if ((status != 0)); then
        echo "$status" >"${output}.status"
    fi
}

# Measures direct, styx-splice, styx-copy, HAProxy and nginx stream with iperf3 and wrk,
# and prints three tables:
# - iperf3 -P 1 and -P 8, median of 5 runs, receiver Gbit/s (10^9 bit/s), as iperf3's
#   --json reports in end.sum_received;
# - wrk -t1 -c64 with "Connection: close", so each request opens a new connection,
#   median of 3 runs, requests/s;
# - wrk -t1 -c1 --latency on one kept-alive connection, median of 3 runs of p50 and p99.
# Each round runs every path once and starts at a different path, so load that comes and
# goes on a shared machine does not bias one path.
run_tools() {
    local base="$tools_port_base"
    local iperf3_backend="127.0.0.1:${base}"
    local http_backend="127.0.0.1:$((base + 10))"
    local paths=(direct styx-splice styx-copy haproxy nginx)
    local iperf3_ports=("$base" $((base + 1)) $((base + 2)) $((base + 3)) $((base + 4)))
    local http_ports=($((base + 10)) $((base + 11)) $((base + 12)) $((base + 13)) $((base + 14)))
    local iperf3_runs=5 wrk_runs=3

    start_listener iperf3-server "$base" iperf3 -s -B 127.0.0.1 -p "$base"
    start_http_backend $((base + 10))

    local engine
    for engine in splice copy; do
        local offset=1
        [[ "$engine" == copy ]] && offset=2
        start_listener "styx-${engine}-iperf3" $((base + offset)) \
            "$proxy_exe" run --listen "127.0.0.1:$((base + offset))" \
            --upstream "$iperf3_backend" --engine "$engine"
        start_listener "styx-${engine}-http" $((base + 10 + offset)) \
            "$proxy_exe" run --listen "127.0.0.1:$((base + 10 + offset))" \
            --upstream "$http_backend" --engine "$engine"
    done
    start_haproxy haproxy-tools $((base + 3)) "$iperf3_backend" $((base + 13)) "$http_backend"
    start_nginx_stream nginx-tools $((base + 4)) "$iperf3_backend" $((base + 14)) "$http_backend"

    local results="$work_dir/tools"
    mkdir -p "$results"
    cat /proc/loadavg >"$results/loadavg-before"
    local started_at="$SECONDS"
    local count=${#paths[@]}
    local round step index path streams

    log "iperf3: ${iperf3_runs} rounds of ${count} paths, -P 1 and -P 8, ${tools_seconds} s each"
    for ((round = 0; round < iperf3_runs; round++)); do
        for ((step = 0; step < count; step++)); do
            index=$(((round + step) % count))
            path="${paths[index]}"
            for streams in 1 8; do
                run_tool "$results/iperf3-P${streams}-${path}-${round}.json" \
                    iperf3 -c 127.0.0.1 -p "${iperf3_ports[index]}" \
                    -P "$streams" -t "$tools_seconds" --json
            done
        done
    done

    log "wrk: ${wrk_runs} rounds of ${count} paths, new connections then keep-alive latency, ${tools_seconds} s each"
    for ((round = 0; round < wrk_runs; round++)); do
        for ((step = 0; step < count; step++)); do
            index=$(((round + step) % count))
            path="${paths[index]}"
            run_tool "$results/wrk-close-${path}-${round}.txt" \
                wrk -t1 -c64 -d "${tools_seconds}s" -H 'Connection: close' \
                "http://127.0.0.1:${http_ports[index]}/"
            run_tool "$results/wrk-latency-${path}-${round}.txt" \
                wrk -t1 -c1 -d "${tools_seconds}s" --latency \
                "http://127.0.0.1:${http_ports[index]}/"
        done
    done
    cat /proc/loadavg >"$results/loadavg-after"
    echo $((SECONDS - started_at)) >"$results/elapsed-seconds"

    # wrk 4.1.0 prints its version with its usage and exits 1.
    local versions wrk_banner
    wrk_banner="$(wrk -v 2>&1 || true)"
    versions="$(iperf3 --version | awk 'NR == 1 {print "iperf3 " $2}'), $(awk 'NR == 1 {print "wrk " $2}' <<<"$wrk_banner")"
    python3 - "$results" "$tools_seconds" "$iperf3_runs" "$wrk_runs" "$versions" "${paths[@]}" <<'PYTHON'
"""Prints the tables of the --tools part from the iperf3 and wrk outputs in a folder."""

import json
import re
import statistics
import sys
from pathlib import Path

results = Path(sys.argv[1])
seconds = sys.argv[2]
iperf3_runs = int(sys.argv[3])
wrk_runs = int(sys.argv[4])
versions = sys.argv[5]
paths = sys.argv[6:]
failures = []

# wrk prints durations with these suffixes, for example "19.00us" or "1.23ms".
MICROSECONDS_PER_UNIT = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def describe_failure(file):
    """Returns why the run that wrote FILE failed, from its exit status, stderr or output."""
    status_file = file.with_name(file.name + ".status")
    status = status_file.read_text().strip() if status_file.exists() else None
    if status == "124":
        return f"timed out after {int(seconds) + 30} s"
    for text in (file.with_name(file.name + ".stderr").read_text(), file.read_text()):
        lines = text.strip().splitlines()
        if lines:
            return lines[0] if status is None else f"exit status {status}: {lines[0]}"
    return "no output" if status is None else f"exit status {status}, no output"


def iperf3_gbits(path, streams, run):
    """Returns the receiver Gbit/s of one iperf3 run, or None after noting its failure."""
    file = results / f"iperf3-P{streams}-{path}-{run}.json"
    text = file.read_text()
    try:
        report = json.loads(text)
    except json.JSONDecodeError:
        failures.append(f"iperf3 -P {streams} {path} run {run + 1}: {describe_failure(file)}")
        return None
    # iperf3 3.12 exits 0 with --json even when the test fails, and names the failure here.
    if "error" in report:
        failures.append(f"iperf3 -P {streams} {path} run {run + 1}: {report['error']}")
        return None
    return report["end"]["sum_received"]["bits_per_second"] / 1e9


def wrk_file(kind, path, run):
    return results / f"wrk-{kind}-{path}-{run}.txt"


def wrk_errors(text):
    """Returns the socket errors plus the non-2xx/3xx responses that wrk counted."""
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors:
        errors += sum(int(count) for count in socket_errors.groups())
    bad_status = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if bad_status:
        errors += int(bad_status.group(1))
    return errors


def wrk_requests_per_second(path, run):
    """Returns requests/s and error count of one wrk run, or None after noting its failure."""
    file = wrk_file("close", path, run)
    text = file.read_text()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if rate is None:
        failures.append(f"wrk -c64 {path} run {run + 1}: {describe_failure(file)}")
        return None
    return float(rate.group(1)), wrk_errors(text)


def wrk_percentiles(path, run):
    """Returns p50 and p99 in µs and error count of one wrk --latency run, or None."""
    file = wrk_file("latency", path, run)
    text = file.read_text()
    found = {}
    for percent, value, unit in re.findall(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        found[percent] = float(value) * MICROSECONDS_PER_UNIT[unit]
    if len(found) != 2:
        failures.append(f"wrk -c1 --latency {path} run {run + 1}: {describe_failure(file)}")
        return None
    return found["50"], found["99"], wrk_errors(text)


def median_or_none(values):
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def number(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(value, direct):
    if value is None or not direct:
        return "-"
    return f"{value / direct:.2f}x"


print()
print(f"{versions}; loopback; {seconds} s per run")
print(f"load average (1, 5, 15 min) before: {' '.join((results / 'loadavg-before').read_text().split()[:3])}")
print()

print(f"iperf3 -c 127.0.0.1 -P N -t {seconds}: receiver Gbit/s, median of {iperf3_runs} runs")
print(f"{'path':<12} {'P1 Gbit/s':>10} {'vs direct':>10} {'P8 Gbit/s':>10} {'vs direct':>10}")
throughput = {
    (path, streams): median_or_none(iperf3_gbits(path, streams, run) for run in range(iperf3_runs))
    for path in paths
    for streams in (1, 8)
}
for path in paths:
    single, eight = throughput[(path, 1)], throughput[(path, 8)]
    print(
        f"{path:<12} {number(single, 2):>10} {ratio(single, throughput[('direct', 1)]):>10}"
        f" {number(eight, 2):>10} {ratio(eight, throughput[('direct', 8)]):>10}"
    )
print()

print(
    f"wrk -t1 -c64 -d {seconds}s -H 'Connection: close': a new connection per request,"
    f" median of {wrk_runs} runs"
)
print(f"{'path':<12} {'requests/s':>10} {'vs direct':>10} {'errors':>8}")
rates = {}
for path in paths:
    runs = [wrk_requests_per_second(path, run) for run in range(wrk_runs)]
    rates[path] = median_or_none(run[0] if run else None for run in runs)
    errors = sum(run[1] for run in runs if run)
    print(f"{path:<12} {number(rates[path], 0):>10} {ratio(rates[path], rates['direct']):>10} {errors:>8}")
print()

print(f"wrk -t1 -c1 -d {seconds}s --latency: one kept-alive connection, median of {wrk_runs} runs")
print(f"{'path':<12} {'p50 µs':>8} {'p99 µs':>8} {'p50 added':>10} {'errors':>8}")
latency = {}
for path in paths:
    runs = [wrk_percentiles(path, run) for run in range(wrk_runs)]
    p50 = median_or_none(run[0] if run else None for run in runs)
    p99 = median_or_none(run[1] if run else None for run in runs)
    errors = sum(run[2] for run in runs if run)
    latency[path] = p50
    direct = latency["direct"]
    added = "-" if p50 is None or direct is None else f"{p50 - direct:+.1f}"
    print(f"{path:<12} {number(p50, 1):>8} {number(p99, 1):>8} {added:>10} {errors:>8}")
print()

print(
    "errors: wrk's socket errors plus non-2xx/3xx responses, over all runs;"
    " p50 added: p50 minus direct's p50, in µs"
)
print(f"load average (1, 5, 15 min) after: {' '.join((results / 'loadavg-after').read_text().split()[:3])}")
print(f"the iperf3 and wrk runs took {(results / 'elapsed-seconds').read_text().strip()} s")

if failures:
    print(file=sys.stderr)
    print(f"compare-peers: {len(failures)} tool run(s) failed; their medians leave them out:", file=sys.stderr)
    for failure in failures:
        print(f"  {failure}", file=sys.stderr)
    sys.exit(1)
PYTHON
}

install_packages
build_proxy
run_bench
if [[ "$tools" == 1 ]]; then
    run_tools
fi
