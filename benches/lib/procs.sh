# Process bookkeeping shared by benches/compare.sh and benches/cache-hit.sh,
# sourced after each defines die, log, NICE, LOADGEN_CPUS and RUN_DIR:
# everything started is stopped at exit (TERM, then KILL), the script and its
# children run at nice $NICE (its autogroup too, restored at exit), pinned to
# the load generator's CPUs; start runs a pinned background process and
# wait_ok polls a URL until it answers.
declare -a STARTED=()
TRANSIENT=""  # a sampler or client of the caller, running right now, if any
OLD_AUTOGROUP=""
cleanup() {
    local pid
    [[ -n $TRANSIENT ]] && kill -TERM "$TRANSIENT" 2>/dev/null
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        (( alive )) || break
        sleep 0.1
    done
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    if [[ -n $OLD_AUTOGROUP ]]; then echo "$OLD_AUTOGROUP" > /proc/self/autogroup 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Shared hosts: run everything we start at a high priority, including against
# other login sessions (autogroups make plain nice useless across sessions).
if [[ $NICE != 0 ]]; then
    renice -n "$NICE" -p $$ >/dev/null 2>&1 || log "renice failed (not root?); continuing at normal priority"
    if [[ -w /proc/self/autogroup ]]; then
        OLD_AUTOGROUP=$(sed -n 's/.*nice \(-\?[0-9]\+\).*/\1/p' /proc/self/autogroup)
        echo "$NICE" > /proc/self/autogroup 2>/dev/null || OLD_AUTOGROUP=""
    fi
fi
taskset -cp "$LOADGEN_CPUS" $$ >/dev/null

# start NAME CPUS CMD...: in the background, pinned, output to $RUN_DIR/NAME.log.
start() {
    local name=$1 cpus=$2; shift 2
    taskset -c "$cpus" "$@" >"$RUN_DIR/$name.log" 2>&1 &
    STARTED+=($!)
    LAST_PID=$!
}

# wait_ok URL: until it answers 2xx, at most 10 s.
wait_ok() {
    for _ in $(seq 100); do
        curl -sf -o /dev/null "$1" && return 0
        sleep 0.1
    done
    die "$1 did not answer within 10 s (see $RUN_DIR/*.log)"
}
