#!/usr/bin/env bash
# The built-in demo: builds concentrator (release) and runs it in a throwaway lab of network
# namespaces (a server, two clients, a backend), then removes everything again.
#
#   c1 (10.0.0.11) ─┐
#                   ├─ bridge ── server 10.0.0.1 ── 10.1.0.1/24 ── backend 10.1.0.2
#   c2 (10.0.0.12) ─┘            (tunnel 10.66.0.1/16)
#
# It pings the backend through the tunnel, the clients from the backend and each other, runs a
# 3 s iperf3, and prints the server's per-worker counters. Needs root; touches nothing outside
# its own namespaces (names carry this script's PID).
#
# Installs what it needs first when missing (iproute2, iputils-ping, iperf3, python3: see
# scripts/deps.sh), saying what before it does.
#
# Usage: sudo scripts/quickstart.sh [--no-build] [--no-install] [--deps-only]
#   --no-build    use the existing target/release/concentrator
#   --no-install  install nothing: name what is missing and stop (exit 1)
#   --deps-only   only the dependency step (check and install), then stop
set -euo pipefail

cd "$(dirname "$0")/.."

build=1
no_install=""
deps_only=0
for arg in "$@"; do
    case $arg in
    --no-build) build=0 ;;
    --no-install) no_install=--no-install ;;
    --deps-only) deps_only=1 ;;
    *)
        echo "usage: sudo scripts/quickstart.sh [--no-build] [--no-install] [--deps-only]" >&2
        exit 2
        ;;
    esac
done

# shellcheck source=scripts/deps.sh
source scripts/deps.sh
# Without a build, cargo is not needed.
((build)) || DEPS_SKIP="cargo cc"
deps_ensure demo $no_install || { echo "quickstart: dependencies missing (see above)" >&2; exit 1; }
((deps_only)) && exit 0

if [[ $EUID -ne 0 ]]; then
    echo "quickstart: needs root (network namespaces, TUN devices): run it with sudo" >&2
    exit 1
fi

if ((build)); then
    echo "==> cargo build --release"
    cargo build --release --bin concentrator
fi
BIN="$PWD/target/release/concentrator"
[[ -x $BIN ]] || { echo "quickstart: $BIN not built" >&2; exit 1; }

ID=$$
NS_S="ctrq-$ID-srv"
NS_B="ctrq-$ID-bk"
NS_C=("ctrq-$ID-c1" "ctrq-$ID-c2")
BR="q$ID-br"       # link names stay within 15 characters
SB="q$ID-sb"
BS="q$ID-bs"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/ctr-quickstart-$ID.XXXXXX")"
PIDS=()
CREATED_NS=()

