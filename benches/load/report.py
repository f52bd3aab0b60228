#!/usr/bin/env python3
"""Turns one run of benches/load/run.sh into a summary, results.md and results.svg.

Reads the raw outputs in the run's scratch directory: wrk/<target>.<round>.txt (wrk --latency)
and oha/<target>.<round>.json (oha --output-format json). Standard library only; the SVG is written by
hand so that nothing beyond Debian's python3 is needed.
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys

TARGETS = ["bare", "nginx-terms", "termsgate"]
COLORS = {"bare": "#8c8c8c", "nginx-terms": "#2f7ed8", "termsgate": "#e4572e"}

UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def to_us(text):
    """wrk latency such as '512.00us', '1.20ms' or '1.01s' in microseconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * UNIT_US[m.group(2)]


def parse_wrk(path):
    text = open(path, encoding="utf-8").read()
    out = {"non2xx": 0, "socket_errors": 0}
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise ValueError(f"{path}: no Requests/sec line:\n{text}")
    out["rps"] = float(m.group(1))
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        out[f"p{pct}"] = to_us(m.group(1)) if m else float("nan")
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["non2xx"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["socket_errors"] = sum(int(g) for g in m.groups())
    return out


def parse_oha(path):
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    try:
        data = json.load(open(path, encoding="utf-8"))
    except ValueError:  # a run cut short
        return None
    pct = data["latencyPercentiles"]  # seconds
    codes = data.get("statusCodeDistribution", {})
    return {
        "rps": data["summary"]["requestsPerSec"],
        "p50": pct["p50"] * 1e6,
        "p99": pct["p99"] * 1e6,
        "p999": pct["p99.9"] * 1e6,
        "ok": codes.get("200", 0),
        "total": sum(codes.values()) + sum(data.get("errorDistribution", {}).values()),
        "not_ok": {
            **{f"status {c}": n for c, n in codes.items() if c != "200"},
            **data.get("errorDistribution", {}),
        },
    }


def fmt_us(us):
    if us != us:  # NaN
        return "n/a"
    return f"{us / 1000:.2f} ms" if us >= 10_000 else f"{us:.0f} µs"


def fmt_signed_us(us):
    return ("+" if us >= 0 else "−") + fmt_us(abs(us))


def by_round(paths):
    """Raw output files <target>.<round>.<ext> in round order (2 before 10)."""
    return sorted(paths, key=lambda p: int(os.path.basename(p).split(".")[-2]))


def collect(workdir):
    wrk = {}
    for t in TARGETS:
        runs = [parse_wrk(p) for p in by_round(glob.glob(os.path.join(workdir, "wrk", f"{t}.*.txt")))]
        if not runs:
            sys.exit(f"report.py: no wrk output for {t} in {workdir}")
        wrk[t] = {
            "runs": runs,
            "rps": statistics.median(r["rps"] for r in runs),
            "p50": statistics.median(r["p50"] for r in runs),
            "p99": statistics.median(r["p99"] for r in runs),
            "errors": sum(r["non2xx"] + r["socket_errors"] for r in runs),
        }
    oha = {t: oha_rounds(workdir, t) for t in TARGETS}
    return wrk, oha


def oha_rounds(workdir, target):
    """The fixed-rate rounds of one target: per-round figures and their medians."""
    parsed = [parse_oha(p) for p in by_round(glob.glob(os.path.join(workdir, "oha", f"{target}.*.json")))]
    runs = [r for r in parsed if r]
    if not runs:
        return None
    not_ok = {}
    for r in runs:
        for kind, n in r["not_ok"].items():
            not_ok[kind] = not_ok.get(kind, 0) + n
    return {
        "runs": runs,
        "failed": len(parsed) - len(runs),
        **{k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99", "p999")},
        "ok": sum(r["ok"] for r in runs),
        "total": sum(r["total"] for r in runs),
        "not_ok": not_ok,
    }


def access_log_info(workdir):
    """Lines the termsgate access log holds, and what its metrics say was dropped."""
    lines = 0
    path = os.path.join(workdir, "logs", "termsgate-access.log")
    if os.path.exists(path):
        with open(path, "rb") as f:
            lines = sum(1 for _ in f)
    dropped = None
    mpath = os.path.join(workdir, "termsgate-metrics.txt")
    if os.path.exists(mpath):
        for line in open(mpath, encoding="utf-8"):
            if line.startswith("termsgate_access_log_dropped_total"):
                dropped = int(float(line.split()[-1]))
    return lines, dropped


# ------------------------------------------------------------------------------------------------
# SVG
# ------------------------------------------------------------------------------------------------
def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def bar_panel(x0, y0, w, title, rows, fmt):
    """A horizontal bar panel: rows are (label, [(value, color, legend)...])."""
    out = [f'<text x="{x0}" y="{y0}" font-size="14" font-weight="bold">{esc(title)}</text>']
    values = [v for _, bars in rows for v, _, _ in bars if v == v]
    vmax = max(values) if values else 1.0
    label_w, bar_h, gap = 95, 18, 10
    span = w - label_w - 120  # room for the value labels
    y = y0 + 16
    for label, bars in rows:
        out.append(
            f'<text x="{x0 + label_w - 8}" y="{y + bar_h * len(bars) / 2 + 5}" '
            f'font-size="12" text-anchor="end">{esc(label)}</text>'
        )
        for v, color, legend in bars:
            bw = 0 if v != v else max(1.0, span * v / vmax)
            out.append(
                f'<rect x="{x0 + label_w}" y="{y}" width="{bw:.1f}" height="{bar_h - 2}" '
                f'fill="{color}"><title>{esc(label)} {esc(legend)}: {esc(fmt(v))}</title></rect>'
            )
            text = fmt(v) + (f" {legend}" if legend else "")
            out.append(
                f'<text x="{x0 + label_w + bw + 5:.1f}" y="{y + bar_h - 5}" font-size="11">'
                f"{esc(text)}</text>"
            )
            y += bar_h
        y += gap
    return out, y


def write_svg(path, wrk, oha, rate, meta):
    width = 1020
    parts = []
    panel_w = width / 3 - 10
    p1, h1 = bar_panel(
        10, 50, panel_w, "Throughput (req/s, median)",
        [(t, [(wrk[t]["rps"], COLORS[t], "")]) for t in TARGETS],
        lambda v: f"{v:,.0f}",
    )
    p2, h2 = bar_panel(
        10 + width / 3, 50, panel_w, "wrk p99 latency (µs, median)",
        [(t, [(wrk[t]["p99"], COLORS[t], "")]) for t in TARGETS],
        fmt_us,
    )
    parts += p1 + p2
    bottom = max(h1, h2)
    if any(oha.values()):
        rows = []
        for t in TARGETS:
            o = oha[t] or {"p99": float("nan"), "p999": float("nan")}
            rows.append((t, [(o["p99"], COLORS[t], "p99"), (o["p999"], COLORS[t] + "99", "p99.9")]))
        p3, h3 = bar_panel(
            10 + 2 * width / 3, 50, panel_w, f"At {rate:,} req/s: p99 / p99.9 (median)", rows, fmt_us
        )
        parts += p3
        bottom = max(bottom, h3)
    else:
        parts.append(
            f'<text x="{10 + 2 * width / 3}" y="50" font-size="14">fixed-rate latency not measured (no oha)</text>'
        )
    height = int(bottom + 40)
    sub = (
        f"wrk -t1 -c{meta.get('connections', '32')} -d{meta.get('duration', '5s')}, "
        f"{meta.get('rounds', '?')} alternating rounds · {meta.get('nproc', '?')} × "
        f"{meta.get('cpu', '?')} · {meta.get('date', '')}"
    )
    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        '<text x="10" y="20" font-size="16" font-weight="bold">termsgate load benchmark</text>',
        f'<text x="10" y="36" font-size="11" fill="#555">{esc(sub)}</text>',
        *parts,
        f'<text x="10" y="{height - 10}" font-size="10" fill="#777">'
        "Generated by benches/load/report.py from the run's own wrk and oha output.</text>",
        "</svg>",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")


# ------------------------------------------------------------------------------------------------
# Markdown and summary
# ------------------------------------------------------------------------------------------------
def per_request_info(workdir):
    """run.sh's per_request.txt: {target: {"cpu": [(user, sys, total), ...] one per round,
    "syscalls": "name n ..."}}."""
    path = os.path.join(workdir, "per_request.txt")
    info = {}
    if not os.path.exists(path):
        return info
    with open(path, encoding="utf-8") as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if len(fields) >= 5 and fields[1] == "cpu":
                rounds = info.setdefault(fields[0], {}).setdefault("cpu", [])
                rounds.append(tuple(float(v) for v in fields[2:5]))
            elif len(fields) >= 3 and fields[1] == "syscalls":
                info.setdefault(fields[0], {})["syscalls"] = fields[2]
    return info


def median_round(rounds):
    """The round whose total is the median (the lower middle one of an even count)."""
    ordered = sorted(rounds, key=lambda r: r[2])
    return ordered[(len(ordered) - 1) // 2]


def per_request_md(info, connections, cpu_rounds):
    if not info:
        return []
    out = [
        "",
        "CPU time per request (all threads or worker processes of the target, from `/proc`, "
        f"around 4 s `wrk -t1 -c{connections}` runs in {cpu_rounds} alternating rounds; the round "
        "with the median total) and system calls per request (`strace -f -c` around "
        "4,000 requests from `oha -c 8`; calls under 0.01 per request left out):",
        "",
        "| target | user µs | system µs | total µs | total per round | system calls per request |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for t in TARGETS:
        i = info.get(t, {})
        rounds = i.get("cpu", [])
        cells = [f"{v:.1f}" for v in median_round(rounds)] if rounds else ["?", "?", "?"]
        per_round = ", ".join(f"{r[2]:.1f}" for r in rounds) or "?"
        words = i.get("syscalls", "").split()
        calls = ", ".join(f"`{n}` {v}" for n, v in zip(words[::2], words[1::2])) or "not measured"
        out.append(f"| {t} | {' | '.join(cells)} | {per_round} | {calls} |")
    return out


def write_md(path, wrk, oha, rate, meta, log_lines, dropped, per_request):
    bare, terms, gate = wrk["bare"], wrk["nginx-terms"], wrk["termsgate"]
    out = [
        "# termsgate load benchmark: results",
        "",
        "Generated by `bash benches/load/run.sh`; see `docs/performance.md` for the method.",
        "",
        f"- date: {meta.get('date', '?')}",
        f"- machine: {meta.get('nproc', '?')} CPUs (`nproc`), {meta.get('cpu', '?')}, "
        f"Linux {meta.get('kernel', '?')}; shared with other work, so compare only within one run",
        f"- tools: nginx {meta.get('nginx', '?')}, wrk {meta.get('wrk', '?')}, "
        f"oha {meta.get('oha', '?')}, rustc {meta.get('rustc', '?')}",
        f"- proxies: {meta.get('workers', '?')} worker threads (Pingora) / worker processes (nginx-terms); "
        "upstream: nginx, 1 worker, 60 B JSON",
        f"- throughput: `wrk -t1 -c{meta.get('connections', '32')} -d{meta.get('duration', '5s')} --latency`, "
        f"{meta.get('rounds', '?')} alternating rounds, medians",
        "",
        "| target | req/s (median) | p50 | p99 | req/s per round | non-2xx + socket errors |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for t in TARGETS:
        w = wrk[t]
        per_round = ", ".join(f"{r['rps']:,.0f}" for r in w["runs"])
        out.append(
            f"| {t} | {w['rps']:,.0f} | {fmt_us(w['p50'])} | {fmt_us(w['p99'])} | {per_round} | {w['errors']} |"
        )
    out += [
        "",
        f"- **termsgate / bare = {gate['rps'] / bare['rps']:.3f}** (target ≥ 0.95)",
        f"- **termsgate / nginx-terms = {gate['rps'] / terms['rps']:.3f}** (target ≥ 1.0)",
        f"- nginx-terms / bare = {terms['rps'] / bare['rps']:.3f}",
        "",
    ]
    if any(oha.values()):
        out += [
            f"Fixed rate: {rate:,} req/s (about half of bare's median), "
            f"`oha -z {meta.get('rate_seconds', '6')}s -c {meta.get('connections', '32')} -q {rate} --latency-correction`, "
            f"{meta.get('rate_rounds', '?')} alternating rounds, medians:",
            "",
            "| target | achieved req/s | p50 | p99 | p99.9 | p99 added over bare | p99.9 added over bare | p99 per round | 200s / total |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        b = oha["bare"]
        for t in TARGETS:
            o = oha[t]
            if not o:
                out.append(f"| {t} | failed | | | | | | | |")
                continue
            add99 = fmt_signed_us(o["p99"] - b["p99"]) if b and t != "bare" else "—"
            add999 = fmt_signed_us(o["p999"] - b["p999"]) if b and t != "bare" else "—"
            per_round = ", ".join(fmt_us(r["p99"]) for r in o["runs"]) + (
                f" ({o['failed']} failed)" if o["failed"] else ""
            )
            out.append(
                f"| {t} | {o['rps']:,.0f} | {fmt_us(o['p50'])} | {fmt_us(o['p99'])} | {fmt_us(o['p999'])} "
                f"| {add99} | {add999} | {per_round} | {o['ok']:,} / {o['total']:,} |"
            )
        out.append("")
        not_ok = [
            f"{t}: " + ", ".join(f"{n} × {kind}" for kind, n in oha[t]["not_ok"].items())
            for t in TARGETS
            if oha[t] and oha[t]["not_ok"]
        ]
        if not_ok:
            out.append("Requests without a 200 (oha): " + "; ".join(not_ok) + ".")
            out.append("")
        out.append("Target: termsgate's p99 added over bare ≤ 100 µs.")
    else:
        out.append("Fixed-rate latency: not measured (oha could not be installed).")
    out += per_request_md(per_request, meta.get("connections", "32"), meta.get("cpu_rounds", "?"))
    out += [
        "",
        f"termsgate's access log held {log_lines:,} lines at the end of the run"
        + (f"; `termsgate_access_log_dropped_total` = {dropped}." if dropped is not None else "."),
        "",
        "![req/s and p99 per target](results.svg)",
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out))


def print_summary(wrk, oha, rate):
    print()
    print(f"{'target':<12} {'req/s':>10} {'p50':>10} {'p99':>10} {'errors':>7}")
    for t in TARGETS:
        w = wrk[t]
        print(f"{t:<12} {w['rps']:>10,.0f} {fmt_us(w['p50']):>10} {fmt_us(w['p99']):>10} {w['errors']:>7}")
    bare, terms, gate = wrk["bare"], wrk["nginx-terms"], wrk["termsgate"]
    print(f"\ntermsgate/bare        = {gate['rps'] / bare['rps']:.3f}   (target >= 0.95)")
    print(f"termsgate/nginx-terms = {gate['rps'] / terms['rps']:.3f}   (target >= 1.0)")
    if any(oha.values()):
        b = oha["bare"]
        print(f"\nfixed rate {rate:,} req/s (oha --latency-correction; medians of the rounds):")
        print(f"{'target':<12} {'p50':>10} {'p99':>10} {'p99.9':>10} {'+p99':>10} {'+p99.9':>10}")
        for t in TARGETS:
            o = oha[t]
            if not o:
                print(f"{t:<12} failed")
                continue
            a99 = fmt_signed_us(o["p99"] - b["p99"]) if b and t != "bare" else "-"
            a999 = fmt_signed_us(o["p999"] - b["p999"]) if b and t != "bare" else "-"
            print(
                f"{t:<12} {fmt_us(o['p50']):>10} {fmt_us(o['p99']):>10} {fmt_us(o['p999']):>10} {a99:>10} {a999:>10}"
            )
    else:
        print("\nfixed-rate latency: not measured (no oha)")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--rate", type=int, required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--svg", required=True)
    ap.add_argument("--meta", action="append", default=[], help="key=value")
    args = ap.parse_args()
    meta = dict(kv.split("=", 1) for kv in args.meta)

    wrk, oha = collect(args.workdir)
    log_lines, dropped = access_log_info(args.workdir)
    per_request = per_request_info(args.workdir)
    write_md(args.md, wrk, oha, args.rate, meta, log_lines, dropped, per_request)
    write_svg(args.svg, wrk, oha, args.rate, meta)
    print_summary(wrk, oha, args.rate)
    print(f"\nwrote {args.md} and {args.svg}")


if __name__ == "__main__":
    main()
