#!/usr/bin/env bash
# The whole suite: installs what the tests need (scripts/deps.sh), then formatting, clippy,
# every test (as root the end-to-end tests in network namespaces run too; otherwise they print
# SKIPPED), a short fuzz run, and the Debian package: built (scripts/package.sh) and its
# contents and maintainer scripts checked (tests/packaging.sh). Runs every step, then exits
# non-zero if any failed.
#
# Usage: sudo scripts/test.sh [--no-install] [--deps-only]
#   --no-install  install nothing: name what is missing and stop (exit 1)
#   --deps-only   only the dependency step (check and install), then stop
#
# Environment: E2E_PARALLEL (labs at once, default 3), E2E_LOG (product log level in the e2e
# tests), FUZZ_SECONDS (default 30).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

no_install=""
deps_only=0
for arg in "$@"; do
    case $arg in
    --no-install) no_install=--no-install ;;
    --deps-only) deps_only=1 ;;
    *)
        echo "usage: scripts/test.sh [--no-install] [--deps-only]" >&2
        exit 2
        ;;
    esac
done

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
echo "==> deps: what the tests need (scripts/deps.sh tests $no_install)"
if ! deps_ensure tests $no_install; then
    echo "scripts/test.sh: FAILED: dependencies missing (see above)"
    exit 1
fi
((deps_only)) && exit 0

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
step fuzz bash scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
step package bash scripts/package.sh
step package-contents bash tests/packaging.sh

if ((${#failed[@]})); then
    echo "scripts/test.sh: FAILED steps: ${failed[*]}"
    exit 1
fi
echo "scripts/test.sh: all steps passed"