cleanup() {
    local rc=$?
    set +e
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for ns in "${CREATED_NS[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    if ((rc != 0)); then
        echo "quickstart: FAILED (exit $rc); logs:" >&2
        tail -n 20 "$WORK"/*.log >&2 2>/dev/null
    fi
    rm -rf "$WORK"
    echo "==> cleaned up (namespaces ctrq-$ID-*)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

add_ns() {
    ip netns add "$1"
    CREATED_NS+=("$1")
    ip -n "$1" link set lo up
}

echo "==> lab: namespaces ctrq-$ID-*, files in $WORK"
add_ns "$NS_S"
add_ns "$NS_B"
ip -n "$NS_S" link add "$BR" type bridge
ip -n "$NS_S" addr add 10.0.0.1/24 dev "$BR"
ip -n "$NS_S" link set "$BR" up
for i in 0 1; do
    n=$((i + 1))
    add_ns "${NS_C[$i]}"
    ip link add "q$ID-c$n" netns "${NS_C[$i]}" type veth peer name "q$ID-s$n" netns "$NS_S"
    ip -n "$NS_S" link set "q$ID-s$n" master "$BR" up
    ip -n "${NS_C[$i]}" addr add "10.0.0.1$n/24" dev "q$ID-c$n"
    ip -n "${NS_C[$i]}" link set "q$ID-c$n" up
done
ip link add "$SB" netns "$NS_S" type veth peer name "$BS" netns "$NS_B"
ip -n "$NS_S" addr add 10.1.0.1/24 dev "$SB"
ip -n "$NS_S" link set "$SB" up
ip -n "$NS_B" addr add 10.1.0.2/24 dev "$BS"
ip -n "$NS_B" link set "$BS" up
ip -n "$NS_B" route add default via 10.1.0.1

echo "==> keys and configs (concentrator genkey | concentrator pubkey)"
umask 077
for who in server c1 c2; do
    "$BIN" genkey >"$WORK/$who.key"
    "$BIN" pubkey <"$WORK/$who.key" >"$WORK/$who.pub"
done
cat >"$WORK/server.toml" <<EOF
private_key_file = "server.key"
listen_port = 51820
listen_addresses = ["10.0.0.1"]
address = "10.66.0.1/16"
workers = 2
client_to_client = true
tun_name = "ctr0"
control_socket = "$WORK/control.sock"

[[peer]]
public_key = "$(cat "$WORK/c1.pub")"

[[peer]]
public_key = "$(cat "$WORK/c2.pub")"
EOF
for who in c1 c2; do
    cat >"$WORK/$who.toml" <<EOF
private_key_file = "$who.key"
server_public_key = "$(cat "$WORK/server.pub")"
server_endpoint = "10.0.0.1:51820"
routes = ["10.1.0.0/24"]
persistent_keepalive = 25
tun_name = "ctrc0"
EOF
done

echo "==> starting the server (2 workers) and two clients"
ip netns exec "$NS_S" "$BIN" --config "$WORK/server.toml" 2>"$WORK/server.log" &
SERVER_PID=$!
PIDS+=("$SERVER_PID")
for _ in $(seq 100); do
    grep -q "concentrator is up" "$WORK/server.log" && break
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:" >&2; cat "$WORK/server.log" >&2; exit 1; }
    sleep 0.1
done
grep -q "concentrator is up" "$WORK/server.log" || { echo "server not up" >&2; exit 1; }

ADDR=()
for i in 0 1; do
    n=$((i + 1))
    ip netns exec "${NS_C[$i]}" "$BIN" connect --config "$WORK/c$n.toml" 2>"$WORK/c$n.log" &
    PIDS+=("$!")
done
for i in 0 1; do
    n=$((i + 1))
    a=""
    for _ in $(seq 150); do
        a="$(ip -n "${NS_C[$i]}" -4 -o addr show dev ctrc0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 || true)"
        [[ -n $a ]] && break
        sleep 0.1
    done
    [[ -n $a ]] || { echo "client c$n: no tunnel after 15 s" >&2; exit 1; }
    ADDR+=("$a")
    echo "    c$n is ${ADDR[$i]}"
done

echo "==> ping c1 -> backend 10.1.0.2 (through the tunnel)"
ip netns exec "${NS_C[0]}" ping -n -c 3 -i 0.2 -W 2 10.1.0.2
echo "==> ping backend -> c2 ${ADDR[1]}"
ip netns exec "$NS_B" ping -n -c 3 -i 0.2 -W 2 "${ADDR[1]}"
echo "==> ping c1 -> c2 (client_to_client = true)"
ip netns exec "${NS_C[0]}" ping -n -c 3 -i 0.2 -W 2 "${ADDR[1]}"

echo "==> iperf3, 3 s, c1 -> backend"
ip netns exec "$NS_B" timeout 30 iperf3 -s -1 -B 10.1.0.2 >"$WORK/iperf3-server.log" 2>&1 &
PIDS+=("$!")
for _ in $(seq 50); do
    ip netns exec "$NS_B" ss -Hltn 'sport = :5201' | grep -q LISTEN && break
    sleep 0.1
done
ip netns exec "${NS_C[0]}" timeout 30 iperf3 -c 10.1.0.2 -t 3 | tail -n 4

echo "==> concentrator show (over the control socket)"
"$BIN" show --socket "$WORK/control.sock" | head -n 40 || echo "    (show failed; see the server log)"

echo "==> stopping the server (SIGTERM); its per-worker counters:"
kill -TERM "$SERVER_PID"
for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
wait "$SERVER_PID" 2>/dev/null || true
grep "worker counters" "$WORK/server.log" | sed 's/^.*worker counters/    worker counters/'
echo "==> demo OK"
