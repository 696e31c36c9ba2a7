//! Pod traffic through a host whose own firewall drops forwarded traffic
//! (pitfall 5: Docker's `iptables -P FORWARD DROP`). The real agent must
//! open it with tagged rules in the host's own chains, put them back when
//! someone deletes them, and leave the host's rules and policies alone.

mod common;

use std::time::{Duration, Instant};

use common::*;

const TAG: &str = "muslin: pod traffic";
const ALL: &str = "tcp,udp,icmp";

/// The agent re-asserts every 10 s; allow for one round and the listing.
const REASSERT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug)]
enum HostFilter {
    Legacy,
    IptablesNft,
    Nftables,
}

impl HostFilter {
    /// A drop policy, as Docker sets it, and a rule of the host's own.
    fn install(self, ns: &Netns) {
        match self {
            HostFilter::Legacy | HostFilter::IptablesNft => {
                let tool = self.tool();
                ns_must(ns, &[tool, "-A", "FORWARD", "-i", "eth9", "-j", "ACCEPT"]);
                ns_must(ns, &[tool, "-P", "FORWARD", "DROP"]);
            }
            HostFilter::Nftables => common::hosts::nft(
                ns,
                "table inet filter {\n chain forward {\n  \
                 type filter hook forward priority filter; policy drop;\n  \
                 iifname \"eth9\" accept\n }\n}\n",
            ),
        }
    }

    fn tool(self) -> &'static str {
        match self {
            HostFilter::Legacy => "iptables-legacy",
            HostFilter::IptablesNft => "iptables-nft",
            HostFilter::Nftables => "nft",
        }
    }

    /// The chain as its own tool lists it (with nft's rule handles).
    fn listing(self, ns: &Netns) -> String {
        match self {
            HostFilter::Nftables => ns_must(
                ns,
                &["nft", "-a", "list", "chain", "inet", "filter", "forward"],
            ),
            _ => ns_must(ns, &[self.tool(), "-S", "FORWARD"]),
        }
    }

    fn ours(self, ns: &Netns) -> Vec<String> {
        let listing = self.listing(ns);
        listing
            .lines()
            .filter(|l| l.contains(TAG))
            .map(String::from)
            .collect()
    }

    /// The host's own rules and policy (without nft's handles, which the
    /// insertions above them do not change anyway).
    fn hosts_own(self, ns: &Netns) -> Vec<String> {
        let listing = self.listing(ns);
        listing
            .lines()
            .filter(|l| !l.contains(TAG))
            .map(|l| l.split(" # handle").next().unwrap().to_string())
            .collect()
    }

    /// Deletes our source rule by hand, as an operator or a reload would.
    fn delete_ours(self, ns: &Netns, block: &str) {
        match self {
            HostFilter::Nftables => {
                let line = self
                    .ours(ns)
                    .into_iter()
                    .find(|l| l.contains("saddr"))
                    .unwrap();
                let handle = line.rsplit(' ').next().unwrap();
                ns_must(
                    ns,
                    &[
                        "nft", "delete", "rule", "inet", "filter", "forward", "handle", handle,
                    ],
                );
            }
            _ => {
                let spec = [
                    "-s",
                    block,
                    "-m",
                    "comment",
                    "--comment",
                    TAG,
                    "-j",
                    "ACCEPT",
                ];
                let mut args = vec![self.tool(), "-D", "FORWARD"];
                args.extend(spec);
                ns_must(ns, &args);
            }
        }
    }
}

fn ns_must(ns: &Netns, args: &[&str]) -> String {
    let o = ns.exec(args);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn within(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two containers on one host whose firewall drops forwarded traffic.
fn pods_pass_a_host_firewall_that_drops(filter: HostFilter, block: &str) {
    let host = Host::with_setup(&[block], &[], |ns| filter.install(ns));
    let own = filter.hosts_own(&host.ns);
    let two = || filter.ours(&host.ns).len() == 2;
    within(REASSERT, "our accept rules are in the host's chain", two);

    let (c1, c2) = (Netns::new("fw1"), Netns::new("fw2"));
    let ip1 = result_ip(&host.add(&unique("fw"), &c1));
    let ip2 = result_ip(&host.add(&unique("fw"), &c2));
    let _s1 = ProbeServer::start(&c1, 7777);
    let _s2 = ProbeServer::start(&c2, 7777);
    c1.probe(&ip2, ALL)
        .expect("pod to pod through a dropping host firewall");
    c2.probe(&ip1, ALL).expect("and back");
    assert_eq!(
        filter.hosts_own(&host.ns),
        own,
        "the host's own rules and policy are untouched"
    );
    assert!(
        host.log().contains("inserted our accept rule"),
        "{}",
        host.log()
    );

    filter.delete_ours(&host.ns, block);
    assert_eq!(filter.ours(&host.ns).len(), 1);
    within(REASSERT, "the agent put the deleted rule back", two);
    c1.probe(&ip2, ALL)
        .expect("pod to pod after the rule came back");
    assert_eq!(
        filter.hosts_own(&host.ns),
        own,
        "the host's own rules and policy are untouched"
    );
}

#[test]
fn pods_pass_iptables_legacy_forward_policy_drop() {
    pods_pass_a_host_firewall_that_drops(HostFilter::Legacy, "10.96.1.0/24");
}

#[test]
fn pods_pass_iptables_nft_forward_policy_drop() {
    pods_pass_a_host_firewall_that_drops(HostFilter::IptablesNft, "10.96.2.0/24");
}

#[test]
fn pods_pass_nftables_inet_forward_chain_with_policy_drop() {
    pods_pass_a_host_firewall_that_drops(HostFilter::Nftables, "10.96.3.0/24");
}

#[test]
fn a_host_that_drops_nothing_gets_nothing() {
    let host = Host::new(&["10.96.4.0/24"]);
    let (c1, c2) = (Netns::new("fw1"), Netns::new("fw2"));
    host.add(&unique("fw"), &c1);
    let ip2 = result_ip(&host.add(&unique("fw"), &c2));
    let _s2 = ProbeServer::start(&c2, 7777);
    c1.probe(&ip2, ALL).expect("pod to pod");
    // The first round runs at start; wait for the second, the periodic one.
    std::thread::sleep(Duration::from_secs(11));
    assert_eq!(
        ns_must(&host.ns, &["nft", "list", "ruleset"]),
        "",
        "no table, no rule"
    );
    let legacy = ns_must(&host.ns, &["cat", "/proc/net/ip_tables_names"]);
    assert!(
        !legacy.contains("filter"),
        "reading must not create the legacy tables"
    );
    assert!(!host.log().contains("host firewall"), "{}", host.log());
}
