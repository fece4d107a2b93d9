#!/usr/bin/env python3
"""Summarises a scripts/qos-bench output directory.

    qos-report.py OUT_DIR
        reads OUT_DIR/setup.json and OUT_DIR/runs/{lc,bc,dpu,proxy}.<mode>.n<N>.r<R>.json;
        prints and writes OUT_DIR/report.md (medians over rounds: the LC tenant's
        p50/p99/p99.9 and their ratio to its solo run of the same mode, the BC
        tenants' total MiB/s and its ratio to QoS off, the targets' state) and
        OUT_DIR/qos.svg (LC p99 vs number of BC tenants, QoS off and on, log scale).

Standard library only, so it runs on a fresh machine.
"""
import glob
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict


def load(out):
    runs = defaultdict(lambda: defaultdict(list))  # (kind, mode, n) -> round -> rec
    for f in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
        m = re.match(r"(lc|bc|dpu|proxy)\.(on|off)\.n(\d+)\.r(\d+)\.json$", os.path.basename(f))
        if not m:
            continue
        try:
            with open(f) as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            continue
        runs[(m[1], m[2], int(m[3]))][int(m[4])] = rec
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def lc(runs, mode, n, key):
    return med([r["lat_us"][key] for r in runs[("lc", mode, n)].values()])


def bc_mib(runs, mode, n):
    return med([r["mib_s"] for r in runs[("bc", mode, n)].values()])


def cpu(runs, mode, n):
    """Median CPU use of pov-dpud and pov-proxy during the LC tenant's interval."""
    def one(name):
        return med([r.get("cpu", {}).get(name, {}).get("pct_of_cpu") for r in runs[("lc", mode, n)].values()])
    return f"{f(one('pov-dpud'))} / {f(one('pov-proxy'))}"


def ratio(a, b):
    return a / b if a is not None and b else None


def f(x, digits=0):
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def report(out):
    with open(os.path.join(out, "setup.json")) as fh:
        setup = json.load(fh)
    runs = load(out)
    counts = sorted({n for (k, _, n) in runs if k == "lc"})
    rounds = max((len(v) for v in runs.values()), default=0)
    b = setup["bc"]
    lines = [
        f"qos-bench {setup['date']} (commit {setup['commit']}), {setup['cpus']} CPUs, {setup['backend']} backend, "
        f"{rounds} round(s) of {setup['seconds']} s; LC: 4 KiB randread QD1; each BC tenant: {b['pattern']} "
        f"{b['bs']} QD{b['qd']}; QoS on: LC tenant target {setup.get('tenant_lc_target_us', '–')} µs p99 (DPU), "
        f"DPU BC window ≤ {setup['dpu_window_kib']} KiB, proxy LC target {setup['proxy_lc_target_us']} µs, "
        f"{setup['proxy_workers']} proxy workers, pinning {setup.get('pin', '–')}. Medians over rounds.",
        "",
        "| BC tenants | QoS | LC IOPS | LC p50 µs | LC p99 µs | LC p99.9 µs | p50 / solo | p99 / solo | p99.9 / solo "
        "| BC MiB/s | BC vs off | CPU % dpud / proxy |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    series = {"off": [], "on": []}
    for n in counts:
        for mode in ("off", "on"):
            if not runs[("lc", mode, n)]:
                continue
            iops = med([r["iops"] for r in runs[("lc", mode, n)].values()])
            p = {k: lc(runs, mode, n, k) for k in ("p50", "p99", "p999")}
            solo = {k: lc(runs, mode, 0, k) for k in ("p50", "p99", "p999")}
            mib = bc_mib(runs, mode, n) if n else None
            vs = ratio(mib, bc_mib(runs, "off", n)) if n else None
            rel = [ratio(p[k], solo[k]) for k in ("p50", "p99", "p999")]
            lines.append(
                f"| {n} | {mode} | {f(iops)} | {f(p['p50'])} | {f(p['p99'])} | {f(p['p999'])} | "
                + " | ".join(f(x, 2) + ("×" if x is not None else "") for x in rel)
                + f" | {f(mib)} | {f(vs, 2)} | {cpu(runs, mode, n)} |"
            )
            series[mode].append((n, p["p99"]))
    top = max(counts) if counts else 0
    if top:
        p99_on, solo_on = lc(runs, "on", top, "p99"), lc(runs, "on", 0, "p99")
        p99_off, solo_off = lc(runs, "off", top, "p99"), lc(runs, "off", 0, "p99")
        keep = ratio(bc_mib(runs, "on", top), bc_mib(runs, "off", top))
        r_on, r_off = ratio(p99_on, solo_on), ratio(p99_off, solo_off)
        ok = lambda c: "**met**" if c else "**not met**"
        lines += [
            "",
            f"Targets at {top} BC tenants: LC p99 with QoS on ≤ 1.2× its solo p99: {f(r_on, 2)}× → "
            f"{ok(r_on is not None and r_on <= 1.2)}; BC throughput with QoS on ≥ 70 % of QoS off: "
            f"{f(keep and keep * 100)} % → {ok(keep is not None and keep >= 0.7)}. With QoS off the LC tenant's "
            f"p99 is {f(r_off, 1)}× its solo p99.",
        ]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "report.md"), "w") as fh:
        fh.write(md)
    svg(series, os.path.join(out, "qos.svg"), setup)
    print(md)
    print(f"(report: {os.path.join(out, 'report.md')}, plot: {os.path.join(out, 'qos.svg')})")


def svg(series, path, setup):
    pts = [(n, v) for s in series.values() for (n, v) in s if v]
    if not pts:
        return
    W, H, L, R, T, B = 640, 400, 70, 20, 40, 50
    ns = sorted({n for n, _ in pts})
    lo = 10 ** math.floor(math.log10(min(v for _, v in pts)))
    hi = 10 ** math.ceil(math.log10(max(v for _, v in pts)))
    if hi <= lo:
        hi = lo * 10

    def X(n):
        i = ns.index(n)
        return L + (W - L - R) * (i / max(1, len(ns) - 1))

    def Y(v):
        return T + (H - T - B) * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">LC tenant p99 (4 KiB randread QD1) vs BC tenants '
         f'({setup["backend"]} backend)</text>']
    d = lo
    while d <= hi * 1.0001:
        y = Y(d)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
        o.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{d:g} µs</text>')
        d *= 10
    for n in ns:
        o.append(f'<text x="{X(n):.1f}" y="{H - B + 18}" text-anchor="middle">{n}</text>')
    o.append(f'<text x="{W / 2}" y="{H - 12}" text-anchor="middle">BC tenants</text>')
    colors = {"off": "#c0392b", "on": "#2471a3"}
    for i, (mode, s) in enumerate(series.items()):
        s = [(n, v) for n, v in s if v]
        if not s:
            continue
        path_d = " ".join(f"{'M' if j == 0 else 'L'}{X(n):.1f},{Y(v):.1f}" for j, (n, v) in enumerate(s))
        o.append(f'<path d="{path_d}" fill="none" stroke="{colors[mode]}" stroke-width="2"/>')
        for n, v in s:
            o.append(f'<circle cx="{X(n):.1f}" cy="{Y(v):.1f}" r="3" fill="{colors[mode]}"/>')
        o.append(f'<text x="{L + 10}" y="{T + 16 + 16 * i}" fill="{colors[mode]}">QoS {mode}</text>')
    o.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(o) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    report(sys.argv[1])
