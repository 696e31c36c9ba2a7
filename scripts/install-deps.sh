#!/usr/bin/env bash
# Installs the Debian packages Muslin's tests, lab and benchmarks use.
# Idempotent: does nothing when everything is already there.
set -euo pipefail

packages=(iproute2 iputils-ping iptables nftables conntrack containernetworking-plugins iperf3 procps etcd-server protobuf-compiler libprotobuf-dev dnsutils dnsmasq-base dnsperf aardvark-dns wireguard-go wireguard-tools tcpdump faketime)
# Runtimes driven by tests/runtimes.rs, and the busybox of their containers' root filesystems
packages+=(podman busybox-static)
# A machine with Docker's containerd.io already has ctr and runc; Debian's
# packages would replace it (and Docker with it).
command -v ctr >/dev/null || packages+=(containerd)
command -v runc >/dev/null || packages+=(runc)
# kubectl parses the Kubernetes manifest in tests/packaging.rs. Debian's is in
# kubernetes-client; another kubectl (such as Google's package `kubectl`)
# serves as well and would conflict with it.
command -v kubectl >/dev/null || packages+=(kubernetes-client)
# cnitool, CNI's reference client (tests/cnitool.rs), built by test-tools/cnitool/build.sh
packages+=(golang-go golang-github-appc-cni-dev dpkg-dev)
# nm (scripts/hot-code-order.sh --check) and readelf (scripts/test.sh): checks of the release build
packages+=(binutils)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: need root to install: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Another process may hold the dpkg lock for a while on a fresh machine.
apt-get -o DPkg::Lock::Timeout=600 update -q
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
