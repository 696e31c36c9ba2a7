//! The name service's model: where each network's resolver listens, which
//! names a container has, and what a query asked from one network gets.
//! No I/O: the agent builds a [`NameIndex`] from its cluster view and its
//! DNS server asks it.
//!
//! The cluster domain defaults to `muslin.internal`, not `muslin.local`:
//! `.local` belongs to multicast DNS (RFC 6762), and hosts running Avahi,
//! nss-mdns or systemd-resolved send `.local` names there instead of to
//! the resolver in resolv.conf (a known trap of `cluster.local`).
//! `.internal` is reserved for private use (ICANN, 2024) and never
//! delegated in public DNS, so a name of ours never collides with one on
//! the Internet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::cluster::EndpointRecord;

pub const DEFAULT_DOMAIN: &str = "muslin.internal";

/// Seconds a client may keep an answer from the cluster: short, so that a
/// container's departure or arrival shows within a few seconds.
pub const TTL_SECONDS: u32 = 5;

/// Aliases one attachment may carry (with labels of at most 63 bytes,
/// about 2 KiB in the endpoint's cluster record).
pub const MAX_ALIASES: usize = 32;

/// Network `id`'s resolver address (the default network's id is 0). One
/// address per network, link-local so no cluster range can hold it, and
/// the same on every host: a container's resolv.conf stays right wherever
/// the container runs and across the agent's restarts. Ids go to 4095, so
/// the addresses span 169.254.53.1 to 169.254.69.0.
pub fn listen_address(network_id: u16) -> Ipv4Addr {
    Ipv4Addr::from(u32::from_be_bytes([169, 254, 53, 1]) + u32::from(network_id))
}

/// Why `domain` cannot be the cluster domain, if it cannot.
pub fn domain_problem(domain: &str) -> Option<String> {
    let d = domain.trim_end_matches('.');
    if d.is_empty() || d.len() > 200 {
        return Some(format!(
            "{domain:?}: a domain of 1 to 200 characters is needed"
        ));
    }
    if !d.contains('.') {
        return Some(format!(
            "{domain:?}: a single-label domain would capture top-level names (use e.g. muslin.internal)"
        ));
    }
    if !crate::policy::dns_subdomain(d) {
        return Some(format!(
            "{domain:?}: lowercase letters, digits, '-' and '.' only, each label starting and ending with a letter or digit"
        ));
    }
    if d == "local" || d.ends_with(".local") {
        return Some(format!(
            "{domain:?}: .local is multicast DNS's (RFC 6762); hosts with mDNS would never ask Muslin (use e.g. muslin.internal)"
        ));
    }
    None
}

/// Why `alias` cannot name a container, if it cannot: a name is one
/// lowercase DNS label. A dot would let a container of one namespace
/// stand in for `NAME.NAMESPACE` of another (an alias `db.shop`).
pub fn name_problem(alias: &str) -> Option<String> {
    if crate::policy::dns_label(alias) {
        None
    } else {
        Some(format!(
            "{alias:?} is not a DNS name of one label (lowercase letters, digits and '-', at most 63 characters)"
        ))
    }
}

/// What a query is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    A,
    Aaaa,
    /// A and AAAA at once (`ANY`).
    Address,
    Ptr,
    Other,
}

/// The answer of the cluster's names to one query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Addresses, in no particular order (the server shuffles them).
    Addresses(Vec<IpAddr>),
    /// Names, fully qualified without the final dot (PTR).
    Names(Vec<String>),
    /// The name exists but has nothing of the asked type.
    NoData,
    /// Inside the cluster's names and unknown: answered at once.
    NxDomain,
    /// Not the cluster's: the upstream resolvers answer.
    Forward,
}

/// One address under a name, with what a qualified query filters on.
#[derive(Debug, Clone)]
struct Entry {
    addr: IpAddr,
    namespace: Arc<str>,
}

#[derive(Debug, Default)]
struct NetNames {
    name: String,
    subnets: Vec<IpNet>,
    by_name: HashMap<Box<str>, Vec<Entry>>,
    /// Each address's first name (PTR).
    by_addr: HashMap<IpAddr, Arc<str>>,
}

/// A network the name service serves: its name and subnets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServedNetwork {
    pub name: String,
    pub subnets: Vec<IpNet>,
}

/// Every name of the cluster, per network, and who asks from where.
#[derive(Debug, Default)]
pub struct NameIndex {
    domain: String,
    /// `.DOMAIN`: what every name inside the domain ends with.
    suffix: String,
    nets: Vec<NetNames>,
    positions: HashMap<String, u32>,
    /// A local container's address in a network → every network the
    /// container is attached to: what its queries may see.
    askers: HashMap<(u32, IpAddr), Arc<[u32]>>,
    /// Each network's position alone: what an unknown asker sees.
    alone: Vec<[u32; 1]>,
    /// Every range of the cluster: a reverse query inside one is never
    /// forwarded.
    ranges: Vec<IpNet>,
    names: usize,
}

