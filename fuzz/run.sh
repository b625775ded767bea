#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), one after the
# other, and stops at the first crash (libFuzzer writes the input to
# fuzz/artifacts/<target>/; make it a regression test). Each target keeps its
# corpus in fuzz/corpus/<target>/ (not committed) and also reads the
# hand-made seeds in fuzz/seeds/<target>/ (committed; libFuzzer writes only to
# the first directory); config_load also reads the shipped examples in
# config/. Needs a nightly toolchain and cargo-fuzz (cargo install
# cargo-fuzz); docs/fuzzing.md has the targets and the last results.
#
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  seeds=()
  if [ -d "seeds/$target" ]; then
    seeds+=("seeds/$target")
  fi
  if [ "$target" = config_load ]; then
    seeds+=(../config)
  fi
  printf '\n== %s, %s s\n' "$target" "$secs"
  cargo +nightly fuzz run "$target" "corpus/$target" ${seeds[@]+"${seeds[@]}"} -- \
    -max_total_time="$secs" -print_final_stats=1
done
