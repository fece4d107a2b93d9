#!/usr/bin/env python3
"""Checks PoV's figures as a Prometheus server scraped them (scripts/prometheus-test).

Queries the server's HTTP API (/api/v1/query) and compares with what the workload did:
`--bytes` bytes written into PoV and read back out by `pov-host cp -r` (`--files`
files), one stat of a missing file. Each check is retried until it holds or a deadline
passes (scrapes come once a second, so the last figures can lag a little); a check that
never holds prints what Prometheus answered and fails the run.
"""

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

DEADLINE_S = 60


def query(url, expr):
    """The instant vector of `expr` as [(labels, float)]."""
    q = urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(f"{url}/api/v1/query?{q}", timeout=10) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body}")
    return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]


def scalar(url, expr):
    """The single value of `expr`, or None if the vector is empty."""
    v = query(url, expr)
    if len(v) > 1:
        raise RuntimeError(f"{expr}: {len(v)} series, one expected: {v}")
    return v[0][1] if v else None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--bytes", type=int, required=True)
    ap.add_argument("--files", type=int, required=True)
    ap.add_argument("--device", required=True)
    a = ap.parse_args()
    t, d, n = a.tenant, a.device, a.bytes
    sel = f'tenant="{t}"'
    checks = [
        ("both daemons are up", f'sum(up{{job=~"pov-dpu|pov-proxy"}})', lambda v: v == 2),
        ("DPU: bytes written for the tenant", f"sum(pov_dpu_written_bytes_total{{{sel},device=\"{d}\"}})",
         lambda v: v == n),
        ("DPU: bytes read for the tenant", f"sum(pov_dpu_read_bytes_total{{{sel},device=\"{d}\"}})",
         lambda v: v == n),
        ("proxy: bytes written for the tenant", f"sum(pov_proxy_written_bytes_total{{{sel}}})", lambda v: v == n),
        ("proxy: bytes read for the tenant", f"sum(pov_proxy_read_bytes_total{{{sel}}})", lambda v: v == n),
        ("every file was opened at least twice (in, out)", f'sum(pov_dpu_requests_total{{{sel},op="open"}})',
         lambda v: v >= 2 * a.files),
        ("writes: as many at the proxy as the DPU forwarded",
         f'sum(pov_proxy_requests_total{{{sel},op="write"}}) - sum(pov_dpu_requests_total{{{sel},op="write"}})',
         lambda v: v == 0),
        ("writes: at least one per file", f'sum(pov_dpu_requests_total{{{sel},op="write"}})',
         lambda v: v >= a.files),
        ("the missing file is a not_found at the DPU", f'sum(pov_dpu_errors_total{{{sel},status="not_found"}})',
         lambda v: v >= 1),
        ("... and at the proxy", f'sum(pov_proxy_errors_total{{{sel},status="not_found"}})', lambda v: v >= 1),
        ("DPU histogram counts every request",
         f"sum(pov_dpu_request_duration_seconds_count{{{sel}}}) - sum(pov_dpu_requests_total{{{sel}}})",
         lambda v: v == 0),
        ("proxy histogram counts every request",
         f"sum(pov_proxy_request_duration_seconds_count{{{sel}}}) - sum(pov_proxy_requests_total{{{sel}}})",
         lambda v: v == 0),
        ("DPU p99 latency is a real figure (s)",
         f"histogram_quantile(0.99, sum by (le) (pov_dpu_request_duration_seconds_bucket{{{sel}}}))",
         lambda v: 0 < v < 10),
        ("block WRITE bytes on the device cover the data", f'sum(pov_dpu_bdev_bytes_total{{bdev="{d}",type="write"}})',
         lambda v: v >= n),
        ("block READ bytes on the device cover the data", f'sum(pov_dpu_bdev_bytes_total{{bdev="{d}",type="read"}})',
         lambda v: v >= n),
        ("the CLI's sessions are closed", f"sum(pov_dpu_sessions{{{sel}}})", lambda v: v == 0),
        ("nothing in flight", f"sum(pov_dpu_in_flight{{{sel}}}) + sum(pov_proxy_in_flight{{{sel}}})",
         lambda v: v == 0),
        ("no failed authentication", "sum(pov_dpu_device_auth_failures_total)", lambda v: v == 0),
        ("the DPU reactor worked", "sum(pov_dpu_reactor_busy_seconds_total)", lambda v: v > 0),
        ("the proxy reactor used CPU", "sum(pov_proxy_reactor_cpu_seconds_total)", lambda v: v > 0),
    ]
    failed = 0
    deadline = time.monotonic() + DEADLINE_S
    for name, expr, ok in checks:
        while True:
            v = scalar(a.url, expr)
            if v is not None and ok(v):
                print(f"ok   {name}: {expr} = {int(v) if v == int(v) else v}")
                break
            if time.monotonic() > deadline:
                print(f"FAIL {name}: {expr} = {v}", file=sys.stderr)
                failed += 1
                break
            time.sleep(0.5)
    if failed:
        print(f"{failed} of {len(checks)} checks failed", file=sys.stderr)
        return 1
    print(f"all {len(checks)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
