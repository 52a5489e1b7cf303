#!/usr/bin/env bash
# Nightly fuzzing: every cargo-fuzz target for a long time (default 1800 s each) through
# scripts/fuzz.sh, merging inputs that add coverage back into fuzz/corpus/<target>/.
#
# Usage: scripts/fuzz-nightly.sh [SECONDS_PER_TARGET]
#
# Anything a target finds (fuzz/artifacts/<target>/crash-*, leak-*, timeout-*, oom-*) is copied
# into fuzz/corpus/<target>/regression-<name>: every later scripts/fuzz.sh run, including the
# short one in scripts/test.sh, replays the whole corpus first, so a committed finding is a
# regression test from then on. The script lists what to commit and exits non-zero.
# Then: fix the bug, add a unit test next to the code that reproduces it (the artifact's bytes
# are the input), and commit both with the artifact (see docs/security.md, "Fuzzing").
set -euo pipefail

SECONDS_PER_TARGET="${1:-${FUZZ_NIGHTLY_SECONDS:-1800}}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT

status=0
FUZZ_MERGE="${FUZZ_MERGE:-1}" bash scripts/fuzz.sh "$SECONDS_PER_TARGET" || status=$?

found=()
for dir in fuzz/artifacts/*/; do
    [ -d "$dir" ] || continue
    target=$(basename "$dir")
    while IFS= read -r -d '' f; do
        dest="fuzz/corpus/$target/regression-$(basename "$f")"
        cp "$f" "$dest"
        found+=("$dest")
    done < <(find "$dir" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' \) -newer "$stamp" -print0 2>/dev/null || true)
done
# -newer "$stamp" only sees files written during this run; older artifacts were handled before.

if ((${#found[@]})); then
    echo "fuzz-nightly: findings copied into the corpus (commit them with the fix and a unit test):"
    printf '  %s\n' "${found[@]}"
    status=1
fi
echo "fuzz-nightly: $SECONDS_PER_TARGET s per target, exit $status"
exit "$status"
