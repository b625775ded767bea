#!/usr/bin/env python3
"""The soak's table and verdicts, from the files benches/soak.sh leaves in its
run directory (samples.tsv, k6-summary.json, k6-failures.log, reloads.tsv,
access.log, metrics-before/after.txt, start, end). Prints markdown; with
--docs FILE, replaces FILE's soak section (between the `<!-- soak:begin -->`
and `<!-- soak:end -->` lines) with it. Exit status 0 when every verdict holds.
"""

import argparse
import collections
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from report_util import machine_line, metric_sum, parse_metrics, replace_section  # noqa: E402


def read_tsv(path):
    with open(path) as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    return rows[1:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--warmup", type=float, default=300)
    ap.add_argument("--window", type=float, default=60)
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--reload-every", type=float, default=10)
    ap.add_argument("--rss-tol", type=float, default=5)
    ap.add_argument("--fd-tol", type=float, default=5)
    ap.add_argument("--fd-tol-abs", type=float, default=3)
    ap.add_argument("--p99-tol", type=float, default=1.5)
    ap.add_argument("--compare", type=int, default=5, help="windows compared at each end after warm-up")
    ap.add_argument("--binary", default="")
    ap.add_argument("--docs")
    ap.add_argument("--note", default="", help="a sentence added under the run line (what else the machine ran)")
    a = ap.parse_args()
    d = a.run_dir

    start = float(open(os.path.join(d, "start")).read())
    end = float(open(os.path.join(d, "end")).read())
    all_samples = [(float(t) - start, int(r), int(f)) for t, r, f in read_tsv(os.path.join(d, "samples.tsv"))]
    # under load only: the first sample is taken before k6 starts, the last after it ends
    samples = [s for s in all_samples if 0 <= s[0] <= end - start]
    reloads = [(float(t) - start, s) for t, s in read_tsv(os.path.join(d, "reloads.tsv"))]
    summary = json.load(open(os.path.join(d, "k6-summary.json")))
    metrics = summary["metrics"]

    n_windows = 0
    while f"http_req_duration{{win:{n_windows}}}" in metrics:
        n_windows += 1
    windows = []
    for w in range(n_windows):
        dur = metrics[f"http_req_duration{{win:{w}}}"]["values"]
        reqs = metrics.get(f"http_reqs{{win:{w}}}", {}).get("values", {}).get("count", 0)
        if not reqs:
            continue
        fail_rate = metrics.get(f"http_req_failed{{win:{w}}}", {}).get("values", {}).get("rate", 0)
        lo, hi = w * a.window, (w + 1) * a.window
        ws = [s for s in samples if lo <= s[0] < hi]
        windows.append({
            "w": w,
            "from": lo,
            "reqs": int(reqs),
            "failed": round(fail_rate * reqs),
            "p50": dur["med"],
            "p99": dur["p(99)"],
            "max": dur["max"],
            "rss": statistics.mean(s[1] for s in ws) / 1024 if ws else float("nan"),
            "fds": statistics.mean(s[2] for s in ws) if ws else float("nan"),
            "fds_max": max(s[2] for s in ws) if ws else 0,
            "reloads": sum(1 for t, s in reloads if lo <= t < hi),
            "reloads_bad": sum(1 for t, s in reloads if lo <= t < hi and s != "200"),
        })

    # failures by gateway error code / k6 error, from the failure log
    fails = collections.Counter()
    fpath = os.path.join(d, "k6-failures.log")
    if os.path.exists(fpath):
        for line in open(fpath):
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("e"):
                fails[f"k6 {r.get('em', r['e'])}"] += 1
            elif 200 <= r["s"] < 300:
                fails["2xx with a wrong body length"] += 1
            else:
                fails[f"{r['s']} {r.get('c') or '-'}"] += 1
    access_errors = collections.Counter()
    apath = os.path.join(d, "access.log")
    if os.path.exists(apath):
        with open(apath) as f:
            for line in f:
                if '"error":null' in line:
                    continue
                try:
                    access_errors[json.loads(line).get("error")] += 1
                except ValueError:
                    access_errors["unparsable line"] += 1
    mb = parse_metrics(open(os.path.join(d, "metrics-before.txt")).read())
    ma = parse_metrics(open(os.path.join(d, "metrics-after.txt")).read())
    reload_ok = metric_sum(ma, "tollgate_config_reloads_total", result="success") - metric_sum(mb, "tollgate_config_reloads_total", result="success")
    reload_fail = metric_sum(ma, "tollgate_config_reloads_total", result="failure") - metric_sum(mb, "tollgate_config_reloads_total", result="failure")

    total = int(metrics["http_reqs"]["values"]["count"])
    failed = round(metrics["http_req_failed"]["values"]["rate"] * total)
    dropped = int(metrics.get("dropped_iterations", {}).get("values", {}).get("count", 0))

    after = [w for w in windows if w["from"] >= a.warmup]
    k = min(a.compare, len(after) // 2)
    verdicts = []
    ok_all = True
    if k == 0:
        verdicts.append(("not judged", f"fewer than 2 windows after the {a.warmup:.0f} s warm-up"))
        ok_all = False
    else:
        first, last = after[:k], after[-k:]
        rss0, rss1 = statistics.mean(w["rss"] for w in first), statistics.mean(w["rss"] for w in last)
        rss_after = [s[1] / 1024 for s in samples if s[0] >= a.warmup]
        change = (rss1 - rss0) / rss0 * 100
        ok = abs(change) <= a.rss_tol
        ok_all &= ok
        verdicts.append((
            "RSS flat" if ok else "RSS NOT flat",
            f"{rss0:.1f} MiB (first {k} windows after warm-up) → {rss1:.1f} MiB (last {k}): {change:+.1f}% "
            f"(tolerance ±{a.rss_tol:g}%); range after warm-up {min(rss_after):.1f}–{max(rss_after):.1f} MiB",
        ))
        fd0, fd1 = statistics.mean(w["fds"] for w in first), statistics.mean(w["fds"] for w in last)
        fd_after = [s[2] for s in samples if s[0] >= a.warmup]
        tol = max(fd0 * a.fd_tol / 100, a.fd_tol_abs)
        ok = abs(fd1 - fd0) <= tol
        ok_all &= ok
        verdicts.append((
            "fds flat" if ok else "fds NOT flat",
            f"{fd0:.1f} → {fd1:.1f} open fds (tolerance ±{tol:.1f}); range after warm-up {min(fd_after)}–{max(fd_after)}",
        ))
        p0 = statistics.median(w["p99"] for w in first)
        p1 = statistics.median(w["p99"] for w in last)
        pmax = max(after, key=lambda w: w["p99"])
        ok = p1 <= a.p99_tol * p0
        ok_all &= ok
        verdicts.append((
            "p99 steady" if ok else "p99 NOT steady",
            f"median of the windows' p99 {p0:.2f} ms (first {k}) → {p1:.2f} ms (last {k}), at most ×{a.p99_tol:g} allowed; "
            f"worst window {pmax['p99']:.2f} ms ("
            + (f"minute {pmax['from'] / 60:.0f}" if a.window == 60 else f"from {pmax['from']:.0f} s") + ")",
        ))
    ok = failed == 0 and dropped == 0
    drop_note = ""
    if dropped:
        worst = min(windows, key=lambda w: w["reqs"]) if windows else None
        drop_note = f" (k6 did not start them on time; the fewest requests: {worst['reqs']} in the window from {worst['from']:.0f} s)" if worst else ""
    verdicts.append((
        ("no failed request" if failed == 0 else f"{failed} failed requests") + ("" if not dropped else f", {dropped} dropped iterations"),
        f"{total} requests, {failed} failed, {dropped} dropped iterations{drop_note}",
    ))
    verdicts.append((
        "reloads ok" if reload_fail == 0 and all(s == "200" for _, s in reloads) else "reloads FAILED",
        f"{len(reloads)} POST /reload ({sum(1 for _, s in reloads if s != '200')} not 200); "
        f"tollgate_config_reloads_total +{reload_ok:.0f} success, +{reload_fail:.0f} failure (the file watcher reloads too)",
    ))

    lpath = os.path.join(d, "loadavg")
    load = open(lpath).read().split()[:3] if os.path.exists(lpath) else None
    out = []
    out.append(f"Run: {time.strftime('%Y-%m-%d %H:%M', time.gmtime(start))} UTC, {end - start:.0f} s of k6 at "
               f"{a.rate:g} req/s (constant-arrival-rate), a reload every {a.reload_every:g} s, warm-up {a.warmup:.0f} s. "
               f"{machine_line(a.binary, load)}")
    if a.note:
        out.append("")
        out.append(a.note)
    out.append("")
    out.append("| verdict | figures |")
    out.append("|---|---|")
    for v, why in verdicts:
        out.append(f"| {v} | {why} |")
    out.append("")
    rest0, rest1 = all_samples[0], all_samples[-1]
    out.append(f"At rest before the load: {rest0[1] / 1024:.1f} MiB RSS, {rest0[2]} fds; after it: "
               f"{rest1[1] / 1024:.1f} MiB, {rest1[2]} fds.")
    out.append("")
    out.append(f"| {'minute' if a.window == 60 else 'window'} | requests | failed | p50 ms | p99 ms | max ms | RSS MiB | fds (mean / max) | reloads |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for w in windows:
        label = f"{w['from'] / 60:.0f}" if a.window == 60 else f"{w['from']:.0f} s"
        out.append(
            f"| {label}{'' if w['from'] >= a.warmup else ' (warm-up)'} | {w['reqs']} | {w['failed']} | {w['p50']:.2f} | {w['p99']:.2f} | "
            f"{w['max']:.0f} | {w['rss']:.1f} | {w['fds']:.1f} / {w['fds_max']} | {w['reloads']}"
            f"{'' if not w['reloads_bad'] else ' (' + str(w['reloads_bad']) + ' not 200)'} |"
        )
    out.append("")
    if fails:
        out.append("Failed requests as the client saw them: " + ", ".join(f"{k}: {v}" for k, v in fails.most_common()) + ".")
    if access_errors:
        out.append("Access-log `error` values: " + ", ".join(f"`{k}`: {v}" for k, v in access_errors.most_common()) + ".")
    if fails or access_errors:
        out.append("")
    text = "\n".join(out).rstrip("\n")
    print(text)
    print(f"\nraw files: {d}")
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write(text + "\n")
    if a.docs:
        replace_section(a.docs, "soak", text)
        print(f"\nwritten into {a.docs}", file=sys.stderr)
    sys.exit(0 if ok_all and ok else 1)


if __name__ == "__main__":
    main()
