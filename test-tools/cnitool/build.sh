#!/usr/bin/env bash
# Builds cnitool, the CNI project's reference client, from Debian's own
# source package of the CNI library (golang-github-appc-cni) against the Go
# libraries Debian installs under /usr/share/gocode: GOPATH mode, no Go
# module download, nothing vendored in this repository.
#
# Installs nothing: golang-go and golang-github-appc-cni-dev come from
# scripts/install-deps.sh. Debian's binary package leaves cnitool out
# (debian/rules: DH_GOLANG_EXCLUDES includes cnitool), so its one source
# file is taken from the source package of the very version installed,
# fetched once with `apt-get source` through a private apt state (the
# machine's own Debian archives as deb-src, apt's signature and hash checks)
# and cached with the binary.
#
# Usage: test-tools/cnitool/build.sh [OUT_DIR]
#   OUT_DIR defaults to $CARGO_TARGET_DIR/test-tools/cnitool (or
#   target/test-tools/cnitool). Prints the path of the cnitool binary last.
#   Does nothing when the binary is up to date.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-${CARGO_TARGET_DIR:-$root/target}/test-tools/cnitool}
gocode=/usr/share/gocode
pkg=golang-github-appc-cni-dev
src_pkg=golang-github-appc-cni

die() {
  echo "cnitool/build.sh: $*" >&2
  exit 1
}

command -v go >/dev/null || die "no go: run scripts/install-deps.sh (golang-go)"
[ -d "$gocode/src/github.com/containernetworking/cni/libcni" ] ||
  die "no libcni under $gocode: run scripts/install-deps.sh ($pkg)"
version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) ||
  die "$pkg is not installed: run scripts/install-deps.sh"

mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/cnitool
stamp=$out/stamp
want="$src_pkg $version; $(go version); $(sha256sum "$0" | cut -d' ' -f1)"

# Parallel tests may all ask at once: one builds, the others wait.
exec 9>"$out/.lock"
flock 9

if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "$bin"
  exit 0
fi

# Debian's source package of the installed version, once.
srcdir=$out/src/$version
if [ ! -f "$srcdir/cnitool/cnitool.go" ]; then
  apt=$out/apt
  rm -rf "$apt" "$out/src"
  mkdir -p "$apt/sources" "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl"
  # The machine's Debian archives (deb822 and one-line forms), as deb-src.
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; ORS = "\n\n" }
         /(^|\n)Types:[^\n]*deb/ && !/(^|\n)Enabled: *no/ &&
         (/(^|\n)URIs:[^\n]*\/debian(-security)?\/?(\n|$)/ || /(^|\n)Signed-By:[^\n]*debian-archive-keyring/) {
           sub(/(^|\n)Types:[^\n]*/, "\nTypes: deb-src"); print }' "$f" \
      >"$apt/sources/$(basename "$f")"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    { grep -E '^deb[[:space:]].*/debian(-security)?/?[[:space:]]' "$f" || true; } |
      sed 's/^deb\([[:space:]]\)/deb-src\1/' >"$apt/sources/$(basename "$f").list"
  done
  opts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$apt/sources"
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
  apt-get "${opts[@]}" -q update >"$apt/update.log" 2>&1 ||
    die "apt-get update of Debian's source indexes failed: $(tail -3 "$apt/update.log")"
  (cd "$apt/dl" && apt-get "${opts[@]}" -q source --download-only "$src_pkg=$version") \
    >"$apt/source.log" 2>&1 ||
    die "apt-get source $src_pkg=$version failed: $(tail -3 "$apt/source.log")"
  mkdir -p "$out/src"
  dpkg-source -q -x "$apt/dl/${src_pkg}_${version#*:}.dsc" "$srcdir.tmp" >"$apt/extract.log" 2>&1 ||
    die "dpkg-source -x failed: $(cat "$apt/extract.log")"
  mv "$srcdir.tmp" "$srcdir"
  rm -rf "$apt"
fi
[ -f "$srcdir/cnitool/cnitool.go" ] || die "no cnitool/cnitool.go in $src_pkg $version"

# Only cnitool's own package comes from the source package: its import of
# github.com/containernetworking/cni/libcni resolves, in GOPATH order, to
# Debian's installed copy under /usr/share/gocode.
gopath=$out/gopath
rm -rf "$gopath"
mkdir -p "$gopath/src/github.com/containernetworking/cni/cnitool"
cp "$srcdir/cnitool/cnitool.go" "$gopath/src/github.com/containernetworking/cni/cnitool/"
(
  cd "$gopath/src/github.com/containernetworking/cni/cnitool"
  GO111MODULE=off GOPATH="$gopath:$gocode" GOCACHE="$out/gocache" GOPROXY=off GOFLAGS='' \
    GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -o "$bin.tmp" github.com/containernetworking/cni/cnitool
)
mv "$bin.tmp" "$bin"
rm -rf "$out/gocache"
echo "$want" >"$stamp"
echo "cnitool/build.sh: built cnitool from $src_pkg $version" >&2
echo "$bin"
