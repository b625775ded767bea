#!/usr/bin/env python3
"""The chaos suite: tollgate under a steady k6 load while faults are injected,
one at a time and then mixed; what failed, why, what should have been served,
and the gateway's memory and file descriptors before and after.

    benches/chaos/run.py                                   # every fault, 3 runs each, ~27 min
    benches/chaos/run.py --faults kill,redis --repeat 1    # a subset
    benches/chaos/run.py --list                            # the faults

It starts, on ports of its own (18480-18493 and 19480): redis-server, two
fault-injecting targets (faulty.py, `a` and `b`) behind the upstream `app`, a
third faulty.py serving the JWKS, and the gateway with chaos.yaml (JSON access
log to a file). Faults are always applied to target `a`, Redis or the JWKS
server; target `b` stays healthy. The load is load.js (a constant arrival
rate over GET and POST through `app`, the Redis rate-limited route and the
JWKS-backed JWT route), with the fault applied in the middle of each run.

Every request carries its id in its path, so the k6 result, the access log,
the gateway's warnings and the targets' logs are matched per request. Each
failed request is then either expected (the fault's own definition below) or
one the gateway should have served. RSS (VmRSS) and open fds are read at
rest before and after each run, once the fd count has been stable for 3 s.

The table goes to stdout, to RUN_DIR/report.md and (unless --no-docs) into
docs/chaos.md between `<!-- chaos:begin -->` and `<!-- chaos:end -->`.
Exit status: 0 when nothing was lost and nothing grew.
"""

import argparse
import atexit
import collections
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
from report_util import machine_line, metric_by, metric_sum, parse_metrics, replace_section  # noqa: E402

PORTS = dict(gw=18480, admin=19480, a=18481, b=18482, jwks=18483, redis=18484, ctl_a=18491, ctl_b=18492, ctl_jwks=18493)

ALL = []  # every process started, stopped at exit


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def now_ms():
    return int(time.time() * 1000)


class Proc:
    def __init__(self, name, argv, run_dir, env=None):
        self.name, self.argv, self.run_dir, self.env = name, argv, run_dir, env
        self.p = None

    def start(self):
        out = open(os.path.join(self.run_dir, f"{self.name}.out"), "ab")
        err = open(os.path.join(self.run_dir, f"{self.name}.err"), "ab")
        self.p = subprocess.Popen(self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env)
        out.close()
        err.close()
        ALL.append(self)
        return self

    @property
    def pid(self):
        return self.p.pid

    def alive(self):
        return self.p is not None and self.p.poll() is None

    def signal(self, sig):
        if self.alive():
            self.p.send_signal(sig)

    def stop(self, timeout=5):
        if not self.alive():
            return
        self.p.terminate()
        try:
            self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait(5)


def cleanup():
    for p in reversed(ALL):
        try:
            p.stop(3)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def http(url, method="GET", timeout=5.0):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


