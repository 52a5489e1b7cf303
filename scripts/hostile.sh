#!/usr/bin/env bash
# The hostile-input tests (tests/hostile.rs) at full size, in release mode, one lab at a time,
# printing the figures that docs/security.md quotes. Needs root, iproute2, nftables, iperf3,
# ping and python3 (`scripts/deps.sh tests` installs them). Every load is bounded in time; the
# whole run takes a few minutes, plus about 2.5 min per stock client for the rekey test
# (tests/wireguard_rekey.rs: a stock WireGuard client kept busy past REKEY_AFTER_TIME loses no
# datagram; needs wireguard-go, boringtun-cli and wg; HOSTILE_REKEY=0 leaves it out), and the
# fleet and failover tests at full size (tests/fleet.rs with FLEET_FULL=1: etcd, 3 headends, 10
# clients failing over within 3 s; tests/failover.rs with FAILOVER_ROUNDS=5).
#
# Usage: sudo scripts/hostile.sh [TEST_NAME_FILTER]
# Sizes (defaults = full): HOSTILE_GARBAGE_SECS=5 HOSTILE_FLOOD_RATE=50000
# HOSTILE_FLOOD_SOURCES=256 HOSTILE_FLOOD_WORKERS=1 HOSTILE_IPERF_SECS=5 HOSTILE_FLOOD_PAIRS=3 HOSTILE_CHURN_K=10000 HOSTILE_CHURN_ROUNDS=4
# HOSTILE_LOSS_PERCENT=15 HOSTILE_REKEY_SECS=150 HOSTILE_REKEY_RATE=1000. In `cargo test` (CI) the defaults are smaller (see tests/hostile.rs).
set -euo pipefail
cd "$(dirname "$0")/.."

export HOSTILE_GARBAGE_SECS="${HOSTILE_GARBAGE_SECS:-5}"
export HOSTILE_FLOOD_RATE="${HOSTILE_FLOOD_RATE:-50000}"
export HOSTILE_FLOOD_SOURCES="${HOSTILE_FLOOD_SOURCES:-256}"
export HOSTILE_IPERF_SECS="${HOSTILE_IPERF_SECS:-5}"
export HOSTILE_FLOOD_PAIRS="${HOSTILE_FLOOD_PAIRS:-3}"
export HOSTILE_CHURN_K="${HOSTILE_CHURN_K:-10000}"
export HOSTILE_CHURN_ROUNDS="${HOSTILE_CHURN_ROUNDS:-4}"
export HOSTILE_LOSS_PERCENT="${HOSTILE_LOSS_PERCENT:-15}"
export HOSTILE_REKEY="${HOSTILE_REKEY:-1}"
export HOSTILE_REKEY_SECS="${HOSTILE_REKEY_SECS:-150}"
export HOSTILE_REKEY_RATE="${HOSTILE_REKEY_RATE:-1000}"
# The fleet at full size: a 30 s etcd cut-off, 10 clients failing over (asserting the 3 s
# target), 1-second propagation; and two headends without a registry, 5 deaths.
export FLEET_FULL="${FLEET_FULL:-1}"
export FAILOVER_ROUNDS="${FAILOVER_ROUNDS:-5}"
export E2E_PARALLEL=1

log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "hostile: release build, sizes: garbage ${HOSTILE_GARBAGE_SECS}s, flood ${HOSTILE_FLOOD_RATE}/s from ${HOSTILE_FLOOD_SOURCES} sources, churn ${HOSTILE_CHURN_ROUNDS}x${HOSTILE_CHURN_K}, loss ${HOSTILE_LOSS_PERCENT}%"
echo "hostile: $(nproc) cores, $(uname -r)"
status=0
cargo test --release --test hostile -- --test-threads=1 --nocapture ${1:+"$1"} 2>&1 | tee "$log" || status=$?
# The rekey test: a session kept busy past REKEY_AFTER_TIME, per stock client.
cargo test --release --test wireguard_rekey -- --test-threads=1 --nocapture ${1:+"$1"} 2>&1 | tee -a "$log" || status=$?
cargo test --release --test fleet --test failover -- --test-threads=1 --nocapture ${1:+"$1"} 2>&1 | tee -a "$log" || status=$?
echo
echo "===== figures ====="
grep -E '^(FIGURE|NOTE|SKIPPED)|^test .* \.\.\. |^test result' "$log" || true
exit "$status"