/// What one query may see: positions of networks.
pub type Visible = Arc<[u32]>;

impl NameIndex {
    /// The names of `endpoints` in `networks` (endpoints of other networks
    /// are not served); `me`'s endpoints are the containers that ask.
    pub fn build<'a>(
        domain: &str,
        networks: &[ServedNetwork],
        endpoints: impl IntoIterator<Item = &'a EndpointRecord>,
        me: &str,
    ) -> NameIndex {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut ix = NameIndex {
            suffix: format!(".{domain}"),
            domain,
            ..Default::default()
        };
        for n in networks {
            ix.alone.push([ix.nets.len() as u32]);
            ix.positions.insert(n.name.clone(), ix.nets.len() as u32);
            ix.nets.push(NetNames {
                name: n.name.to_ascii_lowercase(),
                subnets: n.subnets.clone(),
                ..Default::default()
            });
            ix.ranges.extend(n.subnets.iter().copied());
        }
        let mut namespaces: HashMap<&str, Arc<str>> = HashMap::new();
        let mut containers: HashMap<&str, Vec<(u32, IpAddr)>> = HashMap::new();
        for e in endpoints {
            let Some(&pos) = ix.positions.get(&e.network) else {
                continue;
            };
            let ns_name = e
                .pod_namespace
                .as_deref()
                .unwrap_or(crate::policy::DEFAULT_NAMESPACE);
            let namespace = namespaces
                .entry(ns_name)
                .or_insert_with(|| Arc::from(ns_name.to_ascii_lowercase()))
                .clone();
            let net = &mut ix.nets[pos as usize];
            let mut first: Option<Arc<str>> = None;
            let own = e.name.as_ref().or(e.pod_name.as_ref());
            for name in own.into_iter().chain(e.aliases.iter()) {
                let name = name.to_ascii_lowercase();
                if name_problem(&name).is_some() {
                    continue;
                }
                let entries = net.by_name.entry(name.as_str().into()).or_default();
                if entries.is_empty() {
                    ix.names += 1;
                }
                for a in &e.addresses {
                    if !entries.iter().any(|x| x.addr == a.addr()) {
                        entries.push(Entry {
                            addr: a.addr(),
                            namespace: namespace.clone(),
                        });
                    }
                }
                first.get_or_insert_with(|| Arc::from(name.as_str()));
            }
            if let Some(first) = first {
                for a in &e.addresses {
                    net.by_addr.entry(a.addr()).or_insert_with(|| first.clone());
                }
            }
            if e.node == me {
                let held = containers.entry(e.container_id.as_str()).or_default();
                held.extend(e.addresses.iter().map(|a| (pos, a.addr())));
            }
        }
        for held in containers.values() {
            let mut nets: Vec<u32> = held.iter().map(|(p, _)| *p).collect();
            nets.sort_unstable();
            nets.dedup();
            let nets: Arc<[u32]> = nets.into();
            for key in held {
                ix.askers.insert(*key, nets.clone());
            }
        }
        ix
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Names, counted once per network that has them.
    pub fn names(&self) -> usize {
        self.names
    }

    /// What a query from `asker` arriving at `network`'s resolver may see:
    /// every network the asking container is attached to, or only
    /// `network` for an address no local container holds.
    /// Borrowed: a query's path takes no reference count shared by the
    /// threads that answer.
    pub fn visible(&self, network: &str, asker: IpAddr) -> &[u32] {
        let Some(&pos) = self.positions.get(network) else {
            return &[];
        };
        match self.askers.get(&(pos, asker)) {
            Some(v) => v,
            None => &self.alone[pos as usize],
        }
    }

    /// Whether `network`'s resolver answers `asker`: an address of the
    /// network, or the host itself (a query from the host carries a
    /// resolver address as its source). Anyone else reached the resolver
    /// from outside the network and would read its names.
    pub fn admits(&self, network: &str, asker: IpAddr) -> bool {
        let Some(&pos) = self.positions.get(network) else {
            return false;
        };
        is_listen_address(asker)
            || self.nets[pos as usize]
                .subnets
                .iter()
                .any(|s| s.contains(&asker))
    }

    pub fn has_network(&self, network: &str) -> bool {
        self.positions.contains_key(network)
    }

    /// The positions of networks by name (for `muslin dns lookup`).
    pub fn visible_by_name(&self, networks: &[&str]) -> Visible {
        networks
            .iter()
            .filter_map(|n| self.positions.get(*n).copied())
            .collect()
    }

    /// Answers `qname` (any case, with or without the final dot) for a
    /// query that may see `visible`.
    pub fn lookup(&self, visible: &[u32], qname: &str, kind: Kind) -> Lookup {
        let lower;
        let mut q = qname.strip_suffix('.').unwrap_or(qname);
        if q.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = q.to_ascii_lowercase();
            q = &lower;
        }
        if let Some(addr) = reverse_address(q) {
            return self.reverse(visible, addr, kind);
        }
        if q == self.domain {
            return Lookup::NoData;
        }
        let Some(rest) = q.strip_suffix(self.suffix.as_str()) else {
            return Lookup::Forward;
        };
        let mut found: Vec<IpAddr> = Vec::new();
        fn add(found: &mut Vec<IpAddr>, entries: &[Entry], keep: &dyn Fn(&Entry) -> bool) {
            for e in entries.iter().filter(|e| keep(e)) {
                if !found.contains(&e.addr) {
                    found.push(e.addr);
                }
            }
        }
        let nets = || visible.iter().filter_map(|&p| self.nets.get(p as usize));
        match rest.split_once('.') {
            None => {
                for net in nets() {
                    if let Some(entries) = net.by_name.get(rest) {
                        add(&mut found, entries, &|_| true);
                    }
                }
            }
            // NAME.NAMESPACE, else NAME.NETWORK: a namespace and a network
            // of one name (`default`) give the namespace's containers, so a
            // short name resolves in the asker's namespace first.
            Some((name, scope)) if !scope.contains('.') => {
                for net in nets() {
                    if let Some(entries) = net.by_name.get(name) {
                        add(&mut found, entries, &|e| &*e.namespace == scope);
                    }
                }
                if found.is_empty() {
                    for net in nets().filter(|n| n.name == scope) {
                        if let Some(entries) = net.by_name.get(name) {
                            add(&mut found, entries, &|_| true);
                        }
                    }
                }
            }
            Some(_) => {}
        }
        if found.is_empty() {
            return Lookup::NxDomain;
        }
        match kind {
            Kind::A => found.retain(IpAddr::is_ipv4),
            Kind::Aaaa => found.retain(IpAddr::is_ipv6),
            Kind::Address => {}
            Kind::Ptr | Kind::Other => found.clear(),
        }
        if found.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Addresses(found)
        }
    }

    fn reverse(&self, visible: &[u32], addr: IpAddr, kind: Kind) -> Lookup {
        let mut names: Vec<String> = Vec::new();
        for &pos in visible {
            if let Some(n) = self
                .nets
                .get(pos as usize)
                .and_then(|n| n.by_addr.get(&addr))
            {
                let fq = format!("{n}.{}", self.domain);
                if !names.contains(&fq) {
                    names.push(fq);
                }
            }
        }
        if !names.is_empty() {
            return match kind {
                Kind::Ptr => Lookup::Names(names),
                _ => Lookup::NoData,
            };
        }
        if self.ranges.iter().any(|r| r.contains(&addr)) {
            Lookup::NxDomain
        } else {
            Lookup::Forward
        }
    }
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa`, `…ip6.arpa`)
/// stands for, when it names a whole address.
pub fn reverse_address(q: &str) -> Option<IpAddr> {
    if let Some(rest) = q.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut n = 0;
        for part in rest.split('.') {
            if n == 4
                || part.is_empty()
                || part.len() > 3
                || !part.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            octets[3 - n] = part.parse().ok()?;
            n += 1;
        }
        return (n == 4).then(|| IpAddr::V4(Ipv4Addr::from(octets)));
    }
    if let Some(rest) = q.strip_suffix(".ip6.arpa") {
        let mut v: u128 = 0;
        let mut n = 0;
        for part in rest.split('.') {
            if n == 32 || part.len() != 1 {
                return None;
            }
            let d = u128::from(char::from(part.as_bytes()[0]).to_digit(16)? as u8);
            v |= d << (4 * n);
            n += 1;
        }
        return (n == 32).then(|| IpAddr::V6(Ipv6Addr::from(v)));
    }
    None
}

/// The reverse name of `addr`, without the final dot.
pub fn reverse_name(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => {
            let o = a.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(a) => {
            let v = u128::from(a);
            let mut s = String::with_capacity(72);
            for i in 0..32 {
                s.push(char::from_digit(((v >> (4 * i)) & 0xf) as u32, 16).expect("a nibble"));
                s.push('.');
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// The resolver list of a resolv.conf: its `nameserver` lines, in order.
/// A resolver at one of `ours` is left out: forwarding to ourselves
/// would loop.
pub fn upstreams_of_resolv_conf(text: &str, ours: &dyn Fn(IpAddr) -> bool) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A scoped IPv6 address (`fe80::1%eth0`) keeps its address only.
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .filter(|a| !ours(*a))
        .collect()
}

/// The first and last listening addresses of all networks.
pub fn listen_range() -> (Ipv4Addr, Ipv4Addr) {
    (listen_address(0), listen_address(crate::network::MAX_ID))
}

/// Whether `addr` is one of the name service's own listening addresses.
pub fn is_listen_address(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            let v = u32::from(a);
            let first = u32::from(listen_address(0));
            (first..=first + u32::from(crate::network::MAX_ID)).contains(&v)
        }
        IpAddr::V6(_) => false,
    }
}

#[cfg(test)]
mod tests;
