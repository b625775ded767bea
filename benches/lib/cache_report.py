#!/usr/bin/env python3
"""Prints the table of a benches/cache-hit.sh run from its TSV files.

Usage: cache_report.py RESULTS_DIR

Per target, each figure is the median over the rounds. Then the ratios the
cache issue asks for (tollgate's cached route against its plain route and
against NGINX's proxy_cache), from the medians and round by round, and
whether its targets are met in this run.
"""

import csv
import os
import statistics
import sys

# (numerator, denominator, what, the issue's minimum for req/s or None)
RATIOS = [
    ("tollgate:cached", "tollgate:plain", "tollgate cached / tollgate plain", 2.0),
    ("tollgate:cached", "nginx:cache", "tollgate cached / NGINX proxy_cache", 1.0),
    ("nginx:cache", "nginx:plain", "NGINX proxy_cache / NGINX plain", None),
    ("tollgate:plain", "nginx:plain", "tollgate plain / NGINX plain", None),
]
CACHED = ("tollgate:cached", "nginx:cache")
WRK_BUSY = 85  # % of the load generator's core above which wrk may be what limits req/s


def read(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def num(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def med(rows, key):
    vals = [v for v in (num(r.get(key)) for r in rows) if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec=".0f"):
    return "-" if v is None else format(v, spec)


def ratio(a, b):
    return None if a is None or not b else a / b


def table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(r) for r in rows])


