#!/usr/bin/env bash
# End-to-end benchmark suite: plain routing vs concentrator (and, with --peers, wireguard-go and
# boringtun-cli) in network namespaces, plus the headend alone under emulated clients.
#
#   sudo scripts/bench.sh [--quick] [--peers] [--profile] [--systems=A,B] [--no-build]
#   sudo scripts/bench.sh --headend [--blast=presealed-mmsg,seal-each] [--no-build]
#
# --systems=concentrator-wg,wireguard-go: only those tunnels beside plain routing, without the
# headend-alone runs (the systems: plain, concentrator, concentrator-no-offloads,
# concentrator-wg, wireguard-go, boringtun).
# --headend: only the headend-alone matrix (64- and 1420-byte packets, 1, 100 and 10 000
# clients, 1 and 2 workers, 3 s each; a few minutes): server CPU per packet, user and system.
# --blast=A,B: its generators (presealed-mmsg, presealed-gso, seal-each: the first one).
# Results: bench-results/<timestamp>/{results.json,report.md,*.png}. Needs root, iproute2,
# iperf3; --peers needs wireguard-go + wireguard-tools (bookworm-backports) and boringtun-cli
# (`cargo install boringtun-cli`); --profile needs perf (Debian: linux-perf).
set -euo pipefail
cd "$(dirname "$0")/.."

quick="" peers="" profile="" systems="" build=1 headend="" blast=""
for a in "$@"; do
  case "$a" in
    --quick) quick=--quick ;;
    --peers) peers=--peers ;;
    --profile) profile=--profile ;;
    --systems=*) systems="--systems ${a#--systems=}" ;;
    --no-build) build=0 ;;
    --headend) headend="--headend-only --blast-seconds 3" ;;
    --blast=*) blast="--blast ${a#--blast=}" ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (network namespaces)" >&2; exit 1; }
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

if [ "$build" = 1 ]; then
  echo "[bench] building release binaries"
  cargo build --release --quiet -p concentrator -p bench-harness
fi
target="${CARGO_TARGET_DIR:-target}/release"
out="bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"

# Bounded: the harness stops itself well before these limits; timeout is the backstop.
limit=900; [ -n "$quick" ] && limit=180; [ -n "$profile" ] && limit=$((limit + 120))
[ -n "$headend" ] && limit=600
harness_pid=""
cleanup() {
  if [ -n "$harness_pid" ] && kill -0 "$harness_pid" 2>/dev/null; then
    kill -TERM "$harness_pid" 2>/dev/null || true
    wait "$harness_pid" 2>/dev/null || true
  fi
  # Namespaces of a harness that died without its own cleanup (names carry its PID).
  if [ -s "$out/harness.pid" ]; then
    hp=$(cat "$out/harness.pid")
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^ctrb-${hp}-" || true); do
      ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "$out/harness.pid"
  fi
}
trap cleanup EXIT INT TERM

timeout --signal=TERM --kill-after=30 "$limit" \
  "$target/bench-harness" run $quick $peers $profile $systems $headend $blast --out "$out" --concentrator "$target/concentrator" &
harness_pid=$!
rc=0
wait "$harness_pid" || rc=$?
harness_pid=""
cleanup

if ! python3 -c 'import matplotlib' 2>/dev/null; then
  echo "[bench] installing matplotlib for the plots" >&2
  python3 -m pip install --quiet matplotlib >/dev/null 2>&1 || echo "[bench] no matplotlib: no plots" >&2
fi
python3 scripts/bench_plots.py "$out" || echo "[bench] plotting failed" >&2
echo "[bench] results: $out/report.md"
exit $rc
