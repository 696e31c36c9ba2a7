#!/bin/sh
# Loads the golden nft JSON into the real nft, in a throwaway network
# namespace so the host's ruleset is never touched, and records the
# listing that tests/plan/nft.rs reads back. Needs root and nft.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
ns=msl-golden-$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
# The golden files are pretty-printed JSON documents, which nft reads as is.
for f in nft-load-ip nft-add-nodes-ip nft-delete-nodes-ip; do
    ip netns exec "$ns" nft -j -f "$here/golden/$f.txt"
done
ip netns exec "$ns" nft -j -f "$here/golden/nft-load-ip6.txt"
ip netns exec "$ns" nft -j list table ip muslin >"$here/fixtures/nft-list-table.json"
ip netns exec "$ns" nft -j list table ip6 muslin >"$here/fixtures/nft-list-table-ip6.json"
# A second load replaces the table rather than failing on what exists.
ip netns exec "$ns" nft -j -f "$here/golden/nft-load-ip.txt"
ip netns exec "$ns" nft -j -f "$here/golden/nft-delete-table-ip6.txt"
ip netns exec "$ns" nft list ruleset
