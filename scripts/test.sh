#!/usr/bin/env bash
# Runs every test of Muslin: formatting, lints, unit tests and the
# privileged integration tests (network namespaces, veth, routes, the real
# CNI reference plugins). Needs root; installs the Debian packages it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "scripts/test.sh: the integration tests create network namespaces; run as root" >&2
  exit 1
fi
scripts/install-deps.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# The benchmark's smoke test: every scenario must produce a number.
target/debug/muslin bench --quick --report target/bench-quick
# Gossip at scale, simulated (seconds), and the same workload on etcd.
target/debug/muslin bench --scale 20,100
target/debug/muslin bench --scale 20 --datastore etcd
# The release build README's Install gives: it runs, it is stripped, and
# the agent's code is linked first and together (the hot-code order, which
# also says when it has gone stale).
cargo build --release --locked
target/release/muslin --version
sections=$(readelf -SW target/release/muslin)
if grep -q '\.symtab' <<<"$sections"; then
  echo "target/release/muslin is not stripped" >&2
  exit 1
fi
scripts/hot-code-order.sh --check
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
