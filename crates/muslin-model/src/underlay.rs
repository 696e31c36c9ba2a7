//! Choosing the underlay address: the pitfall Muslin was founded on. The
//! default is never "the first interface" or "the default-route interface"
//! but the address from which the node verifiably reaches its join peers;
//! the agent performs the route lookups and probes, this module decides.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use regex::Regex;

/// An interface and its addresses, as observed on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub ifname: String,
    /// Link kind (`bridge`, `vxlan`, `veth`, ...), if the kernel reports one.
    pub kind: Option<String>,
    pub up: bool,
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
}

#[derive(Debug, Clone)]
pub enum Method {
    /// Verified reachability to the join peers (the default).
    Reachability,
    FirstFound,
    Interface(Vec<Regex>),
    SkipInterface(Vec<Regex>),
    Cidr(Vec<IpNet>),
    CanReach(IpAddr),
    Address(IpAddr),
}

impl FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, v) = s.split_once('=').unwrap_or((s, ""));
        let list = || v.split(',').map(str::trim).filter(|x| !x.is_empty());
        let regexes = || -> Result<Vec<Regex>, String> {
            let r: Vec<Regex> = list()
                .map(|p| {
                    Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("bad regex {p:?}: {e}"))
                })
                .collect::<Result<_, _>>()?;
            if r.is_empty() {
                return Err(format!("{k}= needs at least one regex"));
            }
            Ok(r)
        };
        Ok(match k {
            "reachability" | "" => Method::Reachability,
            "first-found" => Method::FirstFound,
            "interface" => Method::Interface(regexes()?),
            "skip-interface" => Method::SkipInterface(regexes()?),
            "cidr" => {
                let c: Vec<IpNet> = list()
                    .map(|c| c.parse().map_err(|e| format!("bad CIDR {c:?}: {e}")))
                    .collect::<Result<_, _>>()?;
                if c.is_empty() {
                    return Err("cidr= needs at least one CIDR".into());
                }
                Method::Cidr(c)
            }
            "can-reach" => Method::CanReach(
                v.parse()
                    .map_err(|e| format!("can-reach: bad address {v:?}: {e}"))?,
            ),
            "address" => Method::Address(
                v.parse()
                    .map_err(|e| format!("address: bad address {v:?}: {e}"))?,
            ),
            other => {
                return Err(format!(
                "unknown method {other:?}; expected reachability, first-found, interface=REGEX, \
                     skip-interface=REGEX, cidr=CIDR, can-reach=ADDR or address=ADDR"
            ))
            }
        })
    }
}

/// The inverse of `FromStr`: what was parsed prints back to a string that
/// parses to the same method, so the config file, the flag and the kept
/// underlay state all speak the same text.
impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
            items
                .into_iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
        // `from_str` anchors each pattern; print what the user wrote.
        let pattern = |r: &Regex| {
            let s = r.as_str();
            s.strip_prefix("^(?:")
                .and_then(|s| s.strip_suffix(")$"))
                .unwrap_or(s)
                .to_string()
        };
        match self {
            Method::Reachability => f.write_str("reachability"),
            Method::FirstFound => f.write_str("first-found"),
            Method::Interface(r) => write!(f, "interface={}", list(r.iter().map(pattern))),
            Method::SkipInterface(r) => {
                write!(f, "skip-interface={}", list(r.iter().map(pattern)))
            }
            Method::Cidr(c) => write!(f, "cidr={}", list(c)),
            Method::CanReach(a) => write!(f, "can-reach={a}"),
            Method::Address(a) => write!(f, "address={a}"),
        }
    }
}

/// Regexes have no equality; two methods are the same when they print the
/// same.
impl PartialEq for Method {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl Eq for Method {}

impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Names of interfaces that carry no underlay: container, bridge and tunnel
/// devices of Muslin and of the usual neighbours.
const VIRTUAL_NAMES: &[&str] = &[
    "lo",
    "msl",
    "docker",
    "cni",
    "cali",
    "flannel",
    "vxlan",
    "veth",
    "virbr",
    "br-",
    "kube-",
    "tunl",
    "weave",
    "lxc",
    "cilium",
    "genev",
    "wg",
    "tailscale",
    "podman",
];
const VIRTUAL_KINDS: &[&str] = &[
    "bridge",
    "vxlan",
    "geneve",
    "ipip",
    "gre",
    "tun",
    "wireguard",
    "dummy",
    "macvtap",
    "vrf",
];

/// Whether first-found may use an interface. `veth` is not excluded by
/// kind: hosts that are themselves containers or lab namespaces (and some
/// VMs) have veth NICs; container veths are excluded by name instead.
pub fn eligible(c: &Candidate) -> bool {
    c.up && !VIRTUAL_NAMES.iter().any(|p| c.ifname.starts_with(p))
        && !c
            .kind
            .as_deref()
            .is_some_and(|k| VIRTUAL_KINDS.contains(&k))
}

/// An address chosen and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    pub ifname: String,
    pub address: IpNet,
    pub mtu: u32,
    pub reason: String,
}

