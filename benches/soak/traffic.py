#!/usr/bin/env python3
"""Soak-run helpers for benches/soak.sh (Python 3.11 standard library only).

    traffic.py upstream PORT_FILE COUNT_FILE
        A small HTTP/1.1 keep-alive upstream on a free loopback port (written to PORT_FILE).
        /err/503... answers 503 (the upstream's own 5xx); everything else 200, POST to
        /api/v1/agents 201. On SIGTERM it writes how many requests it answered to COUNT_FILE.

    traffic.py keys DIR
        Writes DIR/keys.json: the soak's API keys (token, sha256, plan), several per plan.

    traffic.py config DIR VARIANT GW_PORT ADMIN_PORT UPSTREAM_PORT
        Writes DIR/termsgate.toml for one reload variant (used once, for the first file).

    traffic.py drive DIR GW_PORT ADMIN_PORT GW_PID UPSTREAM_PORT SECONDS RATE ACCESS_LOG
        Sends mixed traffic for SECONDS at about RATE requests/s, rewrites or SIGHUPs the config
        every few seconds, samples the gateway's RSS, then checks the access log and /metrics.
        Writes DIR/summary.json and prints the report. Exit status 1 if a check fails.

Every socket is on loopback. Failed authentications come from 127.0.2.0/24 (a bounded pool,
each address well under the brute-force limit) and from one "attacker" address 127.0.0.66
(past the limit, it gets 429 too_many_invalid_keys), never from 127.0.0.1, which carries the
valid keys, so the brute-force limit can never block the valid traffic.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path

PLANS = ("free", "pro", "scale")
KEYS_PER_PLAN = 12
POOL_IPS = [f"127.0.2.{i}" for i in range(1, 201)]
POOL_IPS_SET = frozenset(POOL_IPS)
ATTACKER_IP = "127.0.0.66"
VALID_IP = "127.0.0.1"
WORKERS = 8
RELOAD_EVERY_S = 3.0
RSS_EVERY_S = 30.0


# ---------------------------------------------------------------------------------------------
# Upstream
# ---------------------------------------------------------------------------------------------
class _Upstream(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    served = 0
    lock = threading.Lock()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with _Upstream.lock:
            _Upstream.served += 1
        if self.path.startswith("/err/503"):
            status, body = 503, b'{"error":"upstream_says_no"}'
        elif self.command == "POST" and self.path.startswith("/api/v1/agents"):
            status, body = 201, b'{"id":"agent_1"}'
        else:
            status, body = 200, b'{"ok":true}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


def upstream(port_file: str, count_file: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True

    def stop(*_):
        Path(count_file).write_text(str(_Upstream.served))
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


# ---------------------------------------------------------------------------------------------
# Keys and config
# ---------------------------------------------------------------------------------------------
def make_keys(d: str) -> None:
    keys = []
    for plan in PLANS:
        for i in range(KEYS_PER_PLAN):
            token = f"tg_soak_{plan}_{i:02d}_{os.urandom(8).hex()}"
            keys.append(
                {
                    "id": f"soak_{plan}_{i:02d}",
                    "token": token,
                    "sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "plan": plan,
                }
            )
    Path(d, "keys.json").write_text(json.dumps(keys, indent=1))


def load_keys(d: str) -> list[dict]:
    return json.loads(Path(d, "keys.json").read_text())


def config_text(d: str, variant: int, gw: int, admin: int, up: int) -> str:
    """Valid variants change limits and a dummy key; every 4th file rewrite is invalid."""
    keys = load_keys(d)
    pro_per_minute = 30 + 10 * (variant % 3)  # 30, 40, 50: the limiter state is kept
    out = [
        "# termsgate soak run (benches/soak.sh); rewritten every few seconds",
        "[server]",
        f'listen = "127.0.0.1:{gw}"',
        f'upstream = "127.0.0.1:{up}"',
        "watch = true",
        "drain_timeout_s = 2",
        "",
        "[admin]",
        f'listen = "127.0.0.1:{admin}"',
        "",
        "[[routes]]",
        'name = "spawn"',
        'method = "POST"',
        'path = "/api/v1/agents"',
        "",
        "[[plans]]",
        'name = "free"',
        "limits = [",
        '  { name = "spawns_per_minute", route = "spawn", max = 5, window = "1m" },',
        '  { name = "spawns_per_hour", route = "spawn", max = 30, window = "1h" },',
        "]",
        "",
        "[[plans]]",
        'name = "pro"',
        "limits = [",
        f'  {{ name = "spawns_per_minute", route = "spawn", max = {pro_per_minute}, window = "1m" }},',
        '  { name = "spawns_per_hour", route = "spawn", max = 500, window = "1h" },',
        "]",
        "",
        "[[plans]]",
        'name = "scale"',
        "limits = [",
        '  { name = "spawns_per_minute", route = "spawn", max = 100, window = "1m" },',
        '  { name = "spawns_per_hour", route = "spawn", max = 5000, window = "1h" },',
        '  { name = "requests_per_10s", max = 2000, window = "10s" },',
        "]",
        "",
        "[abuse]",
        "max_invalid_keys_per_minute = 30",
        "",
    ]
    for k in keys:
        out += ["[[keys]]", f'id = "{k["id"]}"', f'sha256 = "{k["sha256"]}"', f'plan = "{k["plan"]}"', ""]
    # A key no traffic uses, added and removed across reloads.
    if variant % 2:
        dummy = hashlib.sha256(f"dummy{variant}".encode()).hexdigest()
        out += ["[[keys]]", f'id = "dummy_{variant}"', f'sha256 = "{dummy}"', 'plan = "pro"', ""]
    text = "\n".join(out)
    if variant % 4 == 3:  # invalid: the reload must be refused and change nothing
        which = (variant // 4) % 4
        if which == 0:
            text += '\n[[keys]]\nid = "bad"\nsha256 = "' + "a" * 64 + '"\nplan = "platinum"\n'
        elif which == 1:
            text = text.replace('window = "1h"', 'window = "1 fortnight"', 1)
        elif which == 2:
            text = "[server\nthis is not toml\n"
        else:
            text = text.replace("max = 5000", "max = 70000", 1)
    return text


def write_config(d: str, variant: int, gw: int, admin: int, up: int) -> None:
    path = Path(d, "termsgate.toml")
    tmp = Path(d, "termsgate.toml.tmp")
    tmp.write_text(config_text(d, variant, gw, admin, up))
    os.replace(tmp, path)  # atomic, as an editor or a deploy tool would


# ---------------------------------------------------------------------------------------------
# Gateway probes
# ---------------------------------------------------------------------------------------------
def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metrics(admin: int) -> dict[str, float]:
    """Sums of the series we report, from the admin listener's /metrics."""
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    sums: Counter = Counter()
    by_label: Counter = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, value = line.rsplit(" ", 1)
        name = series.split("{", 1)[0]
        sums[name] += float(value)
        if name in ("termsgate_config_reloads_total", "termsgate_requests_total"):
            labels = series.split("{", 1)[1].rstrip("}") if "{" in series else ""
            if name == "termsgate_requests_total":
                status = [p for p in labels.split(",") if p.startswith("status=")]
                by_label[f"{name}:{status[0] if status else '?'}"] += float(value)
            else:
                by_label[f"{name}:{labels}"] += float(value)
    return {**sums, **by_label}


