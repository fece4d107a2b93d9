#!/usr/bin/env python3
"""Summarises a scripts/bench-compare output directory.

    bench-report.py OUT_DIR REPORT_MD PLOT_SVG
        reads OUT_DIR/runs/<section>.<placement>.<variant>.r<round>.json (pov-bench JSON
        records), machine.json, idle.json and callgrind.json; writes a Markdown report
        (medians over rounds, ratios, the state of every target) and an SVG plot of the
        latency distributions (the median-IOPS round of each plotted series).
    bench-report.py --splice DOC REPORT_MD
        replaces the text between the markers <!-- bench-compare:begin --> and
        <!-- bench-compare:end --> in DOC with REPORT_MD.

Standard library only (no matplotlib), so it runs on a fresh machine.
"""
import glob
import json
import math
import os
import re
import statistics
import sys
from collections import defaultdict

BEGIN, END = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"


def load_runs(out):
    runs = defaultdict(list)  # (section, placement, variant) -> [record]
    for f in sorted(glob.glob(os.path.join(out, "runs", "*.json"))):
        m = re.match(r"(\w+)\.(\w+)\.(.+)\.r(\d+)\.json$", os.path.basename(f))
        if not m:
            continue
        with open(f) as fh:
            rec = json.load(fh)
        rec["_round"] = int(m.group(4))
        runs[(m.group(1), m.group(2), m.group(3))].append(rec)
    return runs


def med(recs, key):
    return statistics.median(key(r) for r in recs)


def summary(recs):
    s = {
        "n": len(recs),
        "iops": med(recs, lambda r: r["iops"]),
        "mib_s": med(recs, lambda r: r["mib_s"]),
        "p50": med(recs, lambda r: r["lat_us"]["p50"]),
        "p99": med(recs, lambda r: r["lat_us"]["p99"]),
        "p999": med(recs, lambda r: r["lat_us"]["p999"]),
        "iops_min": min(r["iops"] for r in recs),
        "iops_max": max(r["iops"] for r in recs),
        "cpu": {},
    }
    names = sorted({n for r in recs for n in r["cpu"]})
    for n in names:
        have = [r for r in recs if n in r["cpu"]]
        s["cpu"][n] = (med(have, lambda r: r["cpu"][n]["pct_of_cpu"]), med(have, lambda r: r["cpu"][n]["us_per_io"]))
    return s