fn global_v4(c: &Candidate) -> impl Iterator<Item = IpNet> + '_ {
    c.addresses
        .iter()
        .copied()
        .filter(|a| matches!(a.addr(), IpAddr::V4(v) if !v.is_loopback() && !v.is_link_local()))
}

/// Lists the candidates for an error message.
pub fn describe(cands: &[Candidate]) -> String {
    let v: Vec<String> = cands
        .iter()
        .filter(|c| c.ifname != "lo")
        .map(|c| {
            let addrs: Vec<String> = c.addresses.iter().map(|a| a.to_string()).collect();
            format!(
                "{} [{}{}]",
                c.ifname,
                addrs.join(" "),
                if c.up { "" } else { " down" }
            )
        })
        .collect();
    if v.is_empty() {
        "no interfaces".into()
    } else {
        v.join(", ")
    }
}

fn pick(
    cands: &[Candidate],
    filter: impl Fn(&Candidate, &IpNet) -> bool,
) -> Option<(&Candidate, IpNet)> {
    cands
        .iter()
        .filter(|c| eligible(c))
        .find_map(|c| global_v4(c).find(|a| filter(c, a)).map(|a| (c, a)))
}

/// Applies a method that needs no probing. `Reachability` and `CanReach`
/// are resolved by the agent into `Address` (the kernel's source address
/// towards the peer) before they get here.
pub fn select(method: &Method, cands: &[Candidate]) -> Result<Choice, String> {
    let found = |(c, a): (&Candidate, IpNet), reason: String| Choice {
        ifname: c.ifname.clone(),
        address: a,
        mtu: c.mtu,
        reason,
    };
    let none = |what: String| {
        format!(
            "{what} matches no usable address; candidates: {}",
            describe(cands)
        )
    };
    match method {
        Method::FirstFound | Method::Reachability => pick(cands, |_, _| true)
            .map(|x| {
                found(
                    x,
                    format!("first-found: first usable interface {}", x.0.ifname),
                )
            })
            .ok_or_else(|| none("first-found".into())),
        Method::Interface(res) => pick(cands, |c, _| res.iter().any(|r| r.is_match(&c.ifname)))
            .map(|x| {
                found(
                    x,
                    format!("interface={}: matched {}", pattern(res), x.0.ifname),
                )
            })
            .ok_or_else(|| none(format!("interface={}", pattern(res)))),
        Method::SkipInterface(res) => {
            pick(cands, |c, _| !res.iter().any(|r| r.is_match(&c.ifname)))
                .map(|x| {
                    found(
                        x,
                        format!(
                            "skip-interface={}: first other interface {}",
                            pattern(res),
                            x.0.ifname
                        ),
                    )
                })
                .ok_or_else(|| none(format!("skip-interface={}", pattern(res))))
        }
        Method::Cidr(nets) => pick(cands, |_, a| nets.iter().any(|n| n.contains(&a.addr())))
            .map(|x| {
                found(
                    x,
                    format!("cidr: {} is inside a configured CIDR", x.1.addr()),
                )
            })
            .ok_or_else(|| {
                none(
                    "cidr=".to_string()
                        + &nets
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                )
            }),
        Method::Address(addr) | Method::CanReach(addr) => cands
            .iter()
            .find_map(|c| {
                c.addresses
                    .iter()
                    .find(|a| a.addr() == *addr)
                    .map(|a| (c, *a))
            })
            .map(|x| found(x, format!("address={addr} on {}", x.0.ifname)))
            .ok_or_else(|| none(format!("address={addr}"))),
    }
}

