#!/usr/bin/env bash
# Builds muslin_VERSION_ARCH.deb with Debian's own dpkg-deb from a staged tree:
# nothing beyond dpkg (and cargo, to build the binary) is needed.
#
#   packaging/build-deb.sh [--binary PATH] [--out DIR] [--fast]
#
# --binary  the muslin binary to package [default: build target/release/muslin]
# --out     where the .deb is written [default: target/debian]
# --fast    gzip -1 instead of xz: for tests packaging a large debug binary
#
# Prints the path of the .deb on standard output.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
target=${CARGO_TARGET_DIR:-$repo/target}
binary=
out=$target/debian
compress=(-Zxz)

usage() {
  sed -n '2,11s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --fast) compress=(-Zgzip -z1); shift ;;
    -h | --help) usage ;;
    *) echo "build-deb: unknown argument $1" >&2; usage ;;
  esac
done

# The version is the workspace's: the first `version` under [workspace.package].
version=$(awk '
  /^\[/ { in_pkg = ($0 == "[workspace.package]") }
  in_pkg && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
' "$repo/Cargo.toml")
if [ -z "$version" ]; then
  echo "build-deb: no version under [workspace.package] in $repo/Cargo.toml" >&2
  exit 1
fi

if [ -z "$binary" ]; then
  (cd "$repo" && cargo build --release --locked -p muslin)
  binary=$target/release/muslin
fi
if [ ! -x "$binary" ]; then
  echo "build-deb: $binary is not an executable" >&2
  exit 1
fi
# A stale binary would be shipped under the wrong version.
if ! "$binary" --version | grep -qx "muslin $version"; then
  echo "build-deb: $binary says '$("$binary" --version)', the workspace is $version" >&2
  exit 1
fi

arch=$(dpkg --print-architecture)
# The newest glibc symbol version the binary asks for (no dpkg-shlibdeps:
# there is no debian/ source tree to run it in).
glibc=$(grep -aoE 'GLIBC_2\.[0-9]+(\.[0-9]+)?' "$binary" | sort -uV | tail -n 1 || true)
libc_dep=libc6${glibc:+ (>= ${glibc#GLIBC_})}
stage=$(mktemp -d "${TMPDIR:-/tmp}/muslin-deb.XXXXXX")
trap 'rm -rf "$stage"' EXIT
root=$stage/root
# dpkg-deb wants the control directory not writable by others.
umask 022

install -D -m 0755 "$binary" "$root/usr/bin/muslin"
# The CNI plugin is the same binary (it acts as one when CNI_COMMAND is set).
# containerd and CRI-O look in /opt/cni/bin, podman and Debian's
# containernetworking-plugins in /usr/lib/cni. Debian's archive keeps out of
# /opt; a package built for one's own hosts must not.
install -d -m 0755 "$root/opt/cni/bin" "$root/usr/lib/cni"
ln -s /usr/bin/muslin "$root/opt/cni/bin/muslin"
ln -s ../../bin/muslin "$root/usr/lib/cni/muslin"
install -D -m 0644 "$here/muslin-agent.service" "$root/usr/lib/systemd/system/muslin-agent.service"
install -D -m 0644 "$here/tmpfiles.conf" "$root/usr/lib/tmpfiles.d/muslin.conf"
install -D -m 0644 "$here/agent.toml" "$root/etc/muslin/agent.toml"
install -D -m 0644 "$repo/README.md" "$root/usr/share/doc/muslin/README.md"
cat >"$root/usr/share/doc/muslin/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: muslin

Files: *
Copyright: the Muslin authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT

install -d -m 0755 "$root/DEBIAN"
for f in postinst prerm postrm; do
  install -m 0755 "$here/debian/$f" "$root/DEBIAN/$f"
done
install -m 0644 "$here/debian/conffiles" "$root/DEBIAN/conffiles"
# For debsums and `dpkg --verify`.
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<CONTROL
Package: muslin
Version: $version
Architecture: $arch
Maintainer: Muslin developers <muslin@localhost>
Installed-Size: $size
Depends: $libc_dep, iproute2, nftables
Recommends: iptables, conntrack, containernetworking-plugins
Suggests: wireguard-tools
Section: net
Priority: optional
Description: multi-host container networking
 Muslin gives containers on many hosts addresses from one cluster network,
 routed or over VXLAN, optionally inside WireGuard, with policies and a name
 service. One binary is the CLI, the per-host agent (muslin-agent.service)
 and the CNI plugin (linked into /opt/cni/bin and /usr/lib/cni).
CONTROL

mkdir -p "$out"
deb=$out/muslin_${version}_${arch}.deb
# --root-owner-group: every file is root's whoever builds the package.
dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$deb" >/dev/null
echo "$deb"
