#!/usr/bin/env bash
# Soak: tollgate under a fixed k6 arrival rate for DURATION seconds with a
# reload every RELOAD_EVERY seconds; RSS, open file descriptors and p99 must
# stay flat.
#
#   benches/soak.sh                                  # 30 minutes at 300 req/s
#   DURATION=120 WARMUP=30 WINDOW=10 benches/soak.sh # a quick check
#
# Starts its own redis-server, two benches/chaos/faulty.py targets (normal
# mode), a third one serving the JWKS, and the gateway with
# benches/chaos/chaos.yaml (JSON access log to a file), on ports of its own.
# The load is benches/chaos/load.js's mix (GET and POST through the
# load-balanced upstream, the Redis rate-limited route, the JWKS-backed JWT
# route). Every RELOAD_EVERY seconds the config is rewritten (the marker
# route's body flips, an upstream with health checks and its route come and
# go) and POST /reload is called. Every SAMPLE_EVERY seconds the gateway's
# VmRSS and open fds are read from /proc. k6 tags each request with its
# WINDOW-second window and reports each window's p99.
#
# At the end benches/chaos/soak_report.py prints the per-window table and the
# verdicts (RSS and fds flat within their tolerance after WARMUP, p99 steady)
# and, unless DOCS=0, writes them into docs/chaos.md's "Soak" section. Exit
# status: 0 when every verdict holds.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CHAOS=$HERE/chaos

# ---- knobs ---------------------------------------------------------------
DURATION=${DURATION:-1800}          # seconds of load
RATE=${RATE:-300}                   # k6 arrival rate, req/s
RELOAD_EVERY=${RELOAD_EVERY:-10}    # seconds between reloads
SAMPLE_EVERY=${SAMPLE_EVERY:-5}     # seconds between RSS/fd samples
WINDOW=${WINDOW:-60}                # seconds per p99 window
WARMUP=${WARMUP:-300}               # seconds before the flatness checks start
RSS_TOL_PCT=${RSS_TOL_PCT:-5}       # RSS: allowed change, first vs last windows after warm-up
FD_TOL_PCT=${FD_TOL_PCT:-5}         # fds: same (at least FD_TOL_ABS)
FD_TOL_ABS=${FD_TOL_ABS:-3}
P99_TOL=${P99_TOL:-1.5}             # p99: last windows' median at most this times the first windows'
MIX=${MIX:-api:45,post:10,rl:20,jwt:25}
TOLLGATE_BIN=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/tollgate}
RUN_DIR=${RUN_DIR:-/tmp/tollgate-soak/$(date +%Y%m%d-%H%M%S)}
DOCS=${DOCS:-1}
NOTE=${NOTE:-}                      # a sentence for the report: what else the machine ran
export CHAOS_PORT=${CHAOS_PORT:-18580} CHAOS_ADMIN=${CHAOS_ADMIN:-19580}
export CHAOS_UP_A=${CHAOS_UP_A:-18581} CHAOS_UP_B=${CHAOS_UP_B:-18582}
export CHAOS_JWKS=${CHAOS_JWKS:-18583} CHAOS_REDIS=${CHAOS_REDIS:-18584}
CTL_A=${CTL_A:-18591} CTL_B=${CTL_B:-18592} CTL_JWKS=${CTL_JWKS:-18593}

