#!/usr/bin/env bash
# Load benchmark of termsgate against a bare Pingora pass-through and against nginx doing
# termsgate's job, all on loopback in front of the same nginx upstream (docs/performance.md).
#
#   bash benches/load/run.sh
#
# Environment knobs (defaults in brackets):
#   ROUNDS [5]        alternating wrk rounds per target (the median is reported)
#   DURATION [5s]     length of one wrk run
#   CONNECTIONS [32]  wrk / oha connections
#   WORKERS [nproc]   worker threads of both Pingora proxies and worker processes of nginx-terms
#   RATE_SECONDS [6]  length of each fixed-rate oha run
#   RATE_ROUNDS [3]   alternating fixed-rate rounds per target (the median is reported)
#   KEEP=1            keep the scratch directory (configs, logs, raw outputs)
#   INSTALL_OHA=0     do not build oha when it is missing (skip the fixed-rate section)
#   PER_REQUEST=0     skip measuring CPU time and system calls per request of each target
#   CPU_ROUNDS [3]    alternating 4 s runs per target for the CPU time per request (median)
#
# Writes benches/load/results.md and benches/load/results.svg.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-32}
WORKERS=${WORKERS:-$(nproc)}
RATE_SECONDS=${RATE_SECONDS:-6}
RATE_ROUNDS=${RATE_ROUNDS:-3}
KEEP=${KEEP:-}
INSTALL_OHA=${INSTALL_OHA:-1}
PER_REQUEST=${PER_REQUEST:-1}
CPU_ROUNDS=${CPU_ROUNDS:-3}

# The one API key of the benchmark (a fixed test value, not a secret).
TOKEN=tg_bench_0123456789abcdef0123456789abcdef
REQ_PATH=/api/v1/items
TARGETS=(bare nginx-terms termsgate)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
APT_UPDATED=
# apt_need COMMAND PACKAGE: installs PACKAGE from Debian unless COMMAND is already there.
apt_need() {
    if command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; then
        return
    fi
    log "installing $2 (Debian package)"
    if [ -z "$APT_UPDATED" ]; then
        apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

apt_need nginx nginx
apt_need wrk wrk
apt_need curl curl
apt_need python3 python3
apt_need cmake cmake # pingora's libz-ng-sys needs it on a fresh machine
if [ "$PER_REQUEST" = 1 ]; then
    apt_need strace strace || log "strace could not be installed: no system calls per request"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# oha corrects for coordinated omission at a fixed rate; it comes from crates.io and is built
# once (a few minutes on 2 cores). Without it, the fixed-rate section is skipped and says so.
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v oha >/dev/null 2>&1 && [ "$INSTALL_OHA" = 1 ]; then
    log "building oha from crates.io (cargo install oha --locked; first run only)"
    cargo install oha --locked >&2 || log "oha could not be built: no fixed-rate latency"
fi
OHA=$(command -v oha || true)

# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------
log "building termsgate and the passthrough example (release)"
(cd "$ROOT" && cargo build --release --bin termsgate --example passthrough >&2)
TERMSGATE_BIN=$ROOT/target/release/termsgate
BARE_BIN=$ROOT/target/release/examples/passthrough

# ---------------------------------------------------------------------------------------------
# Scratch directory, processes and cleanup
# ---------------------------------------------------------------------------------------------
WORKDIR=$(mktemp -d /tmp/termsgate-load.XXXXXX)
# Logs go to their own subdirectory: termsgate watches its config's directory for changes, and
# access-log writes next to the config would wake its file watcher on every write.
mkdir -p "$WORKDIR/tmp" "$WORKDIR/logs"
chmod 755 "$WORKDIR" # nginx workers run as nobody and must reach the temp dirs
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        # INT is a fast shutdown for nginx and for Pingora (whose TERM would drain first).
        kill -INT "$pid" 2>/dev/null || true
    done
    # Give them 5 s to exit, then kill what is left, so cleanup can never hang.
    local deadline=$((SECONDS + 5))
    for pid in "${PIDS[@]}"; do
        while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "$KEEP" ]; then
        log "scratch directory kept: $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Distinct free loopback ports: bind port 0 for all of them at once, then release them.
