#!/usr/bin/env bash
# TCP throughput and ping latency through userspace WireGuard, in two
# network namespaces joined by a veth (MTU 1500, WireGuard MTU 1420).
# Variants, interleaved run by run so load drifts hit all of them alike:
#   veth       plain veth, no tunnel
#   vxlan      kernel VXLAN over the veth, unencrypted (the latency yardstick)
#   wggo       Debian wireguard-go
#   boringtun  boringtun-cli
#   gotatun    $GOTATUN wireguard-device: the earlier device on gotatun's
#              Device (per-packet channels and locks), if GOTATUN is set
#   nooffload  muslin wireguard-device --no-offload (plain TUN)
#   nogso      muslin, UDP GSO off (MUSLIN_WG_NO_GSO=1)
#   nogro      muslin, UDP GRO off (MUSLIN_WG_NO_GRO=1)
#   muslin     muslin wireguard-device (TUN TSO/GRO, UDP GSO/GRO)
#
# Usage: bench/wg-throughput.sh [RUNS] [SECONDS]
# Env:   MUSLIN=path/to/muslin  BORINGTUN=path/to/boringtun-cli  VARIANTS="..."
#        GOTATUN=path/to/an/older/muslin
# Needs root, iperf3, wg, ping, wireguard-go.
set -euo pipefail

RUNS=${1:-3}
SECS=${2:-10}
MUSLIN=${MUSLIN:-/work/target-wgfast/release/muslin}
GOTATUN=${GOTATUN:-}
BORINGTUN=${BORINGTUN:-/work/tools/bin/boringtun-cli}
VARIANTS=${VARIANTS:-"veth wggo boringtun muslin"}
ID=$$
A=wgbA$ID B=wgbB$ID IFA=wgba$ID IFB=wgbb$ID
OUT=$(mktemp -d)
DAEMONS=()

cleanup() {
    for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -f "/var/run/wireguard/$IFA.sock" "/var/run/wireguard/$IFB.sock"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip -n "$A" link set lo up
ip -n "$B" link set lo up
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 192.168.88.1/24 dev va
ip -n "$B" addr add 192.168.88.2/24 dev vb
ip -n "$A" link set va up mtu 1500
ip -n "$B" link set vb up mtu 1500
ip netns exec "$B" iperf3 -s -D -I "$OUT/iperf.pid"
sleep 0.5

wg pubkey </dev/null >/dev/null 2>&1 || true
KA=$(wg genkey) KB=$(wg genkey)
echo "$KA" >"$OUT/ka"
echo "$KB" >"$OUT/kb"
PA=$(echo "$KA" | wg pubkey) PB=$(echo "$KB" | wg pubkey)

start_daemon() { # ns ifname variant
    local ns=$1 ifn=$2 v=$3
    case $v in
    wggo) ip netns exec "$ns" env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$ifn" >/dev/null 2>&1 & ;;
    boringtun) ip netns exec "$ns" "$BORINGTUN" -f --disable-drop-privileges "$ifn" >/dev/null 2>&1 & ;;
    gotatun) ip netns exec "$ns" "$GOTATUN" wireguard-device "$ifn" >/dev/null 2>&1 & ;;
    nooffload) ip netns exec "$ns" "$MUSLIN" wireguard-device --no-offload "$ifn" >/dev/null 2>&1 & ;;
    nogso) ip netns exec "$ns" env MUSLIN_WG_NO_GSO=1 "$MUSLIN" wireguard-device "$ifn" >/dev/null 2>&1 & ;;
    nogro) ip netns exec "$ns" env MUSLIN_WG_NO_GRO=1 "$MUSLIN" wireguard-device "$ifn" >/dev/null 2>&1 & ;;
    muslin) ip netns exec "$ns" "$MUSLIN" wireguard-device "$ifn" >/dev/null 2>&1 & ;;
    esac
    DAEMONS+=($!)
    for _ in $(seq 100); do [ -S "/var/run/wireguard/$ifn.sock" ] && return; sleep 0.05; done
    echo "$v: no UAPI socket for $ifn" >&2
    return 1
}