def median_round(recs):
    srt = sorted(recs, key=lambda r: r["iops"])
    return srt[len(srt) // 2]


def fmt_iops(x):
    return f"{x / 1000:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"


def table(runs, section, placement, title):
    keys = [k for k in runs if k[0] == section and k[1] == placement]
    if not keys:
        return []
    # Keep the order in which the script ran the variants (round 1 file order by time).
    keys.sort(key=lambda k: min(os.path.getmtime(r["_file"]) for r in runs[k]) if "_file" in runs[k][0] else k[2])
    lines = [f"**{title}**", "",
             "| variant | IOPS (median) | range over rounds | MiB/s | p50 µs | p99 µs | p99.9 µs | CPU: % of a CPU / µs per IO |",
             "|---|---|---|---|---|---|---|---|"]
    for k in keys:
        s = summary(runs[k])
        cpu = "; ".join(f"{n} {p:.0f}% / {u:.2f}" for n, (p, u) in s["cpu"].items())
        lines.append(f"| {k[2]} | {fmt_iops(s['iops'])} | {fmt_iops(s['iops_min'])}–{fmt_iops(s['iops_max'])} | "
                     f"{s['mib_s']:.1f} | {s['p50']:.1f} | {s['p99']:.1f} | {s['p999']:.1f} | {cpu} |")
    lines.append("")
    return lines


def get(runs, section, placement, variant):
    recs = runs.get((section, placement, variant))
    return summary(recs) if recs else None


def targets(runs, idle, cg):
    out = ["| target | measured | state |", "|---|---|---|"]

    def row(name, measured, ok):
        state = "MISSING (not measured in this run)" if ok is None else ("met" if ok else "NOT met")
        out.append(f"| {name} | {measured} | {state} |")

    for pl, plname in (("same", "one CPU"), ("split", "split")):
        v, q = get(runs, "vol", pl, "nullvol-qd32"), get(runs, "vol", pl, "qsd-iothread-qd32")
        if v and q:
            r = v["iops"] / q["iops"]
            row(f"null volume ≥ 1.5× qsd+iothread IOPS, 4 KiB randread QD32 ({plname})",
                f"{fmt_iops(v['iops'])} vs {fmt_iops(q['iops'])} = {r:.2f}×", r >= 1.5)
        else:
            row(f"null volume ≥ 1.5× qsd+iothread IOPS, 4 KiB randread QD32 ({plname})",
                "qsd+iothread " + (fmt_iops(q["iops"]) if q else "n/a") + ", null volume not available", None)
        v, q = get(runs, "vol", pl, "nullvol-qd1"), get(runs, "vol", pl, "qsd-iothread-qd1")
        if v and q:
            row(f"null volume p50 ≤ qsd+iothread p50, QD1 ({plname})", f"{v['p50']:.1f} µs vs {q['p50']:.1f} µs",
                v["p50"] <= q["p50"])
        else:
            row(f"null volume p50 ≤ qsd+iothread p50, QD1 ({plname})", "null volume not available", None)
    f, v = get(runs, "file", "same", "null-randread-4k-qd32"), get(runs, "file", "same", "nullvol-randread-4k-qd32")
    if f and v:
        r = f["iops"] / v["iops"]
        row("PoV file reads ≥ 40% of null volume IOPS, 4 KiB QD32, proxy null backend",
            f"{fmt_iops(f['iops'])} vs {fmt_iops(v['iops'])} = {100 * r:.0f}%", r >= 0.4)
    else:
        row("PoV file reads ≥ 40% of null volume IOPS, 4 KiB QD32, proxy null backend",
            ("PoV file " + fmt_iops(f["iops"]) if f else "n/a") + ", null volume not available", None)
    on, off = get(runs, "gather", "same", "gathering-on"), get(runs, "gather", "same", "gathering-off")
    if on and off:
        r = on["iops"] / off["iops"]
        row("gathering on ≥ +15% IOPS vs off, QD32", f"{fmt_iops(on['iops'])} vs {fmt_iops(off['iops'])} = {100 * (r - 1):+.0f}%",
            r >= 1.15)
    else:
        row("gathering on ≥ +15% IOPS vs off, QD32", "gathering not implemented in pov-dpud", None)
    if idle:
        worst = max(idle["idle_pct"].items(), key=lambda kv: kv[1])
        row("idle daemons < 2% of a CPU each",
            ", ".join(f"{k} {v:.2f}%" for k, v in idle["idle_pct"].items()), worst[1] < 2.0)
        firsts = idle.get("first_io_us", {})
        if firsts:
            mx = max(firsts.values())
            row("first request after 2 s idle without a multi-ms stall",
                ", ".join(f"{k} {v:.0f} µs" for k, v in firsts.items()), mx < 1000.0)
    return out


# ---- SVG plot ----------------------------------------------------------------------------
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def svg_plot(series, path, title):
    """series: [(label, [[q, us], ...])]. x: quantile on a 'nines' scale, y: log10 µs."""
    W, H, L, R, T, B = 820, 480, 70, 240, 40, 50
    pw, ph = W - L - R, H - T - B

    def xq(q):
        return -math.log10(max(1 - q, 1e-4))  # 0 .. 4 ("nines")

    ys = [us for _, pts in series for _, us in pts if us > 0]
    if not ys:
        ys = [1, 10]
    lo, hi = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
    if hi == lo:
        hi += 1

    def X(q):
        return L + pw * xq(q) / 4.0

    def Y(us):
        return T + ph * (1 - (math.log10(max(us, 10 ** lo)) - lo) / (hi - lo))

    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L}" y="22" font-size="14">{title}</text>']
    for e in range(lo, hi + 1):
        y = Y(10 ** e)
        s.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#ddd"/>')
        s.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{10 ** e:g} µs</text>')
    for q, lab in ((0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"), (0.9999, "p99.99")):
        x = X(q)
        s.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{T + ph}" stroke="#eee"/>')
        s.append(f'<text x="{x:.1f}" y="{T + ph + 16}" text-anchor="middle">{lab}</text>')
    s.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    s.append(f'<text x="{L + pw / 2}" y="{H - 8}" text-anchor="middle">percentile</text>')
    for i, (label, pts) in enumerate(series):
        c = COLORS[i % len(COLORS)]
        d = " ".join(f"{X(q):.1f},{Y(us):.1f}" for q, us in pts if q < 1.0)
        s.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{d}"/>')
        ly = T + 14 + 18 * i
        s.append(f'<line x1="{L + pw + 12}" y1="{ly - 4}" x2="{L + pw + 32}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
        s.append(f'<text x="{L + pw + 38}" y="{ly}">{label}</text>')
    s.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(s) + "\n")


def report(out, md_path, svg_path):
    runs = load_runs(out)
    for k, recs in runs.items():
        for r in recs:
            r["_file"] = os.path.join(out, "runs", f"{k[0]}.{k[1]}.{k[2]}.r{r['_round']}.json")

    def opt(name):
        p = os.path.join(out, name)
        return json.load(open(p)) if os.path.exists(p) else None

    machine, idle, cg = opt("machine.json") or {}, opt("idle.json"), opt("callgrind.json")
    L = [f"Run of `scripts/bench-compare` on {machine.get('date', '?')}, commit `{machine.get('commit', '?')}`: "
         f"{machine.get('ncpu', '?')} × {machine.get('cpu', '?')}, {machine.get('os', '?')}, kernel {machine.get('kernel', '?')}, "
         f"{machine.get('qsd', '')}. Medians of {machine.get('rounds', '?')} rounds of {machine.get('seconds', '?')} s "
         f"(after 0.5 s warm-up), variants alternating within each round. Placement *same*: servers and client on CPU "
         f"{machine.get('server_cpu', '?')}; *split*: servers on CPU {machine.get('server_cpu', '?')}, client on CPU "
         f"{machine.get('client_cpu', '?')}. Client: `pov-bench` (libblkio, one queue, sleeping in `do_io` until a completion).",
         "", "### Targets", ""]
    L += targets(runs, idle, cg)
    L += ["", "### Results", ""]
    L += table(runs, "vol", "same", "Block device, 4 KiB random read, one CPU (null volume vs qemu-storage-daemon null-co)")
    L += table(runs, "vol", "split", "Block device, 4 KiB random read, split placement")
    L += table(runs, "file", "same", "PoV file IO through the whole path, one CPU (null-/local- = proxy backend)")
    L += table(runs, "gather", "same", "Gathering on vs off, PoV 4 KiB random read QD32")
    if cg:
        L += ["**Instructions per IO in pov-dpud** (callgrind, (Ir(5000 IOs) − Ir(1000 IOs)) / 4000; repeats exactly)", "",
              "| workload | instructions per IO |", "|---|---|"]
        L += [f"| {k} | {v:,} |" for k, v in cg.items()]
        L.append("")
    if idle:
        L += ["**Idle**: CPU of each daemon over 3 s with nothing to do: " +
              ", ".join(f"{k} {v:.2f}%" for k, v in idle["idle_pct"].items()) +
              ". Latency of the first request after 2 s idle: " +
              ", ".join(f"{k} {v:.0f} µs" for k, v in idle.get("first_io_us", {}).items()) + ".", ""]
    L.append("![latency distribution](perf/latency.svg)")
    with open(md_path, "w") as fh:
        fh.write("\n".join(L) + "\n")
    series = []
    for sec, pl, var, lab in (("vol", "same", "nullvol-qd1", "null volume QD1"),
                              ("vol", "same", "qsd-iothread-qd1", "qsd+iothread QD1"),
                              ("vol", "same", "nullvol-qd32", "null volume QD32"),
                              ("vol", "same", "qsd-iothread-qd32", "qsd+iothread QD32"),
                              ("file", "same", "null-randread-4k-qd1", "PoV file (null) QD1"),
                              ("file", "same", "null-randread-4k-qd32", "PoV file (null) QD32"),
                              ("file", "same", "local-randread-4k-qd32", "PoV file (local) QD32")):
        recs = runs.get((sec, pl, var))
        if recs:
            series.append((lab, median_round(recs)["quantiles"]))
    svg_plot(series, svg_path, f"4 KiB random read latency, one CPU ({machine.get('date', '')})")


def splice(doc, md):
    text = open(doc).read() if os.path.exists(doc) else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        sys.exit(f"{doc}: markers {BEGIN} / {END} not found")
    new = open(md).read()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(doc, "w") as fh:
        fh.write(head + BEGIN + "\n" + new + END + tail)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--splice":
        splice(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 4:
        report(*sys.argv[1:])
    else:
        sys.exit(__doc__)
