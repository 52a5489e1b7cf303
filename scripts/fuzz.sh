#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for SECONDS each (default 60) and fails if any finds a
# crash. Usage: scripts/fuzz.sh [SECONDS]
#
# Works on the stable toolchain: cargo-fuzz needs -Zsanitizer and other nightly flags, which
# RUSTC_BOOTSTRAP=1 unlocks on stable. AddressSanitizer works that way (stable ships the ASan
# runtime); set FUZZ_SANITIZER=none to build without it (faster, still catches panics).
#
# The committed seeds (fuzz/corpus/<target>/) are only read; what the fuzzer finds goes to
# fuzz/target/corpus-work/<target>/. FUZZ_MERGE=1 merges inputs that add coverage back into
# fuzz/corpus/<target>/ (keep the committed corpus small). Crashes land in fuzz/artifacts/.
# FUZZ_PARALLEL: how many targets run at once (default: one per CPU).
set -euo pipefail

SECONDS_PER_TARGET="${1:-60}"
SANITIZER="${FUZZ_SANITIZER:-address}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export RUSTC_BOOTSTRAP=1
# cargo-fuzz and a C++ compiler (libFuzzer), installed when missing.
bash scripts/deps.sh fuzz

TARGETS=(wire_parse responder client_receive offload_roundtrip datagram_decision datagram_train uapi_parse wireguard_responder)
# One build for all targets, so the run time is all fuzzing.
cargo fuzz build -s "$SANITIZER"

# Targets run side by side, as many at once as there are CPUs (FUZZ_PARALLEL to change it):
# each fuzzer is one process on one core, and nothing else runs during this step.
PARALLEL="${FUZZ_PARALLEL:-$(nproc)}"

# Runs one target; its verdict goes to fuzz/target/fuzz-<target>.result.
fuzz_one() {
    local target=$1
    local work="fuzz/target/corpus-work/$target"
    local log="fuzz/target/fuzz-$target.log"
    local result="fuzz/target/fuzz-$target.result"
    mkdir -p "$work" "fuzz/corpus/$target"
    local status=0
    cargo fuzz run -s "$SANITIZER" "$target" "$work" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1 || status=$?
    local runs cov
    runs=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | awk '{print $2" runs in "$5"s"}' || true)
    cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[kMb]*' "$log" | tail -1 || true)
    if [ "$status" -ne 0 ]; then
        local artifact
        artifact=$(grep -oE 'Test unit written to [^ ]+' "$log" | tail -1 | cut -d' ' -f5- || true)
        echo "FAIL $target: exit $status ${artifact:+(crash: $artifact)} log: $log" >"$result"
        grep -E 'panicked|ERROR: |SUMMARY' "$log" | head -5 >&2 || true
    else
        echo "ok   $target: ${runs:-? runs}, ${cov:-no stats}" >"$result"
    fi
    if [ "${FUZZ_MERGE:-0}" = "1" ]; then
        cargo fuzz run -s "$SANITIZER" "$target" "fuzz/corpus/$target" "$work" -- -merge=1 \
            >/dev/null 2>&1 || true
    fi
}

running=0
for target in "${TARGETS[@]}"; do
    rm -f "fuzz/target/fuzz-$target.result"
    fuzz_one "$target" &
    running=$((running + 1))
    if [ "$running" -ge "$PARALLEL" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait

failed=0
summary=()
for target in "${TARGETS[@]}"; do
    result="fuzz/target/fuzz-$target.result"
    if [ -s "$result" ]; then
        summary+=("$(cat "$result")")
        grep -q '^ok ' "$result" || failed=1
    else
        summary+=("FAIL $target: no verdict (see fuzz/target/fuzz-$target.log)")
        failed=1
    fi
done

printf '%s\n' "${summary[@]}"
exit "$failed"
