#!/usr/bin/env bash
# Muslin on one machine: a Muslin agent on a simulated host (a network
# namespace), two containers attached through the real CNI path exactly as a
# runtime attaches them, traffic checked between them and to the host.
# Touches nothing outside its own namespaces. `--keep` leaves it running.
set -euo pipefail
cd "$(dirname "$0")/.."

keep=false
down=false
case "${1:-}" in
  --keep) keep=true ;;
  --down) down=true ;;
esac
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (it creates network namespaces)" >&2; exit 1; }

scripts/install-deps.sh
echo "== building muslin (release)"
cargo build --release --locked -q
bin=$PWD/target/release/muslin
name=muslin-demo
run=/run/$name
host=$name-host

cleanup() {
  [ -f "$run/agent.pid" ] && kill "$(cat "$run/agent.pid")" 2>/dev/null || true
  [ -f "$run/probe.pids" ] && xargs -r kill < "$run/probe.pids" 2>/dev/null || true
  for ns in "$host" "$name-c1" "$name-c2"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$run"
}
cleanup
$down && exit 0
$keep || trap cleanup EXIT
mkdir -p "$run"

echo "== host $host: address 198.51.100.1, pod block 10.244.1.0/24"
ip netns add "$host"
ip -n "$host" link set lo up
ip -n "$host" addr add 198.51.100.1/32 dev lo
ip netns exec "$host" "$bin" agent --block 10.244.1.0/24 --socket "$run/agent.sock" \
  --state-dir "$run/state" --node-name demo-h1 2> "$run/agent.log" &
echo $! > "$run/agent.pid"
for _ in $(seq 100); do [ -S "$run/agent.sock" ] && break; sleep 0.05; done

conf="{\"cniVersion\":\"1.1.0\",\"name\":\"demo\",\"type\":\"muslin\",\"socket\":\"$run/agent.sock\"}"
for c in c1 c2; do
  ip netns add "$name-$c"
  echo "== CNI ADD $name-$c"
  echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID="demo-$c" CNI_NETNS="/var/run/netns/$name-$c" \
    CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni ip netns exec "$host" "$bin"
  echo
done

ip2=$(ip -n "$name-c2" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
ip1=$(ip -n "$name-c1" -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1)
ip netns exec "$name-c2" "$bin" probe serve > /dev/null & echo $! >> "$run/probe.pids"
ip netns exec "$host" "$bin" probe serve > /dev/null & echo $! >> "$run/probe.pids"
sleep 0.3
echo "== c1 ($ip1) -> c2 ($ip2)"
ip netns exec "$name-c1" "$bin" probe check "$ip2" --proto tcp,udp,icmp,ip253
echo "== c1 ($ip1) -> host (198.51.100.1)"
ip netns exec "$name-c1" "$bin" probe check 198.51.100.1 --proto tcp,udp,icmp,ip253
echo "== muslin status"
"$bin" status --socket "$run/agent.sock"

if $keep; then
  cat <<MSG

The demo is still up. Try:
  ip netns exec $name-c1 ping -c1 $ip2
  $bin status --socket $run/agent.sock
  ip -n $host route
Remove it with: scripts/demo.sh --down
MSG
fi