/// Every address first-found could choose, with its interface and MTU, in
/// interface order: what a node advertises as its alternatives.
pub fn usable_addresses(cands: &[Candidate]) -> Vec<(String, IpNet, u32)> {
    cands
        .iter()
        .filter(|c| eligible(c))
        .flat_map(|c| global_v4(c).map(move |a| (c.ifname.clone(), a, c.mtu)))
        .collect()
}

/// Whether a node should move off its advertised address: when the peers
/// that probed it reach none of them at `advertised` but some reach another
/// of its addresses, the one most peers reach (ties: the earlier in
/// `mine`). `reports` holds, per peer that reported on us, the addresses of
/// ours it reached. No reports, or any peer reaching `advertised`, means
/// stay: a partial partition is the relay's business, not a reason to move.
pub fn reconsider(advertised: IpAddr, mine: &[IpAddr], reports: &[Vec<IpAddr>]) -> Option<IpAddr> {
    if reports.is_empty() || reports.iter().any(|r| r.contains(&advertised)) {
        return None;
    }
    let count = |a: &IpAddr| reports.iter().filter(|r| r.contains(a)).count();
    mine.iter()
        .filter(|a| **a != advertised)
        .map(|a| (count(a), *a))
        .filter(|(n, _)| *n > 0)
        // max_by_key keeps the last maximum; reversing keeps the first.
        .rev()
        .max_by_key(|(n, _)| *n)
        .map(|(_, a)| a)
}

/// How long [`reconsider`] must keep proposing one address before the
/// node moves to it: a peer newly reached at the advertised address
/// reports it only after its record's gap (`record_news::gap`), and the
/// report then spreads for a few rounds, while a peer reaching only
/// another address reports at once. Without the wait the first reports
/// would move a node that most peers reach where it is.
pub fn move_wait(peers: usize, round: Duration) -> Duration {
    crate::record_news::gap(peers) + round * 5
}

/// Why `range` (the pod network or a fixed block) cannot be used on this
/// host: it overlaps an address or connected subnet of an interface that
/// is not Muslin's own. Pods would shadow the host's own neighbours.
pub fn range_conflict(field: &str, range: IpNet, cands: &[Candidate]) -> Option<String> {
    let overlaps = |a: &IpNet, b: &IpNet| a.contains(&b.network()) || b.contains(&a.network());
    cands
        .iter()
        .filter(|c| !c.ifname.starts_with(crate::IFACE_PREFIX))
        .flat_map(|c| c.addresses.iter().map(move |a| (c, a)))
        .filter(|(_, a)| a.addr().is_ipv4() == range.addr().is_ipv4())
        .filter(|(_, a)| !matches!(a.addr(), IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80))
        .find(|(_, a)| overlaps(&range, &a.trunc()))
        .map(|(c, a)| {
            format!(
                "{field} {range} overlaps {} on {} (address {}): pods would take addresses of the host's own network; choose a range clear of it",
                a.trunc(),
                c.ifname,
                a.addr()
            )
        })
}

