"""Helpers shared by benches/chaos/run.py and benches/chaos/soak_report.py."""

import os
import re
import subprocess

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text):
    """Prometheus text format -> list of (name, {label: value}, float)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(3) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(4))))
        except ValueError:
            pass
    return out


def metric_sum(samples, name, **labels):
    return sum(v for n, l, v in samples if n == name and all(l.get(k) == want for k, want in labels.items()))


def metric_by(samples, name, label, **labels):
    """{value of `label`: sum} over the samples of `name` that match `labels`."""
    out = {}
    for n, l, v in samples:
        if n == name and all(l.get(k) == want for k, want in labels.items()):
            out[l.get(label)] = out.get(l.get(label), 0) + v
    return out


def _cmd(*argv):
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_line(binary="", load=None):
    """One sentence about where the figures come from."""
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
    except OSError:
        pass
    k6 = _cmd("k6", "version").split(" (")[0]
    redis = re.search(r"v=(\S+)", _cmd("redis-server", "--version"))
    if load is None:
        load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else []
    parts = [f"{cores} cores ({model}){mem}, Linux {os.uname().release}, loopback, nothing pinned"]
    if binary:
        parts.append(f"tollgate release build `{binary}`")
    parts.append(f"{k6}, redis-server {redis.group(1) if redis else '?'}, Python {_cmd('python3', '-c', 'import platform; print(platform.python_version())')}")
    if load:
        parts.append(f"load average at the end {' '.join(load)}")
    return "; ".join(parts) + "."


def replace_section(path, name, text):
    """Replaces what lies between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
    in the file at `path` (appending a section when the markers are missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = open(path).read() if os.path.exists(path) else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = head + block + tail
    else:
        doc = doc.rstrip("\n") + ("\n\n" if doc else "") + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(doc)
    os.replace(tmp, path)
