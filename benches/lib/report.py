#!/usr/bin/env python3
"""Prints the table of a benches/compare.sh run from its TSV files.

Usage: report.py RESULTS_DIR

Per scenario and target, each figure is the median over the rounds. Ratios
are against NGINX in the same run (the policy scenario: against tollgate's
plain route in the same run). The issue #7 targets follow the table.
"""

import csv
import os
import statistics
import sys


def read(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def med(rows, key):
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "", "nan")]
    return statistics.median(vals) if vals else float("nan")


def mib(kib):
    return kib / 1024


def fmt_rate(v):
    return f"{v / 1000:.1f}k" if v >= 10000 else f"{v:.0f}"


def ratio(a, b):
    return f"{a / b:.2f}x" if b and b == b and a == a else "-"


def main():
    d = sys.argv[1]
    meta = dict(line.rstrip("\n").split("\t", 1) for line in open(os.path.join(d, "meta.tsv")) if "\t" in line)
    knobs = dict(kv.split("=", 1) for kv in meta.get("knobs", "").split() if "=" in kv and "'" not in kv)
    upload_mib = float(knobs.get("UPLOAD_MIB", "10"))
    wrk = read(os.path.join(d, "wrk.tsv"))
    idle = {r["target"]: r for r in read(os.path.join(d, "idle.tsv"))}
    idle10k = read(os.path.join(d, "idle10k.tsv"))
    k6 = read(os.path.join(d, "k6.tsv"))

    header = ["scenario", "target", "throughput", "vs ref", "p50 ms", "p99 ms", "CPU s/100k req", "vs ref",
              "RSS idle", "RSS peak", "notes"]
    rows = []
    agg = {}  # (scenario, target) -> medians
    order = []
    for r in wrk:
        k = (r["scenario"], r["target"])
        if k not in agg:
            agg[k] = []
            order.append(k)
        agg[k].append(r)
    m = {}
    for k in order:
        rs = agg[k]
        m[k] = {key: med(rs, key) for key in ("rps", "p50_ms", "p99_ms", "cpu_s_per_100k", "rss_peak_kib",
                                               "pss_peak_kib", "rss_start_kib", "backend_cpu_s_per_100k", "errors", "non2xx",
                                               "backend_new_conns")}
        m[k]["rounds"] = len(rs)
        m[k]["checks"] = ",".join(sorted({r["check"] for r in rs if r["check"] != "-"}))

    for (scen, t) in order:
        v = m[(scen, t)]
        ref_key = (scen, "tollgate") if scen == "policy" else (scen, "nginx")
        ref = m.get(ref_key)
        if scen == "upload":
            thr = f"{v['rps'] * upload_mib:.0f} MiB/s"
        else:
            thr = f"{fmt_rate(v['rps'])} req/s"
        is_ref = (scen, t) == ref_key
        idle_rss = idle.get(t, idle.get("tollgate:policy") if t.startswith("tollgate:") else None)
        per_unit = "s/100k"
        backend_cpu = v["backend_cpu_s_per_100k"]
        if scen == "upload":
            per_unit = "s/GiB"
            backend_cpu = backend_cpu / 100000 * 1024 / upload_mib
        notes = [f"PSS peak {mib(v['pss_peak_kib']):.1f}", f"upstreams {backend_cpu:.2f} {per_unit}",
                 f"new upstream conns {v['backend_new_conns']:.0f}"]
        if scen == "upload":
            notes.append(f"RSS at start {mib(v['rss_start_kib']):.1f}")
        if v["errors"] or v["non2xx"]:
            notes.append(f"ERRORS {v['errors']:.0f} sock / {v['non2xx']:.0f} non-2xx")
        if v["checks"]:
            notes.append(v["checks"])
        cpu = f"{v['cpu_s_per_100k']:.2f}"
        if scen == "upload":  # per 100k uploads means little: per GiB carried
            cpu = f"{v['cpu_s_per_100k'] / 100000 * 1024 / upload_mib:.2f} s/GiB"
        rows.append([scen, t, thr,
                     "ref" if is_ref else (ratio(v["rps"], ref["rps"]) if ref else "-"),
                     f"{v['p50_ms']:.2f}", f"{v['p99_ms']:.2f}", cpu,
                     "ref" if is_ref else (ratio(v["cpu_s_per_100k"], ref["cpu_s_per_100k"]) if ref else "-"),
                     f"{mib(float(idle_rss['rss_kib'])):.1f}" if idle_rss else "-",
                     f"{mib(v['rss_peak_kib']):.1f}", "; ".join(notes)])

    deltas = {}
    for r in idle10k:
        t = r["target"]
        drss = int(r["rss_after_kib"]) - int(r["rss_before_kib"])
        dpss = int(r["pss_after_kib"]) - int(r["pss_before_kib"])
        n = int(r["conns_ok"]) or 1
        deltas[t] = (drss, dpss)
    for r in idle10k:
        t = r["target"]
        drss, dpss = deltas[t]
        n = int(r["conns_ok"]) or 1
        ref = deltas.get("nginx")
        notes = f"{r['conns_ok']} conns held ({r['conns_failed']} failed): +{mib(drss):.1f} MiB RSS " \
                f"({drss * 1024 / n:.0f} B/conn), +{mib(dpss):.1f} MiB PSS"
        rows.append(["idle10k", t, "-", "ref" if t == "nginx" else (ratio(drss, ref[0]) if ref else "-"),
                     "-", "-", "-", "-", f"{mib(int(r['rss_before_kib'])):.1f}", f"{mib(int(r['rss_after_kib'])):.1f}",
                     notes])

    k6m = {r["target"]: r for r in k6}
    for r in k6:
        t = r["target"]
        ref = k6m.get("nginx")
        achieved = int(r["requests"]) / float(r["duration_s"])
        rows.append(["p99", t, f"{achieved:.0f} req/s", "ref" if t == "nginx" else (
            ratio(float(r["p99_ms"]), float(ref["p99_ms"])) + " p99" if ref else "-"),
            f"{float(r['p50_ms']):.2f}", f"{float(r['p99_ms']):.2f}", "-", "-", "-", "-",
            f"k6 at {r['rate']}/s: p95 {float(r['p95_ms']):.2f} ms, max {float(r['max_ms']):.1f} ms, "
            f"failed {float(r['failed_rate']) * 100:.2f}%, dropped {r['dropped']}"])

    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    print(f"tollgate vs NGINX vs HAProxy, {meta.get('date', '')}, {meta.get('host', '')}")
    print(f"{meta.get('knobs', '')}")
    print(f"load average before/after: {meta.get('load_before', '?')} / {meta.get('load_after', '?')}")
    print()
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))
    print()
    print("throughput and CPU s/100k (the proxy's own utime+stime per 100k requests) are medians over rounds;")
    print("'vs ref' is against NGINX (policy: against tollgate's plain route). RSS in MiB, summed over the")
    print("proxy's processes (NGINX: master + workers); idle = before any load, peak = 0.5 s samples during the run.")

    # Each round runs the targets back to back, so a ratio within one round is
    # the least disturbed by the host's drift; their spread shows how far the
    # medians above can be trusted.
    by_round = []
    for (scen, t) in order:
        ref_t = "tollgate" if scen == "policy" else "nginx"
        if t == ref_t:
            continue
        ref_by_round = {r["round"]: r for r in agg.get((scen, ref_t), [])}
        pairs = [(r, ref_by_round[r["round"]]) for r in agg[(scen, t)] if r["round"] in ref_by_round]
        if pairs:
            thr = " ".join(ratio(float(a["rps"]), float(b["rps"])) for a, b in pairs)
            cpu = " ".join(ratio(float(a["cpu_s_per_100k"]), float(b["cpu_s_per_100k"])) for a, b in pairs)
            by_round.append(f"  {scen:8} {t:18} throughput {thr:24} CPU per request {cpu}")
    if by_round:
        print()
        print("ratios round by round (against the same reference as 'vs ref'):")
        print("\n".join(by_round))

    # Issue #7 targets, where this run has the figures.
    verdicts = []

    def check(name, ok, detail):
        verdicts.append(f"  [{'met' if ok else 'NOT met'}] {name}: {detail}")

    def get(scen, t):
        return m.get((scen, t))

    tg, ng = get("plain", "tollgate"), get("plain", "nginx")
    if tg and ng:
        check("plain req/s >= 1.25x NGINX", tg["rps"] >= 1.25 * ng["rps"], ratio(tg["rps"], ng["rps"]))
        check("plain CPU/100k <= 0.8x NGINX", tg["cpu_s_per_100k"] <= 0.8 * ng["cpu_s_per_100k"],
              ratio(tg["cpu_s_per_100k"], ng["cpu_s_per_100k"]))
        check("RSS under load <= NGINX's (PSS compared)", tg["pss_peak_kib"] <= ng["pss_peak_kib"],
              f"{mib(tg['pss_peak_kib']):.1f} vs {mib(ng['pss_peak_kib']):.1f} MiB PSS "
              f"(RSS {mib(tg['rss_peak_kib']):.1f} vs {mib(ng['rss_peak_kib']):.1f})")
    if "tollgate" in k6m and "nginx" in k6m:
        a, b = float(k6m["tollgate"]["p99_ms"]), float(k6m["nginx"]["p99_ms"])
        check(f"p99 at {k6m['nginx']['rate']}/s <= NGINX's", a <= b, f"{a:.2f} vs {b:.2f} ms")
    pol, pl = get("policy", "tollgate:policy"), get("policy", "tollgate")
    if pol and pl:
        check("policy route >= 0.85x tollgate plain", pol["rps"] >= 0.85 * pl["rps"], ratio(pol["rps"], pl["rps"]))
    if "tollgate" in idle:
        r = float(idle["tollgate"]["rss_kib"])
        check("idle RSS <= 12 MiB", r <= 12 * 1024, f"{mib(r):.1f} MiB")
    if "tollgate" in deltas and "nginx" in deltas:
        check("10k idle conns add <= NGINX's (RSS)", deltas["tollgate"][0] <= deltas["nginx"][0],
              f"+{mib(deltas['tollgate'][0]):.1f} vs +{mib(deltas['nginx'][0]):.1f} MiB "
              f"(PSS +{mib(deltas['tollgate'][1]):.1f} vs +{mib(deltas['nginx'][1]):.1f})")
    for scen, what in (("body64k", "64 KiB response"), ("upload", f"{upload_mib:.0f} MiB upload")):
        a, b = get(scen, "tollgate"), get(scen, "nginx")
        if a and b:
            check(f"{what} throughput >= 0.9x NGINX", a["rps"] >= 0.9 * b["rps"], ratio(a["rps"], b["rps"]))
    up = get("upload", "tollgate")
    if up:
        # Buffering whole bodies would add about UPLOAD_CONNS bodies; streaming
        # adds buffers only. The start is read after the warm-up run.
        check(f"upload in constant memory (peak - start of run < one {upload_mib:.0f} MiB body)",
              up["rss_peak_kib"] - up["rss_start_kib"] < upload_mib * 1024,
              f"peak {mib(up['rss_peak_kib']):.1f} MiB, at start {mib(up['rss_start_kib']):.1f} MiB")
    if verdicts:
        print()
        print("issue #7 targets (this run; noisy unless the host was quiet):")
        print("\n".join(verdicts))


if __name__ == "__main__":
    main()
