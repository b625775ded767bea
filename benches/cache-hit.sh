#!/usr/bin/env bash
# tollgate's response cache against its own plain route and NGINX's proxy_cache,
# side by side on loopback, in one interleaved run.
#
#   benches/cache-hit.sh                            # 4 targets x 3 rounds, ~3 min
#   ROUNDS=1 DURATION=3 benches/cache-hit.sh        # quick check, ~40 s
#   TARGETS="nginx:cache nginx:plain" benches/cache-hit.sh
#   TARGETS="tollgate:plain tollgate:cached" WRK_SCRIPT=lib/wrk-fresh-query.lua \
#     benches/cache-hit.sh                          # what a miss costs: every request a new URL
#
# Starts two nginx backends that answer the same BODY_BYTES body on every path,
# then, in front of them and each with its own config under $RUN_DIR:
#   tollgate:plain   tollgate, route /plain (proxied every time)    benches/bench-cache.yaml
#   tollgate:cached  the same tollgate, route /cached (cache: { use: edge, default_ttl: 60s })
#   nginx:cache      NGINX with proxy_cache, GET /cached            benches/conf/nginx-cache.conf.in
#   nginx:plain      NGINX as in compare.sh, GET /plain             benches/conf/nginx-proxy.conf.in
# The caches are warmed and checked with curl (NGINX: `X-Cache-Status: HIT`,
# tollgate: a `Cache-Status` header containing `hit`) before anything is
# measured. When the tollgate build does not know `caches` yet, or its cached
# route does not answer hits, the script says so, skips tollgate:cached and
# measures the rest. Proxies and backends share CPU 0, wrk and this script run
# on CPU 1, targets take turns (A B C D A B C D ...), each figure is the median
# over the rounds. Prints a table and the issue's ratios; TSV files and wrk's
# raw output stay in $RESULTS_DIR. benches/README.md has the details.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# ---- knobs ---------------------------------------------------------------
TARGETS=${TARGETS:-"tollgate:plain tollgate:cached nginx:cache nginx:plain"}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}          # seconds per measured wrk run
WARMUP=${WARMUP:-2}               # seconds of unmeasured wrk before each run
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-1}
BODY_BYTES=${BODY_BYTES:-300}     # the backends' answer, on every path
WRK_SCRIPT=${WRK_SCRIPT:-lib/wrk-done.lua} # lib/wrk-fresh-query.lua: a new query per request (misses)
PROXY_WORKERS=${PROXY_WORKERS:-2} # NGINX worker processes
NGINX_OPEN_FILE_CACHE=${NGINX_OPEN_FILE_CACHE:-1} # 1: NGINX keeps cache files open between hits
PROXY_CPUS=${PROXY_CPUS:-0}
BACKEND_CPUS=${BACKEND_CPUS:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-1}
NICE=${NICE:--20}
B1_PORT=${B1_PORT:-19101}
B2_PORT=${B2_PORT:-19102}
NGINX_PORT=${NGINX_PORT:-18181}
NGINX_CACHE_PORT=${NGINX_CACHE_PORT:-18182}
TOLLGATE_PORT=${TOLLGATE_PORT:-18183}
TOLLGATE_ADMIN=${TOLLGATE_ADMIN:-19921}
TOLLGATE_BIN=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate}
TOLLGATE_CONFIG=${TOLLGATE_CONFIG:-$HERE/bench-cache.yaml}
RUN_DIR=${RUN_DIR:-/tmp/tollgate-cache-hit/run}
RESULTS_DIR=${RESULTS_DIR:-/tmp/tollgate-cache-hit/results/$(date +%Y%m%d-%H%M%S)}

die() { echo "cache-hit.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
banner() { # a message that must not drown in the log
    printf '\n%s\n' "cache-hit.sh: ======================================================================" >&2
    printf 'cache-hit.sh: %s\n' "$@" >&2
    printf '%s\n\n' "cache-hit.sh: ======================================================================" >&2
}
has_target() { [[ " $TARGETS " == *" $1 "* ]]; }
drop_target() { TARGETS=$(tr ' ' '\n' <<<"$TARGETS" | { grep -vxF "$1" || true; } | paste -sd' '); }

# ---- preflight: tools, binary, ports ---------------------------------------
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"; }
need nginx "apt-get install -y nginx"
need wrk "apt-get install -y wrk"
need curl "apt-get install -y curl"
need python3 "apt-get install -y python3"
need taskset "apt-get install -y util-linux"
need ss "apt-get install -y iproute2"
for t in $TARGETS; do
    case $t in tollgate:plain|tollgate:cached|nginx:cache|nginx:plain) ;;
    *) die "unknown target $t (tollgate:plain tollgate:cached nginx:cache nginx:plain)";; esac