def wait_until(pred, timeout, step=0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return False


def port_busy(port):
    import socket

    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Lab:
    """The processes of the suite and what can be done to them."""

    def __init__(self, args, run_dir):
        self.args, self.dir = args, run_dir
        self.ports = PORTS
        self.env = dict(os.environ)
        self.env.update(CHAOS_PORT=str(PORTS["gw"]), CHAOS_ADMIN=str(PORTS["admin"]), CHAOS_UP_A=str(PORTS["a"]),
                        CHAOS_UP_B=str(PORTS["b"]), CHAOS_JWKS=str(PORTS["jwks"]), CHAOS_REDIS=str(PORTS["redis"]))
        self.config = os.path.join(run_dir, "tollgate.yaml")
        with open(os.path.join(HERE, "chaos.yaml")) as f:
            self.template = f.read()
        self.write_variant(0)
        self.procs = {}
        self.gateway_starts = 0

    # ---- processes -------------------------------------------------------
    def start_redis(self):
        self.procs["redis"] = Proc("redis", ["redis-server", "--port", str(PORTS["redis"]), "--bind", "127.0.0.1",
                                             "--save", "", "--appendonly", "no"], self.dir).start()
        if not wait_until(lambda: port_busy(PORTS["redis"]), 10):
            sys.exit("redis-server did not start")

    def start_target(self, name):
        argv = [sys.executable, os.path.join(HERE, "faulty.py"), "--port", str(PORTS[name]), "--control",
                str(PORTS["ctl_" + name]), "--name", name, "--log", os.path.join(self.dir, f"{name}.requests")]
        if name == "jwks":
            argv += ["--jwks", os.path.join(self.dir, "keys", "jwks.json")]
        self.procs[name] = Proc(name, argv, self.dir).start()
        if not wait_until(lambda: self.ctl(name, "stats") is not None, 10):
            sys.exit(f"faulty.py {name} did not start")

    def start_gateway(self):
        self.gateway_starts += 1
        self.procs["gw"] = Proc(f"gateway", [self.args.binary, "--config", self.config, "--log-format", "json",
                                             "--access-log", os.path.join(self.dir, "access.log")], self.dir,
                                env=self.env).start()
        ok = wait_until(lambda: http(f"http://127.0.0.1:{PORTS['admin']}/readyz", timeout=1)[0] == 200, 20)
        if not ok:
            sys.exit(f"the gateway did not become ready (see {self.dir}/gateway.err)")

    @property
    def gw(self):
        return self.procs["gw"]

    def ctl(self, name, what):
        status, body = http(f"http://127.0.0.1:{PORTS['ctl_' + name]}/__chaos/{what}", timeout=2)
        return json.loads(body) if status == 200 else None

    def mode(self, name, m, **kw):
        q = "&".join([f"m={m}"] + [f"{k}={v}" for k, v in kw.items()])
        return self.ctl(name, f"mode?{q}")

    # ---- config and reloads ---------------------------------------------
    def write_variant(self, n):
        """Variant n: the marker body flips with n, the spare upstream and route are in for odd n."""
        lines = []
        for line in self.template.splitlines():
            if "# reload-marker" in line:
                line = re.sub(r"route-set-[AB]", "route-set-" + "AB"[n % 2], line)
            if n % 2 and line.rstrip().endswith("# spare") and line.startswith("#  "):
                line = line[1:]
            lines.append(line)
        tmp = self.config + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, self.config)

    def reload(self):
        return http(f"http://127.0.0.1:{PORTS['admin']}/reload", method="POST", timeout=10)[0]

    # ---- measurements ----------------------------------------------------
    def rss_fds(self):
        pid = self.gw.pid
        rss = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
        return rss, len(os.listdir(f"/proc/{pid}/fd"))

    def settle(self, stable_for=3.0, limit=30.0):
        """(rss KiB, fds, seconds waited) once the fd count has not moved for `stable_for` s."""
        t0 = time.monotonic()
        last, since = None, time.monotonic()
        while True:
            rss, fds = self.rss_fds()
            if fds != last:
                last, since = fds, time.monotonic()
            elif time.monotonic() - since >= stable_for:
                return rss, fds, time.monotonic() - t0
            if time.monotonic() - t0 > limit:
                return rss, fds, time.monotonic() - t0
            time.sleep(0.5)

    def metrics(self):
        status, body = http(f"http://127.0.0.1:{PORTS['admin']}/metrics", timeout=5)
        return parse_metrics(body.decode()) if status == 200 else []


# ---- faults ------------------------------------------------------------------

class Fault:
    def __init__(self, key, title, what, duration, timeline, expected, mix=None, slow_ms=None):
        self.key, self.title, self.what, self.duration = key, title, what, duration
        # a failed POST that was sent to target a during a fault of a's is expected
        self.post_ok = expected in (NOT_SENT_POST, MIXED)
        self.timeline = timeline  # list of (offset s, label, fn(lab, ctx))
        self.expected = expected  # text: which failures are expected
        self.mix, self.slow_ms = mix, slow_ms


def mode(target, m, **kw):
    return (f"{target}: {m}" + (" " + " ".join(f"{k}={v}" for k, v in kw.items()) if kw else ""),
            lambda lab, ctx: lab.mode(target, m, **kw))


def kill(name):
    def fn(lab, ctx):
        ctx.setdefault("killed", {}).setdefault(name, []).append(now_ms())
        if name == "a":
            ctx.setdefault("a_stats_before_kill", []).append(lab.ctl("a", "stats") or {})
        lab.procs[name].signal(signal.SIGKILL)
        lab.procs[name].p.wait(5)
    return (f"kill -9 {name}", fn)