up_tunnel() { # variant
    local v=$1
    start_daemon "$A" "$IFA" "$v"
    start_daemon "$B" "$IFB" "$v"
    ip netns exec "$A" wg set "$IFA" private-key "$OUT/ka" listen-port 51820 \
        peer "$PB" allowed-ips 10.88.0.2/32 endpoint 192.168.88.2:51820
    ip netns exec "$B" wg set "$IFB" private-key "$OUT/kb" listen-port 51820 \
        peer "$PA" allowed-ips 10.88.0.1/32 endpoint 192.168.88.1:51820
    ip -n "$A" addr add 10.88.0.1/24 dev "$IFA"
    ip -n "$B" addr add 10.88.0.2/24 dev "$IFB"
    ip -n "$A" link set "$IFA" up mtu 1420
    ip -n "$B" link set "$IFB" up mtu 1420
    ip netns exec "$A" ping -c 3 -i 0.2 -W 2 10.88.0.2 >/dev/null
}

down_tunnel() {
    for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${DAEMONS[@]}"; do wait "$p" 2>/dev/null || true; done
    DAEMONS=()
    ip -n "$A" link del "$IFA" 2>/dev/null || true
    ip -n "$B" link del "$IFB" 2>/dev/null || true
    rm -f "/var/run/wireguard/$IFA.sock" "/var/run/wireguard/$IFB.sock"
}

measure() { # variant run
    local v=$1 r=$2 dst=10.88.0.2
    if [ "$v" = veth ]; then
        dst=192.168.88.2
    elif [ "$v" = vxlan ]; then
        ip -n "$A" link add vxa type vxlan id 42 remote 192.168.88.2 dstport 4789 dev va
        ip -n "$B" link add vxb type vxlan id 42 remote 192.168.88.1 dstport 4789 dev vb
        ip -n "$A" addr add 10.88.0.1/24 dev vxa
        ip -n "$B" addr add 10.88.0.2/24 dev vxb
        ip -n "$A" link set vxa up mtu 1450
        ip -n "$B" link set vxb up mtu 1450
    else
        up_tunnel "$v"
    fi
    local gbps
    gbps=$(ip netns exec "$A" iperf3 -c "$dst" -t "$SECS" -J |
        python3 -c 'import json,sys; print("%.3f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
    if [ -n "${DEBUG:-}" ] && [ "$v" != veth ]; then
        ip -n "$A" -s link show "$IFA" >&2
        ip -n "$B" -s link show "$IFB" >&2
        ip -n "$B" -s link show vb >&2
    fi
    # Request/response latency: 200 pings 10 ms apart, median RTT.
    local p50
    p50=$(ip netns exec "$A" ping -c 200 -i 0.01 -W 1 "$dst" |
        sed -n 's/.*time=\([0-9.]*\) ms/\1/p' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    echo "$v $r $gbps $p50" | tee -a "$OUT/results"
    if [ "$v" = vxlan ]; then
        ip -n "$A" link del vxa
        ip -n "$B" link del vxb
    elif [ "$v" != veth ]; then
        down_tunnel
    fi
}

for r in $(seq "$RUNS"); do
    for v in $VARIANTS; do measure "$v" "$r"; done
done

echo
printf '%-10s %14s %14s   %s\n' variant "TCP Gbit/s p50" "ping p50 ms" "runs (Gbit/s)"
for v in $VARIANTS; do
    python3 - "$v" "$OUT/results" <<'EOF'
import statistics, sys
v, path = sys.argv[1], sys.argv[2]
rows = [l.split() for l in open(path) if l.split()[0] == v]
g = [float(r[2]) for r in rows]
p = [float(r[3]) for r in rows]
print("%-10s %14.2f %14.3f   %s" % (v, statistics.median(g), statistics.median(p), " ".join("%.2f" % x for x in g)))
EOF
done
