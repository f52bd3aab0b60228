#!/usr/bin/env bash
# Soak run: about 10 minutes of mixed traffic against a fresh release build of termsgate and a
# real upstream, with a config reload every few seconds (docs/hardening.md, "Soak run").
#
#   bash benches/soak.sh
#
# Environment knobs (defaults in brackets):
#   SOAK_SECONDS [600]              length of the traffic phase
#   SOAK_RATE [250]                 requests per second, all workers together (moderate on purpose)
#   SOAK_THREADS [2]                TERMSGATE_THREADS of the gateway
#   SOAK_RSS_TOLERANCE_KIB [8192]   allowed RSS growth from the end of the first third to the end
#   SOAK_BUILD [1]                  0: use target/release/termsgate as it is, no cargo build
#   KEEP=1                          keep the scratch directory (config, access log, stderr, summary)
#
# Traffic (Python standard library, benches/soak/traffic.py), all on loopback:
#   valid keys of three plans (GET, POST with a body), spawns on paid keys (201 or 429), spawns on
#   three hot free keys (rate-limited: mostly 429), upstream 503s on purpose, unknown and
#   malformed keys from a pool of 200 loopback addresses (401), and one address guessing keys past
#   the brute-force limit (401, then 429 too_many_invalid_keys).
# Reloads: every 3 s, alternately a file rewrite (picked up by the watcher; one in two of them
#   invalid) and a SIGHUP.
#
# Checks (exit 1 if one fails): no transport errors; zero 5xx not sent by the upstream; each
# request kind got only its expected statuses; access log lines == requests sent ==
# sum(termsgate_requests_total); no access log line dropped; RSS flat after the first third.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

SOAK_SECONDS=${SOAK_SECONDS:-600}
SOAK_RATE=${SOAK_RATE:-250}
SOAK_THREADS=${SOAK_THREADS:-2}
SOAK_BUILD=${SOAK_BUILD:-1}
KEEP=${KEEP:-}
export SOAK_RSS_TOLERANCE_KIB=${SOAK_RSS_TOLERANCE_KIB:-8192}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'soak.sh: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 is needed"
TRAFFIC="$HERE/soak/traffic.py"

if [ "$SOAK_BUILD" = 1 ]; then
    log "building termsgate (release)"
    (cd "$ROOT" && cargo build --release --bin termsgate >&2)
fi
BIN=$ROOT/target/release/termsgate
[ -x "$BIN" ] || die "$BIN is missing (cargo build --release --bin termsgate)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/termsgate-soak.XXXXXX")
UPSTREAM_PID=
GATEWAY_PID=
cleanup() {
    local rc=$?
    # Only the processes this script started, by their pid.
    for pid in $GATEWAY_PID $UPSTREAM_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in $GATEWAY_PID $UPSTREAM_PID; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "$KEEP" ]; then
        log "scratch directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local secs=$1 what=$2
    shift 2
    for _ in $(seq $((secs * 10))); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "timed out waiting for $what"
}

log "upstream: python http.server on loopback"
python3 "$TRAFFIC" upstream "$WORK/upstream.port" "$WORK/upstream.count" 2>"$WORK/upstream.stderr" &
UPSTREAM_PID=$!
wait_for 10 "the upstream" test -s "$WORK/upstream.port"
UPSTREAM_PORT=$(cat "$WORK/upstream.port")

GW_PORT=$(free_port)
ADMIN_PORT=$(free_port)
[ "$GW_PORT" != "$ADMIN_PORT" ] || ADMIN_PORT=$(free_port)
python3 "$TRAFFIC" keys "$WORK"
python3 "$TRAFFIC" config "$WORK" 0 "$GW_PORT" "$ADMIN_PORT" "$UPSTREAM_PORT"
"$BIN" check -c "$WORK/termsgate.toml" >&2

log "gateway: $BIN on 127.0.0.1:$GW_PORT (admin $ADMIN_PORT), upstream 127.0.0.1:$UPSTREAM_PORT"
TERMSGATE_THREADS=$SOAK_THREADS RUST_LOG=info \
    "$BIN" run -c "$WORK/termsgate.toml" >"$WORK/access.log" 2>"$WORK/gateway.stderr" &
GATEWAY_PID=$!
ready() {
    kill -0 "$GATEWAY_PID" || die "the gateway exited: $(tail -n 5 "$WORK/gateway.stderr")"
    python3 -c "import sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:$ADMIN_PORT/readyz', timeout=2).status != 200)"
}
wait_for 30 "the gateway's /readyz" ready

log "soak: ${SOAK_SECONDS}s at ${SOAK_RATE} req/s, reload every 3 s (RSS sampled every 30 s)"
set +e
python3 "$TRAFFIC" drive "$WORK" "$GW_PORT" "$ADMIN_PORT" "$GATEWAY_PID" "$UPSTREAM_PORT" \
    "$SOAK_SECONDS" "$SOAK_RATE" "$WORK/access.log"
RC=$?
set -e

kill -0 "$GATEWAY_PID" 2>/dev/null || { log "the gateway died during the run"; RC=1; }
if grep -qi 'panicked' "$WORK/gateway.stderr"; then
    log "the gateway panicked:"
    grep -i -m 5 'panicked' "$WORK/gateway.stderr" >&2
    RC=1
fi
cp "$WORK/summary.json" "${SOAK_SUMMARY:-/dev/null}" 2>/dev/null || true
if [ "$RC" = 0 ]; then
    log "soak run passed"
else
    log "soak run FAILED (KEEP=1 keeps $WORK for a look)"
fi
exit "$RC"