def redis_calls():
    """Commands Redis has served since it started (INFO and PING left out)."""
    try:
        info = subprocess.run(["redis-cli", "-p", str(PORTS["redis"]), "info", "commandstats"], capture_output=True,
                              text=True, timeout=5).stdout
    except subprocess.SubprocessError:
        return 0
    return sum(int(m) for m in re.findall(r"^cmdstat_(?!info|ping)\w+:calls=(\d+)", info, re.M))


def pause(name, sig):
    def fn(lab, ctx):
        lab.procs[name].signal(sig)
        if name == "redis" and sig == signal.SIGCONT:
            ctx["redis_back"] = (now_ms(), redis_calls())
    return (f"kill -{sig.name[3:]} {name}", fn)


def restart(name):
    def fn(lab, ctx):
        if name == "redis":
            lab.start_redis()
            ctx["redis_back"] = (now_ms(), redis_calls())
        else:
            lab.start_target(name)
        ctx.setdefault("restarted", {})[name] = now_ms()
    return (f"restart {name}", fn)


def reloads(start, end, per_minute=100):
    step = 60.0 / per_minute
    out = []
    t, n = start, 1
    while t < end:
        def fn(lab, ctx, n=n):
            lab.write_variant(n)
            ctx.setdefault("reload_status", []).append(lab.reload())
        out.append((round(t, 3), "reload" if n == 1 else None, fn))
        t += step
        n += 1
    # end on the base variant, so the next run starts from the same config
    def back(lab, ctx):
        lab.write_variant(0)
        ctx.setdefault("reload_status", []).append(lab.reload())
    out.append((round(t, 3), None, back))
    return out


def sigterm():
    def fn(lab, ctx):
        ctx["sigterm_ms"] = now_ms()
        p = lab.gw.p
        p.send_signal(signal.SIGTERM)

        def waiter():
            code = p.wait()
            ctx["exit_ms"] = now_ms()
            ctx["exit_code"] = code
        threading.Thread(target=waiter, daemon=True).start()
    return ("SIGTERM gateway", fn)


def at(t, pair):
    return (t, pair[0], pair[1])


NOT_SENT_POST = "POSTs sent to target a (it logged them, or the attempt timed out or was reset): a non-idempotent request is not retried"
MIXED = "as for each fault: truncated answers, POSTs sent to target a"


def faults():
    f = [
        Fault("baseline", "no fault", "the load alone", 24, [], "none"),
        Fault("latency", "latency spikes", "target a: 30% of requests wait 2.5 s before the head (attempt timeout 1 s, route 4 s)", 24,
              [at(8, mode("a", "latency", p=0.3, ms=2500)), at(16, mode("a", "normal"))], NOT_SENT_POST),
        Fault("reset", "TCP reset mid-request", "target a: 30% of requests get a TCP RST once their head is read", 24,
              [at(8, mode("a", "reset", p=0.3)), at(16, mode("a", "normal"))], NOT_SENT_POST),
        Fault("hang", "half-open: never answers", "target a reads every request (health checks too) and never answers", 24,
              [at(8, mode("a", "hang")), at(16, mode("a", "normal"))], NOT_SENT_POST),
        Fault("noread", "half-open: stops reading", "target a stops reading its connections (new ones are accepted, never read)", 24,
              [at(8, mode("a", "noread")), at(16, mode("a", "normal"))], NOT_SENT_POST),
        Fault("slowbody", "slow body", "target a: 30% of answers send the head at once, the 1 KiB body over 2 s", 24,
              [at(8, mode("a", "slowbody", p=0.3, ms=2000)), at(16, mode("a", "normal"))], "none"),
        Fault("truncate", "truncated body", "target a: 10% of answers declare 1024 bytes, send 512 and close", 24,
              [at(8, mode("a", "truncate", p=0.1)), at(16, mode("a", "normal"))],
              "requests whose answer target a truncated (the head was passed on: nothing to retry)"),
        Fault("kill", "target killed and restarted", "kill -9 of target a at 8 s, started again at 14 s", 24,
              [at(8, kill("a")), at(14, restart("a"))], NOT_SENT_POST),
        Fault("redis", "redis-server killed and restarted", "kill -9 of redis-server at 8 s, started again (empty) at 14 s", 24,
              [at(8, kill("redis")), at(14, restart("redis"))], "none (`on_store_error: allow`)"),
        Fault("redis-stall", "redis-server stalled", "SIGSTOP to redis-server at 8 s (connections open, no answer), SIGCONT at 14 s", 24,
              [at(8, pause("redis", signal.SIGSTOP)), at(14, pause("redis", signal.SIGCONT))], "none (`on_store_error: allow`)"),
        Fault("jwks", "JWKS endpoint down", "the JWKS server is killed at 5 s, started again at 12 s but never answering (the fetch times out after 10 s), answering again from 19 s (refresh every 2 s)", 24,
              [at(5, kill("jwks")), at(12, restart("jwks")), at(12, mode("jwks", "hang")), at(19, mode("jwks", "normal"))],
              "none (the keys already loaded stay in use)"),
        Fault("reloads", "100 reloads a minute", "every 0.6 s for 60 s: the config rewritten (marker route, an upstream with health checks and its route in or out) and POST /reload", 66,
              reloads(3, 63), "none"),
    ]
    mixed = [at(5, mode("a", "latency", p=0.3, ms=2500)), at(12, mode("a", "reset", p=0.3)), at(19, mode("a", "hang")),
             at(26, mode("a", "truncate", p=0.1)), at(33, mode("a", "slowbody", p=0.3, ms=2000)), at(40, mode("a", "normal")),
             at(40, kill("a")), at(46, restart("a")), at(10, kill("redis")), at(22, restart("redis")),
             at(15, kill("jwks")), at(35, restart("jwks"))]
    mixed += reloads(2, 52)
    f.append(Fault("mixed", "all of them mixed", "60 s: target a goes latency → reset → hang → truncate → slow body → killed and restarted; Redis killed 10–22 s; JWKS down 15–35 s; 100 reloads a minute throughout", 60,
                   sorted(mixed, key=lambda e: e[0]), MIXED))
    f.append(Fault("sigterm", "SIGTERM mid-load", "SIGTERM to the gateway at 10 s; 30% of the requests take 2 s upstream (shutdown_grace 10 s); the gateway is started again after the run", 16,
                   [at(10, sigterm())], "requests refused by the closed listener (connection refused)",
                   mix="api:35,post:10,rl:10,jwt:15,slow:30", slow_ms=2000))
    return {x.key: x for x in f}