die() { echo "soak.sh: $*" >&2; exit 1; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# ---- preflight -------------------------------------------------------------
for tool in k6 redis-server curl python3; do command -v $tool >/dev/null || die "$tool not found"; done
[[ -x $TOLLGATE_BIN ]] || die "no binary at $TOLLGATE_BIN (cargo build --release, or set TOLLGATE_BIN)"
for port in $CHAOS_PORT $CHAOS_ADMIN $CHAOS_UP_A $CHAOS_UP_B $CHAOS_JWKS $CHAOS_REDIS $CTL_A $CTL_B $CTL_JWKS; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then die "port $port is in use"; fi
done
mkdir -p "$RUN_DIR"
log "run directory $RUN_DIR"

# ---- processes: started here, stopped by PID at exit (benches/lib/procs.sh)
NICE=${NICE:-0}
LOADGEN_CPUS=${LOADGEN_CPUS:-0-$(($(nproc) - 1))}
# shellcheck source=lib/procs.sh
source "$(dirname "$0")/lib/procs.sh"
ALL_CPUS=$LOADGEN_CPUS

python3 "$CHAOS/mkkeys.py" "$RUN_DIR/keys" 50
start redis "$ALL_CPUS" redis-server --port "$CHAOS_REDIS" --bind 127.0.0.1 --save '' --appendonly no
start target-a "$ALL_CPUS" python3 "$CHAOS/faulty.py" --port "$CHAOS_UP_A" --control "$CTL_A" --name a
start target-b "$ALL_CPUS" python3 "$CHAOS/faulty.py" --port "$CHAOS_UP_B" --control "$CTL_B" --name b
start jwks "$ALL_CPUS" python3 "$CHAOS/faulty.py" --port "$CHAOS_JWKS" --control "$CTL_JWKS" --name jwks --jwks "$RUN_DIR/keys/jwks.json"
wait_ok "http://127.0.0.1:$CTL_A/__chaos/stats"
wait_ok "http://127.0.0.1:$CTL_B/__chaos/stats"
wait_ok "http://127.0.0.1:$CTL_JWKS/__chaos/stats"

CONFIG=$RUN_DIR/tollgate.yaml
cp "$CHAOS/chaos.yaml" "$CONFIG"
start gateway "$ALL_CPUS" "$TOLLGATE_BIN" --config "$CONFIG" --log-format json --access-log "$RUN_DIR/access.log"
GW=$LAST_PID
wait_ok "http://127.0.0.1:$CHAOS_ADMIN/readyz"
log "gateway pid $GW ready on 127.0.0.1:$CHAOS_PORT"

# variant N of the config: marker body A/B, spare upstream in (odd N) or out
variant() {
    local n=$1 set=A
    (( n % 2 )) && set=B
    if (( n % 2 )); then
        sed -e "/# reload-marker/s/route-set-[AB]/route-set-$set/" -e '/# spare$/s/^#  /  /' "$CHAOS/chaos.yaml"
    else
        sed -e "/# reload-marker/s/route-set-[AB]/route-set-$set/" "$CHAOS/chaos.yaml"
    fi > "$CONFIG.tmp"
    mv "$CONFIG.tmp" "$CONFIG"
}

# ---- samplers ---------------------------------------------------------------
sample() {
    local rss fds
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$GW/status" 2>/dev/null) || return 0
    fds=$(ls "/proc/$GW/fd" 2>/dev/null | wc -l)
    printf '%s\t%s\t%s\n' "$(date +%s.%N)" "$rss" "$fds" >> "$RUN_DIR/samples.tsv"
}
printf 'epoch\trss_kib\tfds\n' > "$RUN_DIR/samples.tsv"
printf 'epoch\tstatus\n' > "$RUN_DIR/reloads.tsv"
sample
(
    while kill -0 "$GW" 2>/dev/null; do sleep "$SAMPLE_EVERY"; sample; done
) &
STARTED+=($!)
(
    n=0
    while sleep "$RELOAD_EVERY"; do
        n=$((n + 1))
        variant $n
        code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$CHAOS_ADMIN/reload" || echo 000)
        printf '%s\t%s\n' "$(date +%s)" "$code" >> "$RUN_DIR/reloads.tsv"
    done
) &
RELOADER=$!
STARTED+=($RELOADER)

# ---- the load ----------------------------------------------------------------
log "k6: $RATE req/s for $DURATION s, a reload every $RELOAD_EVERY s"
date +%s > "$RUN_DIR/start"
curl -s "http://127.0.0.1:$CHAOS_ADMIN/metrics" > "$RUN_DIR/metrics-before.txt"
set +e
env $(compgen -e | grep '^K6_' | sed 's/^/-u /') \
    BASE_URL="http://127.0.0.1:$CHAOS_PORT" RATE="$RATE" DURATION="${DURATION}s" MIX="$MIX" \
    TOKENS="$RUN_DIR/keys/tokens.json" RUN=soak LOG=fail WINDOW_S="$WINDOW" \
    SUMMARY="$RUN_DIR/k6-summary.json" VUS=50 MAX_VUS=2000 \
    k6 run -q --console-output="$RUN_DIR/k6-failures.log" --log-format raw "$CHAOS/load.js" \
    > "$RUN_DIR/k6.out" 2> "$RUN_DIR/k6.err"
k6_status=$?
set -e
date +%s > "$RUN_DIR/end"
cat /proc/loadavg > "$RUN_DIR/loadavg"
kill "$RELOADER" 2>/dev/null || true
variant 0
curl -s -o /dev/null -X POST "http://127.0.0.1:$CHAOS_ADMIN/reload" || true
# at rest: once the fd count has not moved for 3 s (pooled connections idle out after 2 s), at most 30 s
last=-1; still=0
for _ in $(seq 60); do
    fds=$(ls "/proc/$GW/fd" 2>/dev/null | wc -l)
    if [[ $fds == "$last" ]]; then still=$((still + 1)); else still=0; last=$fds; fi
    (( still >= 6 )) && break
    sleep 0.5
done
sample
curl -s "http://127.0.0.1:$CHAOS_ADMIN/metrics" > "$RUN_DIR/metrics-after.txt"
log "k6 exited $k6_status"

docs=()
[[ $DOCS == 1 ]] && docs=(--docs "$ROOT/docs/chaos.md")
python3 "$CHAOS/soak_report.py" --run-dir "$RUN_DIR" --warmup "$WARMUP" --window "$WINDOW" \
    --rate "$RATE" --reload-every "$RELOAD_EVERY" --rss-tol "$RSS_TOL_PCT" --fd-tol "$FD_TOL_PCT" \
    --fd-tol-abs "$FD_TOL_ABS" --p99-tol "$P99_TOL" --binary "$TOLLGATE_BIN" --note "$NOTE" "${docs[@]}"