done
[[ $BODY_BYTES =~ ^[0-9]+$ ]] && (( BODY_BYTES >= 2 && BODY_BYTES <= 3000 )) || die "BODY_BYTES must be 2..3000"
if [[ " $TARGETS " == *" tollgate:"* && ! -x $TOLLGATE_BIN ]]; then
    die "$TOLLGATE_BIN missing: run \`cargo build --release\` (or set TOLLGATE_BIN; TARGETS=\"nginx:cache nginx:plain\" for NGINX alone)"
fi
ports="$B1_PORT $B2_PORT $NGINX_PORT $NGINX_CACHE_PORT $TOLLGATE_PORT $TOLLGATE_ADMIN"
for p in $ports; do
    [[ -z $(ss -Htln "sport = :$p") ]] || die "port $p is in use (another run? set the *_PORT variables)"
done
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
CLK_TCK=$(getconf CLK_TCK)

# ---- process bookkeeping and cleanup ------------------------------------------
# shellcheck source=lib/procs.sh
source "$HERE/lib/procs.sh"

# The backends' body: readable, BODY_BYTES long with its final newline, and
# nothing nginx's config parser would take for a variable or a quote.
BODY=$(python3 -c "import sys; n = int(sys.argv[1]) - 1; print(('tollgate cache bench ' * (n // 21 + 1))[:n], end='')" "$BODY_BYTES")
if (( NGINX_OPEN_FILE_CACHE )); then
    # Cache hits read a file each; this keeps its descriptor instead of an
    # open/fstat/close per hit, as a deployment tuned for hits would.
    OFC="    open_file_cache max=10000 inactive=60s;"
else
    OFC="    # open_file_cache: off (NGINX_OPEN_FILE_CACHE=0)"
fi