# ---- one run -------------------------------------------------------------------

def tail_from(path, offset):
    if not os.path.exists(path):
        return [], 0
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    return data.decode("utf-8", "replace").splitlines(), offset + len(data)


def size(path):
    return os.path.getsize(path) if os.path.exists(path) else 0


def req_id(path):
    """/api/r/ID -> ID"""
    if "/r/" not in path:
        return None
    return path.rsplit("/r/", 1)[1].split("?")[0]


def short_k6_error(em):
    em = em or ""
    for pat, label in (("connection refused", "connection refused"), ("connection reset", "connection reset"),
                       ("EOF", "EOF"), ("request timeout", "timeout"), ("timeout", "timeout")):
        if pat in em:
            return label
    return em[:40] or "error"


def run_once(lab, fault, rep, args):
    run = f"{fault.key}{rep}"
    before = lab.settle()
    m0 = lab.metrics()
    offsets = {p: size(os.path.join(lab.dir, p)) for p in ("access.log", "gateway.err", "a.requests", "b.requests")}
    for t in ("a", "b"):
        lab.ctl(t, "reset")
    k6log = os.path.join(lab.dir, f"{run}.k6.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith("K6_")}
    env.update(BASE_URL=f"http://127.0.0.1:{PORTS['gw']}", RATE=str(args.rate), DURATION=f"{fault.duration}s",
               TOKENS=os.path.join(lab.dir, "keys", "tokens.json"), RUN=run, LOG="1",
               MIX=fault.mix or args.mix, SLOW_MS=str(fault.slow_ms or 1000), VUS=str(args.vus), MAX_VUS="2000",
               SUMMARY=os.path.join(lab.dir, f"{run}.summary.json"))
    k6 = subprocess.Popen(["k6", "run", "-q", "--console-output", k6log, "--log-format", "raw",
                           os.path.join(HERE, "load.js")], env=env, stdout=open(os.path.join(lab.dir, f"{run}.k6.out"), "wb"),
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    t0 = time.time()
    ctx = {"events": [], "times": []}
    for offset, label, fn in fault.timeline:
        delay = t0 + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        ctx["times"].append(now_ms())
        fn(lab, ctx)
        if label:
            ctx["events"].append((now_ms(), label))
    k6.wait(fault.duration + 60)
    if "redis_back" in ctx:
        # what Redis was asked once it was back: the gateway uses it again
        ctx["redis_calls_after"] = redis_calls() - ctx["redis_back"][1]
    gone = not lab.gw.alive()
    if gone:
        wait_until(lambda: "exit_code" in ctx, 15)
        after = None
        m1 = None
    else:
        after = lab.settle()
        m1 = lab.metrics()
    state_a = lab.ctl("a", "stats")

    dropped = 0
    try:
        with open(os.path.join(lab.dir, f"{run}.summary.json")) as f:
            dropped = int(json.load(f)["metrics"].get("dropped_iterations", {}).get("values", {}).get("count", 0))
    except (OSError, ValueError, KeyError):
        pass
    ctx["dropped"] = dropped
    results = []
    with open(k6log) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                results.append(json.loads(line))
    access = {}
    for line in tail_from(os.path.join(lab.dir, "access.log"), offsets["access.log"])[0]:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        i = req_id(e.get("path", ""))
        if i:
            access.setdefault(i, []).append(e)
    connect_failed, conn_failed = set(), set()
    for line in tail_from(os.path.join(lab.dir, "gateway.err"), offsets["gateway.err"])[0]:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        fields = e.get("fields", {})
        i = req_id(fields.get("path", "") or "")
        if not i:
            continue
        if fields.get("message") == "upstream connect failed":
            connect_failed.add(i)
        elif fields.get("message") == "upstream connection failed":
            conn_failed.add(i)
    upstream_seen = {}
    for t in ("a", "b"):
        # a restarted target appends to the same file
        for line in tail_from(os.path.join(lab.dir, f"{t}.requests"), offsets[f"{t}.requests"])[0]:
            parts = line.split("\t")
            if len(parts) == 4:
                i = req_id(parts[2])
                if i:
                    upstream_seen.setdefault(i, []).append((t, parts[3]))
    return classify(fault, run, results, access, connect_failed, conn_failed, upstream_seen, ctx, before, after, m0, m1,
                    state_a, lab)


def classify(fault, run, results, access, connect_failed, conn_failed, upstream_seen, ctx, before, after, m0, m1,
             state_a, lab):
    failed = collections.Counter()  # reason -> n
    expected = collections.Counter()
    lost = collections.Counter()
    lost_ids = []
    corrupt = 0
    sig = ctx.get("sigterm_ms")
    kills_a = ctx.get("killed", {}).get("a", [])
    for r in results:
        i = r["i"]
        if 200 <= r["s"] < 300 and r.get("ok"):
            continue
        if r["s"] == 0:
            reason = f"k6: {short_k6_error(r.get('em'))}"
        elif 200 <= r["s"] < 300:
            reason = "2xx, body cut short"
            corrupt += 1
        else:
            reason = f"{r['s']} {r.get('c') or '(no JSON error)'}"
        failed[reason] += 1
        seen = upstream_seen.get(i, [])
        why = None
        started_on_a = [e for e in access.get(i, []) if e.get("error") == "response_incomplete"
                        and (e.get("target") or "").endswith(f":{PORTS['a']}")]
        if any(o == "truncate" for _, o in seen) and reason != "2xx, body cut short":
            why = "answer truncated by target a"
        elif started_on_a and r["s"] == 0 and any(r["t"] <= k <= r["t"] + r["d"] for k in kills_a):
            why = "answer under way when target a was killed"
        elif fault.post_ok and r["k"] == "post" and i not in connect_failed and (
                any(t == "a" for t, _ in seen) or i in conn_failed or r.get("c") == "upstream_timeout"):
            why = "POST sent to a failing target"
        elif sig is not None and reason == "k6: connection refused":
            why = "refused by the closed listener"
        if why:
            expected[why] += 1
        else:
            if r["k"] == "post" and i in connect_failed:
                reason += " (POST, connect failed: never sent, not retried)"
            elif sig is not None:
                reason += " (in flight at SIGTERM)" if r["t"] < sig else " (after SIGTERM, read by the gateway)" if i in access else " (after SIGTERM, never read)"
            lost[f"{r['k']}: {reason}"] += 1
            lost_ids.append(i)
    out = {
        "run": run,
        "requests": len(results),
        "dropped": ctx.get("dropped", 0),
        "ok": len(results) - sum(failed.values()),
        "failed": failed,
        "expected": expected,
        "lost": lost,
        "lost_ids": lost_ids[:20],
        "corrupt": corrupt,
        "before": before,
        "after": after,
        "events": ctx["events"],
    }
    # latency during the fault window
    evs = ctx["times"]
    if evs:
        lo, hi = min(evs), max(evs)
        during = sorted(r["d"] for r in results if lo <= r["t"] <= hi and r["s"])
        if during:
            out["p99_during"] = during[min(len(during) - 1, int(len(during) * 0.99))]
    alld = sorted(r["d"] for r in results if r["s"])
    if alld:
        out["p99"] = alld[min(len(alld) - 1, int(len(alld) * 0.99))]
    # per-fault observations
    notes = []
    if m1 is not None:
        def delta(name, label, **kw):
            a = metric_by(m1, name, label, **kw)
            b = metric_by(m0, name, label, **kw)
            return {k: int(a.get(k, 0) - b.get(k, 0)) for k in a if a.get(k, 0) - b.get(k, 0)}
        out["outcomes"] = delta("tollgate_upstream_requests_total", "outcome", upstream="app")
        out["retries"] = delta("tollgate_retries_total", "reason", upstream="app")
        out["store_errors"] = delta("tollgate_rate_limit_store_errors_total", "decision")
        out["jwks"] = delta("tollgate_jwks_refreshes_total", "result")
        out["reloads"] = delta("tollgate_config_reloads_total", "result")
        out["auth_failures"] = delta("tollgate_auth_failures_total", "reason")
    if "restarted" in ctx and "a" in ctx["restarted"]:
        back = [r["t"] for r in results if r.get("g") == "a" and r["t"] >= ctx["restarted"]["a"]]
        if back:
            out["a_back_s"] = (min(back) - ctx["restarted"]["a"]) / 1000
    if "redis_calls_after" in ctx:
        rl_after = [r for r in results if r["k"] == "rl" and r["t"] >= ctx["redis_back"][0]]
        out["redis_calls"] = (ctx["redis_calls_after"], len(rl_after))
    if "reload_status" in ctx:
        out["reload_posts"] = collections.Counter(ctx["reload_status"])
    if sig is not None:
        in_flight = [r for r in results if r["t"] < sig and r["t"] + r["d"] > sig]
        out["in_flight"] = len(in_flight)
        out["in_flight_ok"] = sum(1 for r in in_flight if 200 <= r["s"] < 300 and r.get("ok"))
        out["drain_s"] = (ctx.get("exit_ms", 0) - sig) / 1000 if "exit_ms" in ctx else None
        out["exit_code"] = ctx.get("exit_code")
    for st in ctx.get("a_stats_before_kill", []) + ([state_a] if state_a else []):
        out["held_closed_by_us"] = out.get("held_closed_by_us", 0) + st.get("held_closed_by_us", 0)
        out["held_released_by_peer"] = out.get("held_released_by_peer", 0) + st.get("held_released_by_peer", 0)
    out["access_errors"] = collections.Counter(
        e.get("error") for es in access.values() for e in es if e.get("error"))
    return out


# ---- report ----------------------------------------------------------------------

def fmt_counter(c, empty="—"):
    return ", ".join(f"{k}: {v}" for k, v in c.most_common()) if c and sum(c.values()) else empty


def mib(kib):
    return f"{kib / 1024:.1f}"


def summarize(fault, runs):
    total = sum(r["requests"] for r in runs)
    failed = sum((r["failed"] for r in runs), collections.Counter())
    expected = sum((r["expected"] for r in runs), collections.Counter())
    lost = sum((r["lost"] for r in runs), collections.Counter())
    b0 = runs[0]["before"]
    if all(r["after"] for r in runs):
        rss = f"{mib(b0[0])} → " + ", ".join(mib(r["after"][0]) for r in runs)
        fds = f"{b0[1]} → " + ", ".join(str(r["after"][1]) for r in runs)
    else:
        rss = f"{mib(b0[0])} → exited"
        fds = f"{b0[1]} → exited"
        drains = [r for r in runs if r.get("drain_s") is not None]
        if drains:
            rss = ", ".join(f"{mib(r['before'][0])} → exit {r['exit_code']} after {r['drain_s']:.2f} s" for r in drains)
            fds = ", ".join(f"{r['before'][1]} → exit" for r in drains)
    return total, failed, expected, lost, rss, fds


def growth(runs):
    """Leak flags: a value after each run that keeps growing across the runs."""
    flags = []
    afters = [r["after"] for r in runs if r["after"]]
    if len(afters) >= 2:
        fds = [runs[0]["before"][1]] + [a[1] for a in afters]
        if all(y > x for x, y in zip(fds, fds[1:])):
            flags.append(f"fds grew after every run: {' → '.join(map(str, fds))}")
        rss = [runs[0]["before"][0]] + [a[0] for a in afters]
        if all(y > x for x, y in zip(rss[1:], rss[2:])) and rss[-1] - rss[1] >= 1024:
            flags.append(f"RSS grew after every run: {' → '.join(mib(x) for x in rss)} MiB (a leak, or a high-water mark still rising: repeat with more runs)")
    return flags


def render(all_runs, flist, args, started):
    lines = []
    lines.append("| fault | requests | failed (client view) | expected failures | should have served, did not | RSS MiB before → after each run | fds before → after each run |")
    lines.append("|---|---|---|---|---|---|---|")
    findings = []
    for f in flist:
        runs = all_runs.get(f.key)
        if not runs:
            continue
        total, failed, expected, lost, rss, fds = summarize(f, runs)
        lost_n = sum(lost.values())
        dropped = sum(r.get("dropped", 0) for r in runs)
        lines.append(
            f"| {f.title} | {total} ({len(runs)} run{'s' if len(runs) > 1 else ''}"
            f"{'; ' + str(dropped) + ' not started by k6' if dropped else ''}) | "
            f"{sum(failed.values())}{': ' + fmt_counter(failed) if failed else ''} | "
            f"{sum(expected.values())}{': ' + fmt_counter(expected) if expected else ''} | "
            f"**{lost_n}**{': ' + fmt_counter(lost) if lost_n else ''} | {rss} | {fds} |")
        for flag in growth(runs):
            findings.append(f"{f.title}: {flag}")
        if lost_n:
            findings.append(f"{f.title}: {lost_n} requests should have been served ({fmt_counter(lost)}); e.g. ids "
                            + ", ".join(sum((r['lost_ids'][:3] for r in runs), [])[:6]))
        corrupt = sum(r["corrupt"] for r in runs)
        if corrupt:
            findings.append(f"{f.title}: {corrupt} answers were 2xx with a body shorter than the upstream meant")
        held = sum(r.get("held_closed_by_us", 0) for r in runs)
        if held and f.key in ("hang", "noread", "mixed"):
            findings.append(f"{f.title}: {held} connections to the hung target were still open 3 s after the fault ended (closed by the target, not by the gateway)")
    lines.append("")
    lines.append("What each run showed besides the table (sums over the runs):")
    lines.append("")
    for f in flist:
        runs = all_runs.get(f.key)
        if not runs:
            continue
        bits = []
        p99d = [r["p99_during"] for r in runs if "p99_during" in r]
        p99 = [r["p99"] for r in runs if "p99" in r]
        if p99:
            bits.append(f"p99 {statistics.median(p99):.0f} ms" + (f" ({statistics.median(p99d):.0f} ms while the fault lasted)" if p99d else ""))

        def summed(key):
            c = collections.Counter()
            for r in runs:
                c.update(r.get(key) or {})
            return c
        oc = summed("outcomes")
        if oc and set(oc) - {"success"}:
            bits.append("attempts to `app`: " + fmt_counter(oc))
        rt = summed("retries")
        if rt:
            bits.append("retries: " + fmt_counter(rt))
        ae = summed("access_errors")
        if ae:
            bits.append("access-log `error`: " + fmt_counter(ae))
        if f.key in ("redis", "redis-stall", "mixed"):
            se = summed("store_errors")
            bits.append("rate-limit decisions without Redis: " + fmt_counter(se, "0"))
            calls = [r["redis_calls"] for r in runs if "redis_calls" in r]
            if calls:
                bits.append("Redis commands served / rate-limited requests, once Redis was back: "
                            + ", ".join(f"{c} / {n}" for c, n in calls))
        if f.key in ("jwks", "mixed"):
            bits.append("JWKS fetches: " + fmt_counter(summed("jwks"), "0"))
        if f.key in ("reloads", "mixed"):
            posts = summed("reload_posts")
            bits.append("POST /reload answers: " + fmt_counter(posts))
            bits.append("`tollgate_config_reloads_total`: " + fmt_counter(summed("reloads")))
        ab = [r["a_back_s"] for r in runs if "a_back_s" in r]
        if ab:
            bits.append("target a served again " + ", ".join(f"{x:.1f}" for x in ab) + " s after its restart")
        if f.key in ("hang", "noread", "mixed"):
            bits.append(f"connections target a held: {sum(r.get('held_released_by_peer', 0) for r in runs)} closed by the gateway, "
                        f"{sum(r.get('held_closed_by_us', 0) for r in runs)} still open 3 s after the fault")
        if f.key == "sigterm":
            for r in runs:
                bits.append(f"{r.get('in_flight_ok')}/{r.get('in_flight')} requests in flight at SIGTERM completed, exit {r.get('exit_code')} "
                            f"{'after %.2f s' % r['drain_s'] if r.get('drain_s') is not None else ''}")
        lines.append(f"- **{f.title}**: " + "; ".join(bits) + ".")
    lines.append("")
    lines.append("Findings: " + ("none." if not findings else ""))
    for x in findings:
        lines.append(f"- {x}")
    lines.append("")
    lines.append(f"Run {time.strftime('%Y-%m-%d %H:%M', time.gmtime(started))} UTC: {args.rate} req/s, "
                 f"{args.repeat} runs per fault (the gateway started again after each SIGTERM run), "
                 f"`benches/chaos/run.py {' '.join(sys.argv[1:])}`. {machine_line(args.binary)}")
    return "\n".join(lines), findings


def main():
    fl = faults()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", default=os.environ.get("TOLLGATE_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "tollgate"))
    ap.add_argument("--faults", default=",".join(fl), help="comma-separated, in this order: " + ",".join(fl))
    ap.add_argument("--repeat", type=int, default=3, help="runs per fault (leaks show as growth across runs)")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--vus", type=int, default=400, help="k6 VUs allocated before the start (slow answers need many)")
    ap.add_argument("--mix", default="api:45,post:10,rl:20,jwt:25")
    ap.add_argument("--run-dir", default=f"/tmp/tollgate-chaos/{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "chaos.md"))
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for f in fl.values():
            print(f"{f.key:10} {f.title}: {f.what}")
        return 0
    chosen = [fl[k] for k in args.faults.split(",") if k]
    for tool in ("k6", "redis-server", "redis-cli"):
        if not shutil.which(tool):
            sys.exit(f"run.py: {tool} not found")
    if not os.access(args.binary, os.X_OK):
        sys.exit(f"run.py: no binary at {args.binary} (cargo build --release, or --binary)")
    for name, port in PORTS.items():
        if port_busy(port):
            sys.exit(f"run.py: port {port} ({name}) is in use")
    os.makedirs(args.run_dir, exist_ok=True)
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    log(f"run directory {args.run_dir}")
    subprocess.run([sys.executable, os.path.join(HERE, "mkkeys.py"), os.path.join(args.run_dir, "keys"), "50"], check=True)

    lab = Lab(args, args.run_dir)
    lab.start_redis()
    for t in ("a", "b", "jwks"):
        lab.start_target(t)
    lab.start_gateway()
    started = time.time()
    log(f"gateway pid {lab.gw.pid}; warm-up")
    run_once(lab, fl["baseline"], 0, args)
    all_runs = {}
    for f in chosen:
        for rep in range(1, (args.repeat if f.key != "sigterm" else max(1, args.repeat)) + 1):
            if not lab.gw.alive():
                lab.start_gateway()
                log(f"gateway started again, pid {lab.gw.pid}; warm-up")
                run_once(lab, fl["baseline"], 0, args)
            log(f"{f.key} run {rep}: {f.what}")
            r = run_once(lab, f, rep, args)
            all_runs.setdefault(f.key, []).append(r)
            log(f"  {r['requests']} requests, {sum(r['failed'].values())} failed, {sum(r['expected'].values())} expected, "
                f"{sum(r['lost'].values())} lost; fds {r['before'][1]} -> {r['after'][1] if r['after'] else 'exited'}")
            with open(os.path.join(args.run_dir, "runs.json"), "a") as out:
                out.write(json.dumps(r, default=str) + "\n")
    text, findings = render(all_runs, chosen, args, started)
    print(text)
    with open(os.path.join(args.run_dir, "report.md"), "w") as f:
        f.write(text + "\n")
    if not args.no_docs:
        replace_section(args.docs, "chaos", text)
        log(f"written into {args.docs}")
    log(f"raw files: {args.run_dir}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
