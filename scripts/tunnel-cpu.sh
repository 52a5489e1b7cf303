#!/usr/bin/env bash
# Where the CPU goes during one TCP upload through the tunnel: per-thread user/system time of the
# server, the client and both iperf3 ends, and the machine's user/system/softirq/idle split, read
# from /proc over the middle of the run. Complements the profiles of `scripts/bench.sh --profile`
# (which sample only the server) with a whole-machine view.
#
#   sudo scripts/tunnel-cpu.sh [SECONDS] [-- extra concentrator flags, e.g. --no-offloads]
#
# Topology: client ns ── veth ── server ns ── veth ── backend ns (names carry this script's
# PID; everything is removed on exit). Needs root, iproute2, iperf3, python3 and a release build
# (cargo build --release).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "tunnel-cpu.sh needs root (network namespaces)" >&2; exit 1; }
secs=${1:-10}
shift || true
[ "${1:-}" = "--" ] && shift
flags=("$@")
bin="${CARGO_TARGET_DIR:-target}/release/concentrator"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }
[ "$secs" -ge 6 ] || { echo "SECONDS must be at least 6" >&2; exit 2; }

id=$$
ns_s="ctrcpu-$id-s" ns_c="ctrcpu-$id-c" ns_b="ctrcpu-$id-b"
work=$(mktemp -d "${TMPDIR:-/tmp}/ctr-cpu-$id.XXXXXX")
pids=()
cleanup() {
    set +e
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    for n in "$ns_s" "$ns_c" "$ns_b"; do ip netns del "$n" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for n in "$ns_s" "$ns_c" "$ns_b"; do ip netns add "$n"; ip -n "$n" link set lo up; done
ip link add "c$id" netns "$ns_c" type veth peer name "s$id" netns "$ns_s"
ip link add "b$id" netns "$ns_b" type veth peer name "t$id" netns "$ns_s"
ip -n "$ns_c" addr add 10.0.0.2/24 dev "c$id"; ip -n "$ns_c" link set "c$id" up
ip -n "$ns_s" addr add 10.0.0.1/24 dev "s$id"; ip -n "$ns_s" link set "s$id" up
ip -n "$ns_s" addr add 10.1.0.1/24 dev "t$id"; ip -n "$ns_s" link set "t$id" up
ip -n "$ns_b" addr add 10.1.0.2/24 dev "b$id"; ip -n "$ns_b" link set "b$id" up
ip -n "$ns_b" route add 10.66.0.0/16 via 10.1.0.1
ip netns exec "$ns_s" sysctl -qw net.ipv4.ip_forward=1

umask 077
"$bin" genkey > "$work/s.key"; "$bin" genkey > "$work/c.key"
cat > "$work/s.toml" <<EOF
private_key_file = "$work/s.key"
listen_port = 51820
listen_addresses = ["0.0.0.0"]
address = "10.66.0.1/16"
workers = 2
tun_name = "cpus$id"
[[peer]]
public_key = "$("$bin" pubkey < "$work/c.key")"
address = "10.66.0.7"
EOF
cat > "$work/c.toml" <<EOF
private_key_file = "$work/c.key"
server_public_key = "$("$bin" pubkey < "$work/s.key")"
server_endpoint = "10.0.0.1:51820"
routes = ["10.1.0.0/24"]
tun_name = "cpuc$id"
EOF
ip netns exec "$ns_s" "$bin" --config "$work/s.toml" "${flags[@]}" 2> "$work/s.log" &
pids+=($!); server=$!
sleep 0.5
ip netns exec "$ns_c" "$bin" connect --config "$work/c.toml" "${flags[@]}" 2> "$work/c.log" &
pids+=($!); client=$!
for _ in $(seq 50); do
    ip netns exec "$ns_c" ping -c1 -W1 10.1.0.2 >/dev/null 2>&1 && break
    sleep 0.2
done
ip netns exec "$ns_b" iperf3 -s -1 -p 5299 > /dev/null &
pids+=($!); receiver=$!
sleep 0.3
ip netns exec "$ns_c" iperf3 -c 10.1.0.2 -p 5299 -t "$secs" -J > "$work/iperf.json" &
pids+=($!); sender=$!
sleep 2
python3 - "$((secs - 4))" "server:$server" "client:$client" "iperf3-receiver:$receiver" "iperf3-sender:$sender" <<'EOF'
import os, sys, time
dur = float(sys.argv[1])
procs = [a.split(":") for a in sys.argv[2:]]
def threads():
    out = {}
    for label, pid in procs:
        # `ip netns exec` execs, so the PID is the program's; iperf3's may have a child.
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            except FileNotFoundError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            f = stat[stat.rindex(")") + 2:].split()
            out[(label, tid, comm)] = (int(f[11]), int(f[12]))
    return out
def machine():
    return [int(x) for x in open("/proc/stat").readline().split()[1:]]
a, ma = threads(), machine()
time.sleep(dur)
b, mb = threads(), machine()
hz = os.sysconf("SC_CLK_TCK")
d = [y - x for x, y in zip(ma, mb)]
total = sum(d)
cores = os.cpu_count()
pct = lambda i: 100.0 * cores * d[i] / total
print(f"machine ({cores} cores = {cores * 100}%): user {pct(0):.0f}%  system {pct(2):.0f}%  "
      f"softirq {pct(6):.0f}%  idle {pct(3):.0f}%  (softirq is not in the per-thread figures)")
print(f"{'process':<16} {'thread':<14} {'user':>7} {'system':>7} {'total':>7}  (% of one core)")
for k in sorted(b, key=lambda k: -(sum(b[k]) - sum(a.get(k, b[k])))):
    if k not in a:
        continue
    u = (b[k][0] - a[k][0]) / hz / dur * 100
    s = (b[k][1] - a[k][1]) / hz / dur * 100
    if u + s >= 1:
        print(f"{k[0]:<16} {k[2]:<14} {u:7.1f} {s:7.1f} {u + s:7.1f}")
EOF
wait "$sender" || true
python3 - "$work/iperf.json" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))["end"]
print("iperf3: %.2f Gbit/s received, %s retransmits" % (
    e["sum_received"]["bits_per_second"] / 1e9, e["sum_sent"].get("retransmits")))
EOF
