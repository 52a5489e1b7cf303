#!/usr/bin/env bash
# The whole suite: formatting, clippy, every test (as root the end-to-end tests in network
# namespaces run too; otherwise they print SKIPPED), and a short fuzz run if scripts/fuzz.sh
# exists. Runs every step, then exits non-zero if any failed.
#
# Environment: E2E_PARALLEL (labs at once, default 3), E2E_LOG (product log level in the e2e
# tests), FUZZ_SECONDS (default 30).
set -uo pipefail

cd "$(dirname "$0")/.."

failed=()
step() {
    local name=$1
    shift
    echo "==> $name: $*"
    local start=$SECONDS
    if "$@"; then
        echo "==> $name: ok ($((SECONDS - start)) s)"
    else
        echo "==> $name: FAILED ($((SECONDS - start)) s)"
        failed+=("$name")
    fi
}

step fmt cargo fmt --all --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test cargo test --workspace --no-fail-fast
if [[ -f scripts/fuzz.sh ]]; then
    step fuzz bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
else
    echo "==> fuzz: scripts/fuzz.sh not present, skipped"
fi

if ((${#failed[@]})); then
    echo "scripts/test.sh: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "scripts/test.sh: all steps passed"
