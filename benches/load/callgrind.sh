#!/usr/bin/env bash
# Instructions per request of termsgate and of the bare Pingora pass-through, counted by
# valgrind's callgrind (docs/performance.md). Unlike req/s on a shared machine, instruction
# counts repeat to within a fraction of a percent from run to run.
#
#   bash benches/load/callgrind.sh
#
# Both proxies run under callgrind behind the same nginx upstream. After a warm-up the counters
# are zeroed, wrk sends REQUESTS_SECONDS [5] of keep-alive traffic (4 connections) to each, and
# the counters are dumped. Prints instructions per request for each, their ratio, and termsgate's
# own proxy phases (inclusive). Raw callgrind files stay in the scratch directory with KEEP=1.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_PER_TARGET=${REQUESTS_SECONDS:-5}
TOKEN=tg_bench_0123456789abcdef0123456789abcdef
REQ_PATH=/api/v1/items

log() { printf '==> %s\n' "$*" >&2; }

for tool in valgrind:valgrind wrk:wrk nginx:nginx; do
    cmd=${tool%%:*}
    if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
        log "installing ${tool#*:} (Debian package)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool#*:}" >/dev/null
    fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

log "building termsgate and the passthrough example (release)"
(cd "$ROOT" && cargo build --release --bin termsgate --example passthrough >&2)

WORKDIR=$(mktemp -d /tmp/termsgate-callgrind.XXXXXX)
mkdir -p "$WORKDIR/tmp" "$WORKDIR/logs"
chmod 755 "$WORKDIR"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
    sleep 2
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP:-}" ]; then log "scratch directory kept: $WORKDIR"; else rm -rf "$WORKDIR"; fi
}
trap cleanup EXIT

read -r UPSTREAM_PORT BARE_PORT GATE_PORT ADMIN_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(4)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
')
fill() { # fill TEMPLATE OUTPUT PORT
    sed -e "s|@WORKDIR@|$WORKDIR|g" -e "s|@WORKERS@|2|g" \
        -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" -e "s|@PORT@|$3|g" \
        -e "s|@ADMIN_PORT@|$ADMIN_PORT|g" -e "s|@TOKEN@|$TOKEN|g" \
        -e "s|@TOKEN_SHA256@|$(printf '%s' "$TOKEN" | sha256sum | cut -d' ' -f1)|g" \
        "$1" >"$2"
}
fill "$HERE/nginx-upstream.conf.in" "$WORKDIR/upstream.conf" "$UPSTREAM_PORT"
fill "$HERE/termsgate.toml.in" "$WORKDIR/termsgate.toml" "$GATE_PORT"

"$NGINX" -e "$WORKDIR/logs/upstream-error.log" -p "$WORKDIR" -c "$WORKDIR/upstream.conf" &
PIDS+=($!)
(cd "$WORKDIR" && TERMSGATE_THREADS=2 RUST_LOG=warn exec valgrind --tool=callgrind \
    --callgrind-out-file="$WORKDIR/termsgate.cg" "$ROOT/target/release/termsgate" run \
    -c termsgate.toml >"$WORKDIR/logs/access.log" 2>"$WORKDIR/logs/termsgate.err") &
PIDS+=($!)
GATE_PID=$!
TERMSGATE_THREADS=2 valgrind --tool=callgrind --callgrind-out-file="$WORKDIR/bare.cg" \
    "$ROOT/target/release/examples/passthrough" "127.0.0.1:$BARE_PORT" \
    "127.0.0.1:$UPSTREAM_PORT" 2>"$WORKDIR/logs/bare.err" &
PIDS+=($!)
BARE_PID=$!

url() { printf 'http://127.0.0.1:%s%s' "$1" "$REQ_PATH"; }
for port in "$GATE_PORT" "$BARE_PORT"; do
    for _ in $(seq 120); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            -H "Authorization: Bearer $TOKEN" "$(url "$port")" || true)
        [ "$code" = 200 ] && break
        sleep 0.5
    done
    [ "$code" = 200 ] || { log "port $port never answered 200"; exit 1; }
done

log "warm-up, then ${SECONDS_PER_TARGET}s of counted traffic per proxy"
declare -A COUNT
for name in termsgate bare; do
    if [ "$name" = termsgate ]; then port=$GATE_PORT pid=$GATE_PID; else port=$BARE_PORT pid=$BARE_PID; fi
    wrk -t1 -c4 -d2s -H "Authorization: Bearer $TOKEN" "$(url "$port")" >/dev/null
    callgrind_control -z "$pid" >/dev/null 2>&1
    out=$(wrk -t1 -c4 -d"${SECONDS_PER_TARGET}s" -H "Authorization: Bearer $TOKEN" "$(url "$port")")
    # Let the last responses finish before the dump.
    sleep 1
    callgrind_control -d "$pid" >/dev/null 2>&1
    COUNT[$name]=$(awk '/requests in/ {print $1}' <<<"$out")
    grep -q "Non-2xx" <<<"$out" && { log "$name answered non-2xx: $out"; exit 1; }
done
sleep 2

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}'; }
TG=$(total "$(ls "$WORKDIR"/termsgate.cg.* | head -1)")
BARE=$(total "$(ls "$WORKDIR"/bare.cg.* | head -1)")
python3 - "$TG" "${COUNT[termsgate]}" "$BARE" "${COUNT[bare]}" <<'EOF'
import sys
tg, tg_n, bare, bare_n = map(int, sys.argv[1:])
t, b = tg / tg_n, bare / bare_n
print(f"termsgate: {t:,.0f} instructions per request ({tg_n} requests)")
print(f"bare:      {b:,.0f} instructions per request ({bare_n} requests)")
print(f"termsgate/bare = {t / b:.3f}; termsgate's features: {t - b:,.0f} instructions per request")
EOF
echo "termsgate's proxy phases, inclusive instructions per request:"
callgrind_annotate --inclusive=yes --threshold=100 "$(ls "$WORKDIR"/termsgate.cg.* | head -1)" 2>/dev/null |
    grep -E '\?\?\?:<termsgate::proxy::Gateway as pingora_proxy::proxy_trait::ProxyHttp>::([a-z_]+::\{\{closure\}\}|new_ctx) ' |
    awk -v n="${COUNT[termsgate]}" '{c=$1; gsub(",", "", c); match($0, /ProxyHttp>::[a-z_]+/); if (c / n >= 1) printf "  %-26s %8.0f\n", substr($0, RSTART + 12, RLENGTH - 12), c / n}'