read -r UPSTREAM_PORT BARE_PORT TERMS_PORT GATE_PORT ADMIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')
declare -A PORT=([bare]=$BARE_PORT [nginx-terms]=$TERMS_PORT [termsgate]=$GATE_PORT)

# fill TEMPLATE OUTPUT: replaces the @NAME@ placeholders of the templates.
fill() {
    sed -e "s|@WORKDIR@|$WORKDIR|g" \
        -e "s|@WORKERS@|$WORKERS|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
        -e "s|@PORT@|$3|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" \
        -e "s|@TOKEN@|$TOKEN|g" \
        -e "s|@TOKEN_SHA256@|$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)|g" \
        "$1" >"$2"
}

fill "$HERE/nginx-upstream.conf.in" "$WORKDIR/upstream.conf" "$UPSTREAM_PORT"
fill "$HERE/nginx-terms.conf.in" "$WORKDIR/nginx-terms.conf" "$TERMS_PORT"
fill "$HERE/termsgate.toml.in" "$WORKDIR/termsgate.toml" "$GATE_PORT"

log "starting upstream :$UPSTREAM_PORT, bare :$BARE_PORT, nginx-terms :$TERMS_PORT, termsgate :$GATE_PORT (workers: $WORKERS)"
"$NGINX" -e "$WORKDIR/logs/upstream-error.log" -p "$WORKDIR" -c "$WORKDIR/upstream.conf" &
PIDS+=($!)
UPSTREAM_PID=$!
"$NGINX" -e "$WORKDIR/logs/nginx-terms-error.log" -p "$WORKDIR" -c "$WORKDIR/nginx-terms.conf" &
PIDS+=($!)
declare -A PID=([nginx-terms]=$!)
TERMSGATE_THREADS=$WORKERS "$BARE_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UPSTREAM_PORT" \
    2>"$WORKDIR/logs/bare.err" &
PIDS+=($!)
PID[bare]=$!
# The access log is termsgate's stdout, redirected to a file.
(cd "$WORKDIR" && TERMSGATE_THREADS=$WORKERS RUST_LOG=warn exec "$TERMSGATE_BIN" run -c termsgate.toml \
    >"$WORKDIR/logs/termsgate-access.log" 2>"$WORKDIR/logs/termsgate.err") &
PIDS+=($!)
PID[termsgate]=$!

# ---------------------------------------------------------------------------------------------
# Checks: every target answers 200 with the key; the two gateways answer 401 without one.
# ---------------------------------------------------------------------------------------------
# status URL [curl args...]: prints the HTTP status (000 when nothing answers).
status() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url" || true
}
url() { printf 'http://127.0.0.1:%s%s' "${PORT[$1]}" "$REQ_PATH"; }

# wait_up NAME PID URL: waits until URL answers anything, failing early if PID has exited.
wait_up() {
    local deadline=$((SECONDS + 20)) code
    while :; do
        code=$(status "$3" -H "Authorization: Bearer $TOKEN")
        [ "$code" != 000 ] && return
        kill -0 "$2" 2>/dev/null || die "$1 exited; its logs are in $WORKDIR (KEEP=1 keeps them)"
        [ $SECONDS -ge $deadline ] && die "$1 does not answer on $3"
        sleep 0.2
    done
}

wait_up upstream "$UPSTREAM_PID" "http://127.0.0.1:$UPSTREAM_PORT$REQ_PATH"
for t in "${TARGETS[@]}"; do
    wait_up "$t" "${PID[$t]}" "$(url "$t")"
done
wait_up "termsgate admin" "${PID[termsgate]}" "http://127.0.0.1:$ADMIN_PORT/readyz"

for t in "${TARGETS[@]}"; do
    code=$(status "$(url "$t")" -H "Authorization: Bearer $TOKEN")
    [ "$code" = 200 ] || die "$t answered $code with the key, not 200"
    body=$(curl -s --max-time 2 -H "Authorization: Bearer $TOKEN" "$(url "$t")")
    [[ "$body" == *'"service":"bench-upstream"'* ]] || die "$t did not pass the upstream body: $body"
done
for t in nginx-terms termsgate; do
    code=$(status "$(url "$t")")
    [ "$code" = 401 ] || die "$t answered $code without a key, not 401"
    curl -s -D - -o /dev/null --max-time 2 -H "Authorization: Bearer $TOKEN" "$(url "$t")" |
        grep -qi '^x-request-id:' || die "$t returned no X-Request-Id"