fn pattern(res: &[Regex]) -> String {
    res.iter()
        .map(|r| {
            r.as_str()
                .trim_start_matches("^(?:")
                .trim_end_matches(")$")
                .to_string()
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(name: &str, addrs: &[&str], kind: Option<&str>) -> Candidate {
        Candidate {
            ifname: name.into(),
            kind: kind.map(String::from),
            up: true,
            mtu: 1500,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn host() -> Vec<Candidate> {
        vec![
            cand("lo", &["127.0.0.1/8"], None),
            cand("docker0", &["172.17.0.1/16"], Some("bridge")),
            cand("eth0", &["10.0.2.15/24"], Some("veth")),
            cand("eth1", &["192.168.56.11/24", "fe80::1/64"], Some("veth")),
            cand("msl0123456789ab", &[], Some("veth")),
        ]
    }

    fn sel(m: &str) -> Result<Choice, String> {
        select(&m.parse().unwrap(), &host())
    }

    #[test]
    fn methods_pick_as_documented() {
        assert_eq!(
            sel("first-found").unwrap().ifname,
            "eth0",
            "first usable, skipping lo and docker0"
        );
        assert_eq!(
            sel("interface=eth1").unwrap().address.to_string(),
            "192.168.56.11/24"
        );
        assert_eq!(sel("interface=ens.*,eth[1-9]").unwrap().ifname, "eth1");
        assert_eq!(sel("skip-interface=eth0").unwrap().ifname, "eth1");
        assert_eq!(sel("cidr=192.168.0.0/16").unwrap().ifname, "eth1");
        assert_eq!(sel("address=10.0.2.15").unwrap().ifname, "eth0");
        assert!(sel("interface=eth1")
            .unwrap()
            .reason
            .contains("interface=eth1"));
    }

    #[test]
    fn no_match_lists_candidates() {
        for m in ["interface=wlan0", "cidr=10.99.0.0/16", "address=1.2.3.4"] {
            let e = sel(m).unwrap_err();
            assert!(e.contains("eth1 [192.168.56.11/24"), "{m}: {e}");
            assert!(!e.contains("lo ["), "{e}");
        }
    }

    #[test]
    fn bad_methods_are_refused() {
        for m in [
            "interface=",
            "interface=(",
            "cidr=10.0.0.0/99",
            "can-reach=nowhere",
            "guess",
        ] {
            assert!(m.parse::<Method>().is_err(), "{m}");
        }
        assert!(matches!(
            "".parse::<Method>().unwrap(),
            Method::Reachability
        ));
    }

    #[test]
    fn a_move_waits_for_the_reports_that_are_paced() {
        let round = Duration::from_millis(100);
        // Longer than the slowest peer's gap, and some rounds to spread.
        for peers in [2, 20, 100, 1000] {
            let w = move_wait(peers, round);
            assert!(
                w > crate::record_news::gap(peers) + round * 2,
                "{peers}: {w:?}"
            );
        }
        assert_eq!(move_wait(3, round), Duration::from_millis(650));
        assert_eq!(
            move_wait(100, Duration::from_secs(1)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn reconsider_moves_only_when_no_peer_reaches_the_advertised_address() {
        let a = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mine = [a("10.0.2.15"), a("192.168.10.11"), a("192.168.56.11")];
        // Nobody reported yet: stay.
        assert_eq!(reconsider(mine[0], &mine, &[]), None);
        // Every peer reaches the cluster NIC, none the NAT address.
        let r = vec![vec![mine[2]], vec![mine[1], mine[2]]];
        assert_eq!(reconsider(mine[0], &mine, &r), Some(mine[2]));
        // One peer still reaches the advertised address: a partial
        // partition, not a wrong address.
        let r = vec![vec![mine[0]], vec![mine[2]]];
        assert_eq!(reconsider(mine[0], &mine, &r), None);
        // Reports that reach nothing of ours: nowhere better to go.
        assert_eq!(reconsider(mine[0], &mine, &[vec![]]), None);
        // A tie goes to the earlier address.
        let r = vec![vec![mine[1]], vec![mine[2]]];
        assert_eq!(reconsider(mine[0], &mine, &r), Some(mine[1]));
    }

    #[test]
    fn ranges_overlapping_host_networks_are_named() {
        let net = |s: &str| -> IpNet { s.parse().unwrap() };
        let e = range_conflict("pod-cidr", net("192.168.0.0/16"), &host()).unwrap();
        assert!(
            e.contains("192.168.0.0/16") && e.contains("192.168.56.0/24") && e.contains("eth1"),
            "{e}"
        );
        let e = range_conflict("pod-cidr", net("10.0.2.128/25"), &host()).unwrap();
        assert!(e.contains("10.0.2.0/24") && e.contains("eth0"), "{e}");
        assert!(range_conflict("pod-cidr", net("10.244.0.0/16"), &host()).is_none());
        // Our own VXLAN device's address lies inside the pod network.
        let mut h = host();
        h.push(cand("msl-vxlan", &["10.244.1.0/32"], Some("vxlan")));
        assert!(range_conflict("pod-cidr", net("10.244.0.0/16"), &h).is_none());
        let addrs: Vec<String> = usable_addresses(&host())
            .iter()
            .map(|(i, a, _)| format!("{i} {a}"))
            .collect();
        assert_eq!(addrs, ["eth0 10.0.2.15/24", "eth1 192.168.56.11/24"]);
    }

    #[test]
    fn eligibility() {
        let mut down = cand("eth2", &["10.1.0.1/24"], None);
        down.up = false;
        assert!(!eligible(&down));
        assert!(!eligible(&cand("cali123", &[], Some("veth"))));
        assert!(!eligible(&cand("br0", &[], Some("bridge"))));
        assert!(eligible(&cand("enp0s3", &[], None)));
    }
}
