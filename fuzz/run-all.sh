#!/usr/bin/env bash
# Runs every fuzz target in turn (one process, one core) for RUNS executions, then minimises its
# corpus, and prints per target: executions, exec/s, libFuzzer's final `cov:` and `ft:`, the
# corpus files kept, and the result. Exits non-zero if any target crashed, timed out or ran out
# of memory (the input is saved under fuzz/artifacts/<target>/).
#
#   fuzz/run-all.sh [RUNS] [TARGET...]      RUNS defaults to 10000000; TARGETs to all of them
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); works on the stable toolchain because
# no sanitizer is used (`--sanitizer none`: libFuzzer's coverage instrumentation is stable rustc
# codegen flags). Builds with optimisations, debug assertions and overflow checks (cargo-fuzz's
# default), in $CARGO_TARGET_DIR (default ~/.cache/tg-fuzz-target). Logs go to $FUZZ_LOG_DIR
# (default: a fresh temporary directory, printed at the end).
set -uo pipefail
cd "$(dirname "$0")"

RUNS="${1:-10000000}"
[ "$#" -gt 0 ] && shift
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tg-fuzz-target}"
LOGS="${FUZZ_LOG_DIR:-$(mktemp -d -t tollgate-fuzz.XXXXXX)}"
mkdir -p "$LOGS"

if [ "$#" -gt 0 ]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer none >"$LOGS/build.log" 2>&1 || {
    echo "build failed; see $LOGS/build.log" >&2
    exit 2
}

# -timeout: seconds per input; -rss_limit_mb: the process's memory; no -jobs/-workers/-fork, so
# libFuzzer runs in this one process on one core (what -jobs=1 means, without its extra worker
# process and fuzz-0.log).
FLAGS=(-runs="$RUNS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

printf '%-14s %12s %9s %6s %7s %7s  %s\n' target executions exec/s cov ft corpus result
failed=0
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="$LOGS/$t.log"
    cargo fuzz run --sanitizer none "$t" -- "${FLAGS[@]}" >"$log" 2>&1
    rc=$?
    execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    rate=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
    ft=$(grep -oE 'ft: [0-9]+' <<<"$last" | grep -oE '[0-9]+')
    if [ "$rc" -eq 0 ]; then
        result=ok
        # Keep the checked-in corpus minimal: only inputs that add coverage.
        cargo fuzz cmin --sanitizer none "$t" >"$LOGS/$t.cmin.log" 2>&1 || result="ok (cmin failed)"
    else
        failed=1
        kind=$(grep -oE 'ERROR: libFuzzer: [a-z-]+|panicked at [^ ]+' "$log" | head -1)
        saved=$(grep -oE 'artifacts/[^ ]+' "$log" | tail -1)
        result="FAILED (${kind:-exit $rc}) ${saved}"
    fi
    files=$(find "corpus/$t" -type f | wc -l)
    printf '%-14s %12s %9s %6s %7s %7s  %s\n' "$t" "${execs:--}" "${rate:--}" "${cov:--}" \
        "${ft:--}" "$files" "$result"
done
echo "logs: $LOGS"
exit "$failed"
