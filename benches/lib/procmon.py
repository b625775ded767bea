#!/usr/bin/env python3
"""CPU and memory of a process tree, from /proc (used by benches/compare.sh).

  procmon.py snap PID...            -> "cpu_ticks rss_kib pss_kib nprocs"
  procmon.py peak OUT PID...        -> samples every INTERVAL s (env, default
                                       0.5) until SIGTERM, then writes
                                       "rss_peak_kib pss_peak_kib" to OUT

Each PID counts with all its descendants (nginx: master + workers). A
process's /proc/PID/stat utime+stime already covers all its threads. RSS is
VmRSS summed over the processes (pages shared by nginx's master and workers
count once per process); PSS (smaps_rollup) splits shared pages fairly, which
is the figure to compare across process models.
"""

import os
import signal
import sys
import time


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(roots):
    kids = children_map()
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def kib_field(path, name):
    with open(path) as f:
        for line in f:
            if line.startswith(name):
                return int(line.split()[1])
    return 0


def snap(pids):
    ticks = rss = pss = n = 0
    for pid in pids:
        try:
            ticks += cpu_ticks(pid)
            rss += kib_field(f"/proc/{pid}/status", "VmRSS:")
            pss += kib_field(f"/proc/{pid}/smaps_rollup", "Pss:")
            n += 1
        except OSError:
            pass
    return ticks, rss, pss, n


def main():
    mode = sys.argv[1]
    if mode == "snap":
        roots = [int(p) for p in sys.argv[2:]]
        print(*snap(tree(roots)))
    elif mode == "peak":
        out = sys.argv[2]
        roots = [int(p) for p in sys.argv[3:]]
        interval = float(os.environ.get("INTERVAL", "0.5"))
        peak = [0, 0]
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        pids = tree(roots)
        while not stop:
            _, rss, pss, _ = snap(pids)
            peak = [max(peak[0], rss), max(peak[1], pss)]
            time.sleep(interval)
        with open(out, "w") as f:
            f.write(f"{peak[0]} {peak[1]}\n")
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