def main():
    d = sys.argv[1]
    meta = {}
    for line in open(os.path.join(d, "meta.tsv")):
        if "\t" in line:
            k, v = line.rstrip("\n").split("\t", 1)
            meta[k] = v
    wrk = read(os.path.join(d, "wrk.tsv"))
    idle = {r["target"]: r for r in read(os.path.join(d, "idle.tsv"))}

    targets, by = [], {}
    for r in wrk:
        if r["target"] not in by:
            targets.append(r["target"])
            by[r["target"]] = []
        by[r["target"]].append(r)
    m = {}
    for t in targets:
        rs = by[t]
        m[t] = {k: med(rs, k) for k in ("rps", "p50_ms", "p99_ms", "cpu_s_per_100k", "backend_cpu_s_per_100k",
                                        "upstream_requests", "upstream_share", "rss_peak_kib", "pss_peak_kib",
                                        "sut_busy_pct", "loadgen_busy_pct")}
        rps = [num(r["rps"]) for r in rs]
        m[t]["spread"] = 100 * (max(rps) - min(rps)) / m[t]["rps"] if m[t]["rps"] else None
        m[t]["errors"] = sum(int(num(r["errors"]) or 0) + int(num(r["non2xx"]) or 0) for r in rs)
        m[t]["rounds"] = len(rs)

    print(f"tollgate response cache vs its plain route vs NGINX proxy_cache, {meta.get('date', '')}, {meta.get('host', '')}")
    for k in ("tollgate", "nginx", "wrk", "knobs"):
        if k in meta:
            print(f"{k}: {meta[k]}")
    print(f"load average before/after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')}")
    if os.path.exists(os.path.join(d, "checks.txt")):
        print("checks: " + "; ".join(l.strip().replace("\t", ": ") for l in open(os.path.join(d, "checks.txt")) if l.strip()))
    if "tollgate_note" in meta:
        print(f"NOTE: {meta['tollgate_note']}; tollgate:cached was not measured.")
    print()

    rows = []
    for t in targets:
        v = m[t]
        i = idle.get(t)
        rows.append([
            t, fmt(v["rps"]), fmt(v["spread"], ".1f") + "%", fmt(v["p50_ms"], ".2f"), fmt(v["p99_ms"], ".2f"),
            fmt(v["cpu_s_per_100k"], ".3f"), fmt(v["upstream_requests"]),
            fmt(v["upstream_share"] is not None and 100 * v["upstream_share"] or 0.0, ".2f") + "%",
            fmt(v["backend_cpu_s_per_100k"], ".3f"),
            fmt(num(i["rss_kib"]) / 1024, ".1f") if i else "-",
            f"{fmt(v['rss_peak_kib'] and v['rss_peak_kib'] / 1024, '.1f')} ({fmt(v['pss_peak_kib'] and v['pss_peak_kib'] / 1024, '.1f')})",
            fmt(v["sut_busy_pct"]) + "%", fmt(v["loadgen_busy_pct"]) + "%", str(v["errors"]),
        ])
    print(table(["target", "req/s", "spread", "p50 ms", "p99 ms", "CPU s/100k req", "upstream reqs/run",
                 "of requests", "upstreams s/100k", "RSS idle", "RSS peak (PSS)", "SUT core", "wrk core", "errors"], rows))
    print()
    print("medians over the rounds. CPU s/100k req: the proxy's own utime+stime (all its processes and threads)")
    print("per 100,000 requests, the figure that depends least on how the two cores are shared. upstream reqs/run:")
    print("requests the backends answered during a measured run (a cached target should need a few per TTL).")
    print("RSS in MiB. SUT core / wrk core: how busy the proxy+backend CPU and the load generator's CPU were.")

    lines = []
    for a, b, what, _ in RATIOS:
        if a in m and b in m:
            lines.append(f"  {what:38} req/s {fmt(ratio(m[a]['rps'], m[b]['rps']), '.2f')}x   "
                         f"CPU per request {fmt(ratio(m[a]['cpu_s_per_100k'], m[b]['cpu_s_per_100k']), '.2f')}x")
    if lines:
        print("\nratios (medians; CPU per request: lower is better):")
        print("\n".join(lines))

    lines = []
    for a, b, what, _ in RATIOS:
        if a in m and b in m:
            rb = {r["round"]: r for r in by[b]}
            pairs = [(r, rb[r["round"]]) for r in by[a] if r["round"] in rb]
            thr = " ".join(fmt(ratio(num(x["rps"]), num(y["rps"])), ".2f") for x, y in pairs)
            cpu = " ".join(fmt(ratio(num(x["cpu_s_per_100k"]), num(y["cpu_s_per_100k"])), ".2f") for x, y in pairs)
            lines.append(f"  {what:38} req/s {thr:20} CPU per request {cpu}")
    if lines:
        print("\nratios round by round (the targets of a round run back to back):")
        print("\n".join(lines))

    def not_hits(t):
        return t in CACHED and m[t]["upstream_share"] is not None and m[t]["upstream_share"] > 0.01

    def wrk_bound(t):
        return m[t]["loadgen_busy_pct"] is not None and m[t]["loadgen_busy_pct"] >= WRK_BUSY

    print("\nthe issue's targets (this run; noisy unless the host was quiet):")
    for a, b, what, need in RATIOS:
        if need is None:
            continue
        if a not in m or b not in m:
            missing = ", ".join(t for t in (a, b) if t not in m)
            print(f"  [not measured] {what} req/s >= {need:g}x: no {missing} in this run")
            continue
        r = ratio(m[a]["rps"], m[b]["rps"])
        c = ratio(m[a]["cpu_s_per_100k"], m[b]["cpu_s_per_100k"])
        bad = [t for t in (a, b) if not_hits(t)]
        if bad:
            verdict = f"invalid: {', '.join(bad)} not answered from the cache"
        else:
            verdict = "met" if r is not None and r >= need else "NOT met"
        capped = [t for t in (a, b) if wrk_bound(t)]
        note = f" (wrk-limited: {', '.join(capped)})" if capped else ""
        print(f"  [{verdict}] {what} req/s >= {need:g}x: {fmt(r, '.2f')}x{note}")
        cverdict = "met" if not bad and c is not None and c <= 1 / need else ("invalid" if bad else "NOT met")
        print(f"      its CPU equivalent, CPU per request <= {1 / need:g}x: [{cverdict}] {fmt(c, '.2f')}x")

    warn = []
    for t in targets:
        v = m[t]
        if wrk_bound(t):
            warn.append(f"{t}: wrk's core was {v['loadgen_busy_pct']:.0f}% busy, so its req/s may be wrk's limit "
                        f"rather than the proxy's; compare CPU per request (more load needs more load-generator cores: LOADGEN_CPUS, WRK_THREADS)")
        if t in CACHED and v["upstream_share"] is not None and v["upstream_share"] > 0.01:
            warn.append(f"{t}: {100 * v['upstream_share']:.1f}% of its requests reached the upstreams: not a cache-hit run")
        if v["errors"]:
            warn.append(f"{t}: {v['errors']} socket errors or non-2xx answers")
    if warn:
        print("\nwarnings:")
        print("\n".join("  " + w for w in warn))


if __name__ == "__main__":
    main()