fill() { # fill TEMPLATE OUT DIR PORT: replace the @NAME@ placeholders
    # nginx-proxy.conf.in also has an upload route to sinks, unused here: its
    # @S1@/@S2@ point at the backends so that the file stays valid.
    sed -e "s|@DIR@|$3|g" -e "s|@PORT@|$4|g" -e "s|@WWW@|$RUN_DIR/www|g" \
        -e "s|@B1@|$B1_PORT|g" -e "s|@B2@|$B2_PORT|g" -e "s|@S1@|$B1_PORT|g" -e "s|@S2@|$B2_PORT|g" \
        -e "s|@WORKERS@|$PROXY_WORKERS|g" -e "s|@BODY@|$BODY\\\\n|g" -e "s|^@OPEN_FILE_CACHE@\$|$OFC|" "$1" > "$2"
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
{
    echo "date	$(date -Is)"
    echo "host	$(uname -srm), $(nproc --all) CPUs"
    [[ " $TARGETS " == *" tollgate:"* ]] && echo "tollgate	$TOLLGATE_BIN ($("$TOLLGATE_BIN" --version 2>/dev/null || echo '?'))"
    echo "nginx	$(nginx -v 2>&1)"
    echo "wrk	$(wrk -v 2>&1 | head -1)"
    echo "knobs	TARGETS='$TARGETS' ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS WRK_THREADS=$WRK_THREADS BODY_BYTES=$BODY_BYTES PROXY_WORKERS=$PROXY_WORKERS NGINX_OPEN_FILE_CACHE=$NGINX_OPEN_FILE_CACHE PROXY_CPUS=$PROXY_CPUS BACKEND_CPUS=$BACKEND_CPUS LOADGEN_CPUS=$LOADGEN_CPUS NICE=$NICE"
    echo "load_before	$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$RESULTS_DIR/meta.tsv"

# ---- upstreams ----------------------------------------------------------------
log "starting backends on CPU $BACKEND_CPUS ($BODY_BYTES-byte body on every path)"
nginx_instance b1 cache-backend.conf.in "$B1_PORT" "$BACKEND_CPUS"
nginx_instance b2 cache-backend.conf.in "$B2_PORT" "$BACKEND_CPUS"
BACKEND_PIDS="${STARTED[-2]} ${STARTED[-1]}"
wait_ok "http://127.0.0.1:$B1_PORT/"
wait_ok "http://127.0.0.1:$B2_PORT/"
printf '%s\n' "$BODY" > "$RUN_DIR/body"
for p in $B1_PORT $B2_PORT; do
    for path in /plain /cached; do
        curl -sf "http://127.0.0.1:$p$path" | cmp -s - "$RUN_DIR/body" || die "backend :$p$path does not answer the $BODY_BYTES-byte body"
    done
done

# ---- proxies ------------------------------------------------------------------
declare -A URL PID
export B1_PORT B2_PORT
TG_NOTE=""
if [[ " $TARGETS " == *" tollgate:"* ]]; then
    tg_config=$TOLLGATE_CONFIG
    if ! "$TOLLGATE_BIN" validate --config "$TOLLGATE_CONFIG" > "$RUN_DIR/tollgate-validate.txt" 2>&1; then
        if grep -qE "unknown key \`(caches|cache)\`" "$RUN_DIR/tollgate-validate.txt"; then
            TG_NOTE="this tollgate build does not support response caching (\`caches\` / \`cache\` are unknown keys): $TOLLGATE_BIN"
            banner "$TG_NOTE" \
                   "tollgate:cached is SKIPPED; tollgate:plain is measured with the cache lines of" \
                   "$(basename "$TOLLGATE_CONFIG") removed, and the NGINX targets run as usual." \
                   "validate said:" "$(sed 's/^/  /' "$RUN_DIR/tollgate-validate.txt")"
            drop_target tollgate:cached
            # The same file without the `caches:` section and the route's `cache:` line.
            tg_config=$RUN_DIR/bench-cache-nocache.yaml
            sed -e '/^caches:/,/^$/d' -e '/^[[:space:]]*cache: {/d' "$TOLLGATE_CONFIG" > "$tg_config"
            "$TOLLGATE_BIN" validate --config "$tg_config" >/dev/null 2>&1 || { drop_target tollgate:plain; tg_config=""; log "the config without cache lines is invalid too: tollgate skipped"; }
        else
            cat "$RUN_DIR/tollgate-validate.txt" >&2
            die "tollgate rejects $TOLLGATE_CONFIG"
        fi
    fi
    if [[ -n $tg_config && " $TARGETS " == *" tollgate:"* ]]; then
        log "starting tollgate on CPU $PROXY_CPUS ($(basename "$tg_config"))"
        TOLLGATE_BENCH_PORT=$TOLLGATE_PORT TOLLGATE_BENCH_ADMIN=$TOLLGATE_ADMIN \
            start tollgate "$PROXY_CPUS" "$TOLLGATE_BIN" --config "$tg_config" --access-log off
        URL[tollgate:plain]=http://127.0.0.1:$TOLLGATE_PORT/plain; PID[tollgate:plain]=$LAST_PID
        URL[tollgate:cached]=http://127.0.0.1:$TOLLGATE_PORT/cached; PID[tollgate:cached]=$LAST_PID
        wait_ok "http://127.0.0.1:$TOLLGATE_ADMIN/readyz"
    fi
fi
if has_target nginx:cache; then
    log "starting NGINX with proxy_cache on CPU $PROXY_CPUS ($PROXY_WORKERS workers)"
    nginx_instance nginx-cache nginx-cache.conf.in "$NGINX_CACHE_PORT" "$PROXY_CPUS"
    URL[nginx:cache]=http://127.0.0.1:$NGINX_CACHE_PORT/cached; PID[nginx:cache]=$LAST_PID
fi
if has_target nginx:plain; then
    log "starting NGINX (plain proxy, compare.sh's config) on CPU $PROXY_CPUS ($PROXY_WORKERS workers)"
    nginx_instance nginx-plain nginx-proxy.conf.in "$NGINX_PORT" "$PROXY_CPUS"
    URL[nginx:plain]=http://127.0.0.1:$NGINX_PORT/plain; PID[nginx:plain]=$LAST_PID
fi
[[ -n $TARGETS ]] || die "no target left to measure"

# ---- every target answers the body; the caches are warm and answer hits ----------
# header VALUE-OF NAME URL: one request, the named response header's value (empty if none)
header() { curl -sf -o /dev/null -D - "$2" | tr -d '\r' | awk -v h="$(tr 'A-Z' 'a-z' <<<"$1")" -F': *' 'tolower($1) == h { sub(/^[^:]*: */, ""); print; exit }'; }
for t in $TARGETS; do
    wait_ok "${URL[$t]}"
    curl -sf "${URL[$t]}" | cmp -s - "$RUN_DIR/body" || die "$t: ${URL[$t]} does not answer the backends' $BODY_BYTES-byte body"
done
: > "$RESULTS_DIR/checks.txt"
if has_target nginx:cache; then
    st=""
    for _ in 1 2 3 4 5; do st=$(header X-Cache-Status "${URL[nginx:cache]}"); [[ $st == HIT ]] && break; sleep 0.2; done
    [[ $st == HIT ]] || die "nginx:cache does not answer X-Cache-Status: HIT after 5 requests (last: '${st:-none}'; see $RUN_DIR/nginx-cache/error.log)"
    echo "nginx:cache	X-Cache-Status: $st" | tee -a "$RESULTS_DIR/checks.txt" >&2
fi
if has_target nginx:plain; then
    st=$(header X-Cache-Status "${URL[nginx:plain]}")
    [[ -z $st ]] || die "nginx:plain answers X-Cache-Status '$st': it should not cache"
fi
if has_target tollgate:cached; then
    st=""
    for _ in 1 2 3 4 5; do st=$(header Cache-Status "${URL[tollgate:cached]}"); [[ ${st,,} == *hit* ]] && break; sleep 0.2; done
    if [[ ${st,,} == *hit* ]]; then
        echo "tollgate:cached	Cache-Status: $st" | tee -a "$RESULTS_DIR/checks.txt" >&2
    else
        TG_NOTE="tollgate accepts the cache config but /cached answered no Cache-Status hit after 5 requests (last: '${st:-no Cache-Status header}')"
        banner "$TG_NOTE" "tollgate:cached is SKIPPED; the other targets are measured."
        drop_target tollgate:cached
    fi
fi
if has_target tollgate:plain; then
    st=$(header Cache-Status "${URL[tollgate:plain]}")
    [[ ${st,,} != *hit* ]] || die "tollgate:plain answers Cache-Status '$st': the plain route must not be cached"
fi
[[ -n $TG_NOTE ]] && echo "tollgate_note	$TG_NOTE" >> "$RESULTS_DIR/meta.tsv"
echo "targets_measured	$TARGETS" >> "$RESULTS_DIR/meta.tsv"

# Idle memory: before any load (the caches hold one entry each).
printf 'target\trss_kib\tpss_kib\tprocesses\n' > "$RESULTS_DIR/idle.tsv"
for t in $TARGETS; do
    read -r _ rss pss n < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
    printf '%s\t%s\t%s\t%s\n' "$t" "$rss" "$pss" "$n" >> "$RESULTS_DIR/idle.tsv"
done

# ---- wrk runs -----------------------------------------------------------------
printf 'round\ttarget\trps\tp50_ms\tp99_ms\trequests\terrors\tnon2xx\tproxy_cpu_s\tcpu_s_per_100k\trss_peak_kib\tpss_peak_kib\tbackend_cpu_s_per_100k\tupstream_requests\tupstream_share\tsut_busy_pct\tloadgen_busy_pct\n' > "$RESULTS_DIR/wrk.tsv"

upstream_requests() { # requests answered by both backends so far (stub_status)
    local a=0 n
    for p in $B1_PORT $B2_PORT; do
        n=$(curl -sf "http://127.0.0.1:$p/_status" | awk 'NR==3 {print $3}')
        a=$((a + ${n:-0}))
    done
    echo $a
}

cpu_jiffies() { # cpu_jiffies "0,2-3" -> "busy total" summed over those CPUs
    python3 - "$1" <<'EOF'
import sys
want = set()
for part in sys.argv[1].split(","):
    a, _, b = part.partition("-")
    want.update(range(int(a), int(b or a) + 1))
busy = total = 0
for line in open("/proc/stat"):
    f = line.split()
    if f[0].startswith("cpu") and f[0][3:].isdigit() and int(f[0][3:]) in want:
        v = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
        total += sum(v)
        busy += sum(v) - v[3] - v[4]
print(busy, total)
EOF
}

wrk_cmd() { # wrk_cmd SECONDS URL
    timeout -k 5 $(($1 + 30)) taskset -c "$LOADGEN_CPUS" \
        wrk -t"$WRK_THREADS" -c"$CONNS" -d"${1}s" --latency -s "$HERE/$WRK_SCRIPT" "$2"
}

measure() { # measure ROUND TARGET
    local round=$1 t=$2 url=${URL[$2]}
    local raw="$RESULTS_DIR/wrk-$round-${t//:/-}.txt"
    wrk_cmd "$WARMUP" "$url" > /dev/null 2>&1 || true
    local up0 c0 b0 s0 l0
    up0=$(upstream_requests)
    read -r c0 _ < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
    read -r b0 _ < <(python3 "$HERE/lib/procmon.py" snap $BACKEND_PIDS)
    s0=$(cpu_jiffies "$PROXY_CPUS,$BACKEND_CPUS"); l0=$(cpu_jiffies "$LOADGEN_CPUS")
    INTERVAL=0.5 taskset -c "$LOADGEN_CPUS" python3 "$HERE/lib/procmon.py" peak "$RUN_DIR/peak" ${PID[$t]} &
    local sampler=$!
    TRANSIENT=$sampler
    wrk_cmd "$DURATION" "$url" > "$raw" 2>&1 || log "$t: wrk exited with an error (see $raw)"
    kill -TERM "$sampler"; wait "$sampler" || true
    TRANSIENT=""
    local c1 b1 s1 l1 up1
    read -r c1 _ < <(python3 "$HERE/lib/procmon.py" snap ${PID[$t]})
    read -r b1 _ < <(python3 "$HERE/lib/procmon.py" snap $BACKEND_PIDS)
    s1=$(cpu_jiffies "$PROXY_CPUS,$BACKEND_CPUS"); l1=$(cpu_jiffies "$LOADGEN_CPUS")
    up1=$(upstream_requests)
    local line; line=$(grep '^BENCH ' "$raw" || true)
    [[ -n $line ]] || die "$t: no result from wrk (see $raw)"
    local -A r=()
    local kv
    for kv in ${line#BENCH }; do r[${kv%%=*}]=${kv#*=}; done
    read -r rss pss < "$RUN_DIR/peak"
    # The second stub_status reading counts itself once per backend.
    python3 - "$round" "$t" "${r[rps]}" "${r[p50_ms]}" "${r[p99_ms]}" "${r[requests]}" "${r[sock_errors]}" "${r[non2xx]}" \
        $((c1 - c0)) $((b1 - b0)) "$rss" "$pss" $((up1 - up0 - 2)) "$s0" "$s1" "$l0" "$l1" "$CLK_TCK" \
        >> "$RESULTS_DIR/wrk.tsv" <<'EOF'
import sys
(rnd, t, rps, p50, p99, reqs, errs, non2xx, cpu, bcpu, rss, pss, up, s0, s1, l0, l1, tck) = sys.argv[1:]
reqs, tck, up = int(reqs), int(tck), max(int(up), 0)
per = lambda ticks: f"{int(ticks) / tck * 100000 / reqs:.3f}" if reqs else "nan"
def busy(a, b):
    (ba, ta), (bb, tb) = map(int, a.split()), map(int, b.split())
    return f"{100 * (bb - ba) / (tb - ta):.0f}" if tb > ta else "nan"
share = f"{up / reqs:.5f}" if reqs else "nan"
print("\t".join([rnd, t, rps, p50, p99, str(reqs), errs, non2xx, f"{int(cpu) / tck:.2f}", per(cpu), rss, pss,
                 per(bcpu), str(up), share, busy(s0, s1), busy(l0, l1)]))
EOF
    log "round $round $(printf '%-16s' "$t") $(tail -1 "$RESULTS_DIR/wrk.tsv" | awk -F'\t' '{printf "%9.0f req/s  p99 %6.2f ms  CPU %6.3f s/100k  upstream requests %d  wrk core %s%%", $3, $5, $10, $14, $17}')"
    local errs=${r[sock_errors]} non=${r[non2xx]}
    (( errs == 0 && non == 0 )) || log "WARNING: $t had $errs socket errors and $non non-2xx answers"
}

log "measuring, interleaved: $TARGETS ($ROUNDS rounds of ${DURATION}s, ${WARMUP}s warm-up each)"
for round in $(seq "$ROUNDS"); do
    for t in $TARGETS; do
        measure "$round" "$t"
    done
done

# The caches must still answer hits after the load.
if has_target nginx:cache; then echo "nginx:cache after the runs	X-Cache-Status: $(header X-Cache-Status "${URL[nginx:cache]}")" >> "$RESULTS_DIR/checks.txt"; fi
if has_target tollgate:cached; then echo "tollgate:cached after the runs	Cache-Status: $(header Cache-Status "${URL[tollgate:cached]}")" >> "$RESULTS_DIR/checks.txt"; fi

echo "load_after	$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RESULTS_DIR/meta.tsv"
python3 "$HERE/lib/cache_report.py" "$RESULTS_DIR" | tee "$RESULTS_DIR/summary.txt"
echo "results: $RESULTS_DIR" >&2
