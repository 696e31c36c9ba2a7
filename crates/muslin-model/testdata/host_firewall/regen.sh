#!/bin/bash
# Regenerates the fixtures of muslin-model's host_firewall tests from the real
# tools (root; each case in a throwaway network namespace). Review the diff:
# the tests' expectations are written against these files.
set -euo pipefail
cd "$(dirname "$0")"

docker_like() { # $1: iptables binary. What Docker installs, with its policy.
    $1 -N DOCKER-USER
    $1 -N DOCKER-ISOLATION-STAGE-1
    $1 -N DOCKER
    $1 -A FORWARD -j DOCKER-USER
    $1 -A FORWARD -j DOCKER-ISOLATION-STAGE-1
    $1 -A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
    $1 -A FORWARD -o docker0 -j DOCKER
    $1 -A FORWARD -i docker0 ! -o docker0 -j ACCEPT
    $1 -A DOCKER-USER -j RETURN
    $1 -P FORWARD DROP
}

ours_xt() { # $1: iptables binary. Muslin's rules, as the agent inserts them.
    $1 -I FORWARD 1 -d 10.244.0.0/16 -m comment --comment "muslin: pod traffic" -j ACCEPT
    $1 -I FORWARD 1 -s 10.244.0.0/16 -m comment --comment "muslin: pod traffic" -j ACCEPT
}

native() { # $1: the forward chain's policy; $2: extra rules
    nft -f - <<NFT
table inet filter {
  chain forward {
    type filter hook forward priority filter; policy $1;
    ct state established,related accept
    iifname "eth0" oifname "eth1" accept
$2
  }
}
NFT
}

ours_nft='    ip saddr 10.244.0.0/16 accept comment "muslin: pod traffic"
    ip daddr 10.244.0.0/16 accept comment "muslin: pod traffic"'

# Muslin's own table, with a chain that would drop: it must never be touched.
own_table() {
    nft -f - <<NFT
table ip muslin {
  chain forward {
    type filter hook forward priority filter; policy drop;
  }
}
NFT
}

capture() { # $1: case name; $2: setup commands run in the namespace
    local ns="fwfix-$$"
    ip netns add "$ns"
    ip netns exec "$ns" bash -c "$(declare -f docker_like ours_xt native own_table); ours_nft='$ours_nft'; $2"
    ip netns exec "$ns" nft -j -t list ruleset | python3 -m json.tool > "$1.json"
    if ip netns exec "$ns" iptables-nft -S FORWARD > "$1.iptables-nft" 2>/dev/null &&
        ip netns exec "$ns" nft list chain ip filter FORWARD >/dev/null 2>&1; then :; else rm -f "$1.iptables-nft"; fi
    if ip netns exec "$ns" grep -qx filter /proc/net/ip_tables_names; then
        ip netns exec "$ns" iptables-legacy -S FORWARD > "$1.iptables-legacy"
    fi
    ip netns del "$ns"
}

rm -f ./*.json ./*.iptables-nft ./*.iptables-legacy
capture iptables-nft-docker 'docker_like iptables-nft'
capture iptables-nft-ours 'docker_like iptables-nft; ours_xt iptables-nft'
capture legacy-docker 'docker_like iptables-legacy'
capture legacy-ours 'docker_like iptables-legacy; ours_xt iptables-legacy'
capture native-drop 'native drop ""'
capture native-ours 'native drop "$ours_nft"'
capture native-accept 'native accept ""'
capture native-reject-last 'native accept "    counter reject with icmpx type admin-prohibited"'
capture own-table 'own_table'
capture iptables-nft-accept 'iptables-nft -A FORWARD -o docker0 -j ACCEPT'
