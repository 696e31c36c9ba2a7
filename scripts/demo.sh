#!/usr/bin/env bash
# The main job on one machine: builds Muslin and brings up the default lab,
# a simulated three-host cluster in network namespaces (two NICs per host,
# the default route on the wrong one), with a real agent on every host and
# two containers per host attached through CNI; then prints the
# connectivity matrix. Arguments go to `muslin lab up` (try --hosts 5 or
# -f examples/cross-subnet.toml). Remove it with `target/release/muslin lab down`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (the lab creates network namespaces)" >&2; exit 1; }
scripts/install-deps.sh
echo "== building muslin (release)" >&2
cargo build --release --locked -q
exec target/release/muslin lab up "$@"