done
log "checks passed: 200 with the key on every target, 401 without it on the gateways"

# ---------------------------------------------------------------------------------------------
# Throughput: wrk, alternating rounds
# ---------------------------------------------------------------------------------------------
run_wrk() { # run_wrk TARGET DURATION OUTFILE
    wrk -t1 -c"$CONNECTIONS" -d"$2" --latency -H "Authorization: Bearer $TOKEN" \
        "$(url "$1")" >"$3"
}

log "warm-up: 2 s per target"
for t in "${TARGETS[@]}"; do
    run_wrk "$t" 2s "$WORKDIR/warmup-$t.txt"
done

mkdir -p "$WORKDIR/wrk"
n=${#TARGETS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order every round so no target always runs first (or after the same one).
    line="round $r/$ROUNDS:"
    for ((i = 0; i < n; i++)); do
        t=${TARGETS[$(((i + r - 1) % n))]}
        out="$WORKDIR/wrk/$t.$r.txt"
        run_wrk "$t" "$DURATION" "$out"
        line+=" $t $(awk '/^Requests\/sec/ {printf "%.0f", $2}' "$out")"
    done
    log "$line req/s"
done

# ---------------------------------------------------------------------------------------------
# CPU time and system calls per request (unless PER_REQUEST=0; docs/performance.md)
# ---------------------------------------------------------------------------------------------
# cpu_ticks PID...: user and system clock ticks used so far by these processes, summed.
cpu_ticks() {
    local p
    for p in "$@"; do awk '{print $14, $15}' "/proc/$p/stat"; done |
        awk '{u += $1; s += $2} END {print u + 0, s + 0}'
}
if [ "$PER_REQUEST" = 1 ]; then
    HZ=$(getconf CLK_TCK)
    PER_REQUEST_OUT=$WORKDIR/per_request.txt
    declare -A PIDLIST
    for t in "${TARGETS[@]}"; do
        # The process and its children: nginx-terms' work is done by its worker processes.
        PIDLIST[$t]="${PID[$t]} $(pgrep -P "${PID[$t]}" | tr "\n" " " || true)"
    done
    # Alternating rounds, as for throughput: a single 4 s run per target moved by several µs
    # from one run of the script to the next, and always measured termsgate last.
    for ((r = 1; r <= CPU_ROUNDS; r++)); do
        line="CPU round $r/$CPU_ROUNDS, µs per request (user + system):"
        for ((i = 0; i < ${#TARGETS[@]}; i++)); do
            t=${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}
            read -r -a pids <<<"${PIDLIST[$t]}"
            read -r u0 s0 < <(cpu_ticks "${pids[@]}")
            run_wrk "$t" 4s "$WORKDIR/cpu-$t.$r.txt"
            read -r u1 s1 < <(cpu_ticks "${pids[@]}")
            n=$(awk '/requests in/ {print $1}' "$WORKDIR/cpu-$t.$r.txt")
            if [ -z "$n" ] || [ "$n" = 0 ]; then
                line+=" $t ?"
                continue
            fi
            cpu_line=$(awk -v t="$t" -v n="$n" -v hz="$HZ" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) 'BEGIN {
                f = 1e6 / hz / n
                printf "%s\tcpu\t%.1f\t%.1f\t%.1f", t, du * f, ds * f, (du + ds) * f }')
            printf '%s\n' "$cpu_line" >>"$PER_REQUEST_OUT"
            line+=" $t $(cut -f3,4 <<<"$cpu_line" | tr '\t' '+')"
        done
        log "$line"
    done
    # System calls of every thread while oha sends 4,000 requests on 8 connections.
    for t in "${TARGETS[@]}"; do
        [ -n "$OHA" ] && command -v strace >/dev/null 2>&1 || break
        read -r -a pids <<<"${PIDLIST[$t]}"
        strace_args=()
        for p in "${pids[@]}"; do strace_args+=(-p "$p"); done
        strace -f -c -o "$WORKDIR/strace-$t.txt" "${strace_args[@]}" 2>/dev/null &
        strace_pid=$!
        sleep 1
        "$OHA" --no-tui -n 4000 -c 8 -H "Authorization: Bearer $TOKEN" "$(url "$t")" >/dev/null ||
            log "oha failed on $t: system call counts are over fewer requests than 4,000"
        sleep 0.5
        kill -INT "$strace_pid" 2>/dev/null || true
        wait "$strace_pid" 2>/dev/null || true
        if [ ! -s "$WORKDIR/strace-$t.txt" ]; then
            log "$t: strace recorded nothing (is ptrace allowed here?)"
            continue
        fi
        sys_line=$(awk -v t="$t" '$NF != "total" && $4 ~ /^[0-9]+$/ && $4 >= 40 {
            line = line sprintf(" %s %.2f", $NF, $4 / 4000) } END {
            printf "%s\tsyscalls\t%s", t, substr(line, 2) }' "$WORKDIR/strace-$t.txt")
        printf '%s\n' "$sys_line" >>"$PER_REQUEST_OUT"
        log "$t: system calls per request: $(cut -f3 <<<"$sys_line")"
    done
fi

# The median of bare's req/s sets the fixed rate: about half of its throughput.
BARE_MEDIAN=$(cat "$WORKDIR"/wrk/bare.*.txt | awk '/^Requests\/sec/ {print $2}' | sort -n |
    awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%d", m}')
RATE=$((BARE_MEDIAN / 2))

# ---------------------------------------------------------------------------------------------
# Latency at a fixed rate (oha corrects for coordinated omission)
# ---------------------------------------------------------------------------------------------
mkdir -p "$WORKDIR/oha"
if [ -n "$OHA" ]; then
    log "fixed rate: $RATE req/s, ${RATE_SECONDS}s per target and round, $RATE_ROUNDS rounds (oha --latency-correction)"
    # Alternating rounds, as for throughput: one disturbed run moves a median of three less
    # than it moves a single run.
    for ((r = 1; r <= RATE_ROUNDS; r++)); do
        line="round $r/$RATE_ROUNDS p99:"
        for ((i = 0; i < ${#TARGETS[@]}; i++)); do
            t=${TARGETS[$(((i + r - 1) % ${#TARGETS[@]}))]}
            out="$WORKDIR/oha/$t.$r.json"
            "$OHA" --no-tui --output-format json -z "${RATE_SECONDS}s" -c "$CONNECTIONS" -q "$RATE" \
                --latency-correction \
                -H "Authorization: Bearer $TOKEN" "$(url "$t")" >"$out" 2>"$WORKDIR/oha/$t.$r.err" ||
                log "oha failed on $t: $(tail -1 "$WORKDIR/oha/$t.$r.err")"
            line+=" $t $(python3 -c 'import json, sys; print("%.0f us" % (json.load(open(sys.argv[1]))["latencyPercentiles"]["p99"] * 1e6))' "$out" 2>/dev/null || echo '?')"
        done
        log "$line"
    done
else
    log "oha is missing: the fixed-rate latency is not measured"
fi

# What termsgate counted and logged (to show the features really ran).
curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$WORKDIR/termsgate-metrics.txt" || true

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
python3 "$HERE/report.py" \
    --workdir "$WORKDIR" \
    --rate "$RATE" \
    --md "$HERE/results.md" \
    --svg "$HERE/results.svg" \
    --meta "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
    --meta "nproc=$(nproc)" \
    --meta "cpu=$CPU_MODEL" \
    --meta "kernel=$(uname -r)" \
    --meta "workers=$WORKERS" \
    --meta "rounds=$ROUNDS" \
    --meta "duration=$DURATION" \
    --meta "connections=$CONNECTIONS" \
    --meta "rate_seconds=$RATE_SECONDS" \
    --meta "rate_rounds=$RATE_ROUNDS" \
    --meta "cpu_rounds=$CPU_ROUNDS" \
    --meta "nginx=$("$NGINX" -v 2>&1 | sed 's|.*/||')" \
    --meta "wrk=$(dpkg-query -W -f '${Version}' wrk 2>/dev/null || echo '?')" \
    --meta "oha=$([ -n "$OHA" ] && "$OHA" --version | awk '{print $2}' || echo 'missing')" \
    --meta "rustc=$(rustc --version | awk '{print $2}')"