# ---------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------
class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.by_kind: dict[str, Counter] = {}
        self.transport_errors: Counter = Counter()
        self.gateway_5xx: Counter = Counter()
        self.upstream_5xx = 0

    def record(self, kind: str, status: int | None, err: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            self.by_kind.setdefault(kind, Counter())[status if status is not None else "error"] += 1
            if err:
                self.transport_errors[f"{kind}: {err}"] += 1
            elif status is not None and status >= 500:
                if kind == "upstream_503" and status == 503:
                    self.upstream_5xx += 1
                else:
                    self.gateway_5xx[f"{kind}: {status}"] += 1


# What each kind of request may get. Anything else is reported and fails the run.
ALLOWED = {
    "valid_get": {200},
    "valid_post_body": {200},
    "spawn_paid": {201, 429},
    "spawn_free_limited": {201, 429},
    "upstream_503": {503},
    "unknown_key": {401},
    "missing_or_malformed": {401},
    "attacker": {401, 429},
}

MIX = [  # (kind, weight)
    ("valid_get", 40),
    ("valid_post_body", 5),
    ("spawn_paid", 15),
    ("spawn_free_limited", 15),
    ("upstream_503", 5),
    ("unknown_key", 10),
    ("missing_or_malformed", 5),
    ("attacker", 5),
]


class Worker(threading.Thread):
    def __init__(self, n: int, gw: int, keys: list[dict], deadline: float, interval: float, stats: Stats):
        super().__init__(daemon=True)
        self.rng = random.Random(n)
        self.gw = gw
        self.keys = keys
        self.deadline = deadline
        self.interval = interval
        self.stats = stats
        self.conns: dict[str, http.client.HTTPConnection] = {}
        self.uses: Counter = Counter()
        self.kinds = [k for k, _ in MIX]
        self.weights = [w for _, w in MIX]
        self.free_hot = [k for k in keys if k["plan"] == "free"][:3]
        self.paid = [k for k in keys if k["plan"] != "free"]

    def conn(self, ip: str) -> http.client.HTTPConnection:
        c = self.conns.get(ip)
        # Open fresh connections now and then, so accept and close are soaked too.
        if c is None or self.uses[ip] >= 200:
            if c is not None:
                c.close()
            c = http.client.HTTPConnection("127.0.0.1", self.gw, timeout=15, source_address=(ip, 0))
            self.conns[ip] = c
            self.uses[ip] = 0
        self.uses[ip] += 1
        return c

    def one(self) -> None:
        rng = self.rng
        kind = rng.choices(self.kinds, self.weights)[0]
        method, path, body, ip = "GET", f"/api/v1/items/{rng.randrange(1000)}", None, VALID_IP
        headers = {"X-Request-Id": f"soak-{rng.getrandbits(48):x}"}
        if kind == "valid_get":
            headers["Authorization"] = "Bearer " + rng.choice(self.keys)["token"]
        elif kind == "valid_post_body":
            method, path, body = "POST", "/api/v1/echo", os.urandom(rng.randrange(1, 4000))
            headers["Authorization"] = "Bearer " + rng.choice(self.keys)["token"]
        elif kind == "spawn_paid":
            method, path, body = "POST", "/api/v1/agents", b'{"task":"soak"}'
            headers["Authorization"] = "Bearer " + rng.choice(self.paid)["token"]
        elif kind == "spawn_free_limited":
            method, path, body = "POST", "/api/v1/agents", b'{"task":"soak"}'
            headers["Authorization"] = "Bearer " + rng.choice(self.free_hot)["token"]
        elif kind == "upstream_503":
            path = f"/err/503/{rng.randrange(100)}"
            headers["Authorization"] = "Bearer " + rng.choice(self.keys)["token"]
        elif kind == "unknown_key":
            ip = rng.choice(POOL_IPS)
            headers["Authorization"] = f"Bearer tg_unknown_{rng.getrandbits(64):016x}"
        elif kind == "missing_or_malformed":
            ip = rng.choice(POOL_IPS)
            choice = rng.randrange(3)
            if choice == 1:
                headers["Authorization"] = "Basic dXNlcjpwYXNz"
            elif choice == 2:
                headers["Authorization"] = "Bearer two tokens"
        elif kind == "attacker":
            ip = ATTACKER_IP
            headers["Authorization"] = f"Bearer tg_guess_{rng.getrandbits(64):016x}"
        if body is not None:
            headers["Content-Type"] = "application/json"
        if ip in POOL_IPS_SET:
            # One connection per request from the pool: bounded open connections (a cached
            # connection per worker and pool address would hold ~1,600 idle sockets, and the
            # gateway's RSS would measure them), and accept/close is soaked too.
            headers["Connection"] = "close"
        c = self.conn(ip)
        try:
            c.request(method, path, body=body, headers=headers)
            resp = c.getresponse()
            resp.read()
            status = resp.status
            if resp.will_close:
                c.close()
                self.conns.pop(ip, None)
            self.stats.record(kind, status)
        except (OSError, http.client.HTTPException) as e:
            c.close()
            self.conns.pop(ip, None)
            self.stats.record(kind, None, type(e).__name__)

    def run(self) -> None:
        next_at = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= self.deadline:
                break
            if next_at > now:
                time.sleep(next_at - now)
            next_at += self.interval
            if next_at < time.monotonic() - 1.0:  # fell behind: do not burst to catch up
                next_at = time.monotonic()
            self.one()
        for c in self.conns.values():
            c.close()


def drive(d: str, gw: int, admin: int, pid: int, up: int, seconds: float, rate: float, access_log: str) -> int:
    keys = load_keys(d)
    stats = Stats()
    start = time.monotonic()
    deadline = start + seconds
    rss: list[tuple[float, int]] = [(0.0, rss_kib(pid))]
    limiter_keys: list[tuple[float, float]] = []
    interval = WORKERS / rate
    workers = [Worker(i, gw, keys, deadline, interval, stats) for i in range(WORKERS)]
    for w in workers:
        w.start()

    reloads = Counter()
    variant = 0
    next_reload = start + RELOAD_EVERY_S
    next_rss = start + RSS_EVERY_S
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = time.monotonic()
        if now >= next_reload and now < deadline - 2:
            next_reload += RELOAD_EVERY_S
            variant += 1
            if variant % 2:
                write_config(d, variant, gw, admin, up)
                reloads["file_rewrite_invalid" if variant % 4 == 3 else "file_rewrite_valid"] += 1
            else:
                os.kill(pid, signal.SIGHUP)
                reloads["sighup"] += 1
        if now >= next_rss:
            next_rss += RSS_EVERY_S
            rss.append((now - start, rss_kib(pid)))
            m = metrics(admin)
            limiter_keys.append((now - start, m.get("termsgate_limiter_keys", 0.0)))
            print(
                f"  t={now - start:5.0f}s sent={stats.sent} rss={rss[-1][1] / 1024:.1f} MiB "
                f"limiter_keys={limiter_keys[-1][1]:.0f}",
                file=sys.stderr,
                flush=True,
            )
    for w in workers:
        w.join(timeout=30)
    elapsed = time.monotonic() - start
    # Leave the config valid, and let the last log lines be flushed.
    write_config(d, 0, gw, admin, up)
    if elapsed - rss[-1][0] > 1.0:
        rss.append((elapsed, rss_kib(pid)))
    else:
        rss[-1] = (rss[-1][0], rss_kib(pid))

    log_lines = 0
    for _ in range(50):
        log_lines = sum(1 for _ in open(access_log, "rb"))
        if log_lines >= stats.sent:
            break
        time.sleep(0.2)
    m = metrics(admin)
    metric_total = int(m.get("termsgate_requests_total", 0))
    dropped = int(m.get("termsgate_access_log_dropped_total", 0))

    # 5xx in the access log that the upstream did not send (cross-check of the client's view).
    log_gateway_5xx = 0
    log_statuses: Counter = Counter()
    with open(access_log, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except ValueError:
                log_statuses["unparsable"] += 1
                continue
            st = rec.get("status", 0)
            log_statuses[st] += 1
            if st >= 500 and not (st == 503 and str(rec.get("path", "")).startswith("/err/503")):
                log_gateway_5xx += 1

    unexpected = {
        kind: {str(s): n for s, n in c.items() if s not in ALLOWED[kind]}
        for kind, c in stats.by_kind.items()
    }
    unexpected = {k: v for k, v in unexpected.items() if v}
    gateway_5xx = sum(stats.gateway_5xx.values())

    # RSS flatness: from the end of the first third (limiter and abuse state have their keys,
    # connection pools are warm) to the end, growth must stay within the tolerance.
    tol_kib = int(os.environ.get("SOAK_RSS_TOLERANCE_KIB", "8192"))
    ref = [r for t, r in rss if t >= seconds / 3] or [rss[-1][1]]
    rss_ref, rss_end = ref[0], rss[-1][1]
    rss_growth = rss_end - rss_ref

    checks = {
        "no transport errors": sum(stats.transport_errors.values()) == 0,
        "zero 5xx not caused by the upstream (client view)": gateway_5xx == 0,
        "zero 5xx not caused by the upstream (access log)": log_gateway_5xx == 0,
        "every status as expected for its kind": not unexpected,
        "access log lines == requests sent": log_lines == stats.sent,
        "sum(termsgate_requests_total) == requests sent": metric_total == stats.sent,
        "no access log line dropped": dropped == 0,
        f"RSS flat after the first third (growth <= {tol_kib} KiB)": rss_growth <= tol_kib,
        "reloads ran, some refused": m.get('termsgate_config_reloads_total:result="success"', 0) > 0
        and (m.get('termsgate_config_reloads_total:result="failure"', 0) > 0 or seconds < 15),
    }
    summary = {
        "seconds": round(elapsed, 1),
        "target_rate": rate,
        "requests_sent": stats.sent,
        "achieved_rate": round(stats.sent / elapsed, 1),
        "access_log_lines": log_lines,
        "metric_requests_total": metric_total,
        "access_log_dropped": dropped,
        "gateway_5xx": gateway_5xx,
        "gateway_5xx_in_log": log_gateway_5xx,
        "upstream_5xx_passed_through": stats.upstream_5xx,
        "transport_errors": dict(stats.transport_errors),
        "statuses_by_kind": {k: {str(s): n for s, n in sorted(c.items(), key=str)} for k, c in stats.by_kind.items()},
        "unexpected_statuses": unexpected,
        "metric_requests_by_status": {k.split(":", 1)[1]: int(v) for k, v in m.items() if k.startswith("termsgate_requests_total:")},
        "reloads_triggered": dict(reloads),
        "metric_config_reloads": {k.split(":", 1)[1]: int(v) for k, v in m.items() if k.startswith("termsgate_config_reloads_total:")},
        "abuse_blocked_total": int(m.get("termsgate_abuse_blocked_total", 0)),
        "limiter_keys_samples": limiter_keys,
        "rss_kib_samples": rss,
        "rss_start_kib": rss[0][1],
        "rss_after_first_third_kib": rss_ref,
        "rss_end_kib": rss_end,
        "checks": checks,
    }
    Path(d, "summary.json").write_text(json.dumps(summary, indent=1))

    mib = lambda k: f"{k / 1024:.1f} MiB"  # noqa: E731
    print("\n== termsgate soak run ==")
    print(f"duration            {elapsed:.0f} s at {summary['achieved_rate']} req/s (target {rate})")
    print(f"requests sent       {stats.sent}")
    print(f"access log lines    {log_lines}   (dropped: {dropped})")
    print(f"requests_total sum  {metric_total}")
    print(f"by status (metric)  {summary['metric_requests_by_status']}")
    print(f"5xx not upstream    {gateway_5xx} (client view), {log_gateway_5xx} (access log); upstream 503s passed through: {stats.upstream_5xx}")
    print(f"transport errors    {dict(stats.transport_errors) or 0}")
    print(f"reloads             triggered {dict(reloads)}; metric {summary['metric_config_reloads']}")
    print(f"abuse blocked       {summary['abuse_blocked_total']}")
    print(f"RSS                 start {mib(rss[0][1])}, after first third {mib(rss_ref)}, end {mib(rss_end)}")
    print("RSS samples         " + ", ".join(f"{t:.0f}s {mib(r)}" for t, r in rss))
    if unexpected:
        print(f"unexpected statuses {unexpected}")
    print("statuses by kind    " + json.dumps(summary["statuses_by_kind"]))
    for name, ok in checks.items():
        print(f"[{'PASS' if ok else 'FAIL'}] {name}")
    return 0 if all(checks.values()) else 1


def main(argv: list[str]) -> int:
    cmd = argv[1]
    if cmd == "upstream":
        upstream(argv[2], argv[3])
        return 0
    if cmd == "keys":
        make_keys(argv[2])
        return 0
    if cmd == "config":
        write_config(argv[2], int(argv[3]), int(argv[4]), int(argv[5]), int(argv[6]))
        return 0
    if cmd == "drive":
        d, gw, admin, pid, up, secs, rate, log = argv[2:10]
        return drive(d, int(gw), int(admin), int(pid), int(up), float(secs), float(rate), log)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
