//! How many neighbour (ARP and NDP) entries a lab needs, and how the
//! kernel's limits on them are raised for labs and restored after them.
//!
//! The neighbour tables are the kernel's, not a namespace's: every
//! namespace of every lab on the machine shares one IPv4 table and one
//! IPv6 table, capped by `gc_thresh3` (1,024 by default). A 40-host lab
//! needs more than that; past the cap the kernel logs `neighbor table
//! overflow` and packets to unresolved neighbours are dropped, so pairs
//! fail for no visible reason. Real hosts each have their own table, but
//! a host with many peers and pods meets the same limit.
//!
//! Labs record what they need in one machine-wide record (see
//! `neigh_sys`); the limits follow the sum of the needs of the labs that
//! are up, and go back to what the machine had when the last one goes
//! down. Everything here is pure: the record, what the kernel shows, and
//! the changes to make.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::LabPlan;

/// Entries a lab needs in each family's table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Need {
    pub ipv4: u64,
    pub ipv6: u64,
}

impl Need {
    fn add(self, o: Need) -> Need {
        Need {
            ipv4: self.ipv4 + o.ipv4,
            ipv6: self.ipv6 + o.ipv6,
        }
    }

    pub fn of(&self, f: Family) -> u64 {
        match f {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

pub const FAMILIES: [Family; 2] = [Family::Ipv4, Family::Ipv6];

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

/// `gc_thresh1`, `gc_thresh2`, `gc_thresh3` of one family.
pub type Limits = [u64; 3];

/// The limits of both families.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub ipv4: Limits,
    pub ipv6: Limits,
}

impl Machine {
    pub fn get(&self, f: Family) -> &Limits {
        match f {
            Family::Ipv4 => &self.ipv4,
            Family::Ipv6 => &self.ipv6,
        }
    }

    fn get_mut(&mut self, f: Family) -> &mut Limits {
        match f {
            Family::Ipv4 => &mut self.ipv4,
            Family::Ipv6 => &mut self.ipv6,
        }
    }
}

/// What a lab is made of, as far as neighbours go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Shape {
    /// Nodes (hosts, routers, etcd members) on each switch bridge; a
    /// per-host segment is a bridge of its own.
    pub bridges: Vec<usize>,
    /// Bridges that are per-host segments (a private copy per host).
    pub private_bridges: usize,
    /// Pairs of agent hosts that may reach each other through a tunnel
    /// device (VXLAN), which has a neighbour entry per peer.
    pub tunnel_pairs: usize,
    /// Tunnel devices per host: the default network's and one per network.
    pub tunnel_devices: usize,
    /// Nodes: hosts, routers and etcd members.
    pub nodes: usize,
    /// Hosts that run an agent.
    pub agents: usize,
    /// Container attachments (one per container and network).
    pub attachments: usize,
    /// Whether the lab's own addresses are IPv6 (pods or underlay).
    pub ipv6: bool,
}

/// The shape of a planned lab. `backend` is the agents' (`auto` tunnels
/// only between hosts that share no segment, `routed` never, `vxlan`
/// always); `etcd` names hosts that run etcd instead of an agent.
pub fn shape(plan: &LabPlan, backend: &str, etcd: &[String]) -> Shape {
    let agents: Vec<&crate::plan::NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| !n.router && !etcd.contains(&n.name))
        .collect();
    let bridges: Vec<usize> = plan
        .bridges
        .iter()
        .map(|b| {
            plan.nodes
                .iter()
                .filter(|n| n.nics.iter().any(|x| x.bridge == b.name))
                .count()
        })
        .collect();
    let private_bridges = plan
        .nodes
        .iter()
        .flat_map(|n| &n.nics)
        .filter(|x| x.per_host)
        .count();
    let shares = |a: &crate::plan::NodePlan, b: &crate::plan::NodePlan| {
        a.nics
            .iter()
            .any(|x| !x.per_host && b.nics.iter().any(|y| y.bridge == x.bridge))
    };
    let mut tunnel_pairs = 0;
    for (i, a) in agents.iter().enumerate() {
        for b in &agents[i + 1..] {
            let tunnels = match backend {
                "routed" => false,
                "vxlan" => true,
                // A blocked pair is relayed over a tunnel hop; `auto`
                // tunnels where hosts share no segment.
                _ => !plan.blocked.is_empty() || !shares(a, b),
            };
            tunnel_pairs += usize::from(tunnels);
        }
    }
    let attachments = agents
        .iter()
        .flat_map(|h| h.containers.iter().map(|c| h.networks_of(c).len()))
        .sum();
    let ipv6 = plan.pod_cidr.addr().is_ipv6()
        || plan
            .nodes
            .iter()
            .flat_map(|n| &n.nics)
            .any(|x| x.address.addr().is_ipv6());
    Shape {
        bridges,
        private_bridges,
        tunnel_pairs,
        tunnel_devices: 1 + plan.networks.len(),
        nodes: plan.nodes.len(),
        agents: agents.len(),
        attachments,
        ipv6,
    }
}

/// Entries of the lab's own addresses (one family's): every node on a
/// segment may resolve every other (gossip and probes go to every peer),
/// plus a gateway on a private segment; a tunnel device has an entry per
/// peer on each end; an attachment has the container's entry for its
/// gateway and for its host, and the host's entry for the container; and
/// a node has a couple of its own (the agent's name service, loopback).
fn unicast(s: &Shape) -> u64 {
    let segments: u64 = s
        .bridges
        .iter()
        .map(|&n| (n as u64) * (n as u64).saturating_sub(1))
        .sum::<u64>()
        + s.private_bridges as u64;
    let tunnels = 2 * s.tunnel_pairs as u64 * s.tunnel_devices as u64;
    segments + tunnels + 3 * s.attachments as u64 + 2 * s.nodes as u64
}

/// The entries a lab of this shape needs. IPv4 always (the lab's
/// addresses are IPv4 unless it says otherwise). IPv6 always too: every
/// interface with IPv6 on (the kernel's default, bridges and their ports
/// included) holds three multicast entries (the solicited-node, all-routers
/// and MLDv2 groups) whatever the lab's addresses are; an IPv6 lab needs
/// its unicast entries there instead.
pub fn need(s: &Shape) -> Need {
    // The switch: a bridge and a port per NIC; a host: its NICs, the name
    // service's and tunnel devices, a veth per attachment; a container:
    // an interface per attachment.
    let nics: u64 = s.bridges.iter().map(|&n| n as u64).sum();
    let interfaces = s.bridges.len() as u64
        + 2 * nics
        + s.agents as u64 * (1 + s.tunnel_devices as u64)
        + 2 * s.attachments as u64;
    let multicast = 3 * interfaces;
    let own = unicast(s);
    if s.ipv6 {
        Need {
            ipv4: 2 * s.nodes as u64,
            ipv6: own + multicast,
        }
    } else {
        Need {
            ipv4: own,
            ipv6: multicast,
        }
    }
}

const ROUND: u64 = 1024;

fn round_up(n: u64) -> u64 {
    n.div_ceil(ROUND) * ROUND
}

/// Limits that hold `need` entries: the kernel's own proportions (128,
/// 512, 1024 = 1:4:8), scaled so that the soft limit, `gc_thresh2` (above
/// which the kernel starts evicting entries), is at least the need, and
/// the hard limit, `gc_thresh3`, twice that, for the machine's own entries
/// and the churn of a lab coming up. Rounded up to a multiple of 1,024.
pub fn limits_for(need: u64) -> Limits {
    let t3 = round_up(2 * need.max(1));
    [t3 / 8, t3 / 2, t3]
}

/// The machine-wide record of the labs' needs and of the limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The machine's limits before labs raised them (a value changed by
    /// someone else since becomes the machine's own).
    pub original: Machine,
    /// The values labs last put in the kernel.
    pub written: Machine,
    /// Values about to be written: a command killed between writing the
    /// record and the kernel leaves them here, so either value is known
    /// as the labs' own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writing: Option<Machine>,
    /// Each lab's need, by its registry directory (unique on the machine,
    /// whatever `MUSLIN_LAB_ROOT` each lab was made with).
    pub labs: BTreeMap<String, Need>,
}

/// One value to write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    pub family: Family,
    /// 1, 2 or 3: which `gc_threshN`.
    pub n: u8,
    pub old: u64,
    pub new: u64,
}

impl Change {
    pub fn key(&self) -> String {
        format!(
            "net.{}.neigh.default.gc_thresh{}",
            self.family.name(),
            self.n
        )
    }

    pub fn describe(&self) -> String {
        format!("{} {} -> {}", self.key(), self.old, self.new)
    }
}

/// What to do: the record to write before the kernel values (with the
/// values about to be written), the kernel values to change, in an order
/// that keeps gc_thresh1 <= gc_thresh2 <= gc_thresh3 at every step, and
/// whether the record stays afterwards (not once no lab needs anything).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub record: Record,
    pub keep: bool,
    pub changes: Vec<Change>,
    /// What all labs up need together, the one acting included on a raise.
    pub total: Need,
}

/// The record as it stands against what the kernel shows now: a value the
/// labs did not write was set by someone else, and is the machine's from
/// now on (never lowered below, never taken back); labs that are no longer
/// up (`up` says, by their directory) are forgotten.
pub fn settle(rec: Option<Record>, now: &Machine, up: &dyn Fn(&str) -> bool) -> Record {
    let Some(mut r) = rec else {
        return Record {
            original: *now,
            written: *now,
            writing: None,
            labs: BTreeMap::new(),
        };
    };
    for f in FAMILIES {
        for i in 0..3 {
            let v = now.get(f)[i];
            let ours = r.written.get(f)[i] == v || r.writing.is_some_and(|w| w.get(f)[i] == v);
            if !ours {
                r.original.get_mut(f)[i] = v;
            }
            r.written.get_mut(f)[i] = v;
        }
    }
    r.writing = None;
    r.labs.retain(|lab, _| up(lab));
    r
}

/// Each of `t`'s values with the same one of `o`.
fn combine(t: &mut Limits, o: &Limits, f: fn(u64, u64) -> u64) {
    for (a, b) in t.iter_mut().zip(o) {
        *a = f(*a, *b);
    }
}

fn total(r: &Record) -> Need {
    r.labs.values().fold(Need::default(), |a, n| a.add(*n))
}

/// The changes that bring `now` to `target`, value by value, only where
/// `move_it` allows: raising writes gc_thresh3 first, lowering last.
fn changes(now: &Machine, target: &Machine) -> Vec<Change> {
    let mut out = Vec::new();
    for f in FAMILIES {
        let (old, new) = (now.get(f), target.get(f));
        let raise = (0..3).rev().filter(|&i| new[i] > old[i]);
        let lower = (0..3).filter(|&i| new[i] < old[i]);
        for i in raise.chain(lower) {
            out.push(Change {
                family: f,
                n: i as u8 + 1,
                old: old[i],
                new: new[i],
            });
        }
    }
    out
}

/// `lab` comes up needing `need`: every limit below what all labs up need
/// together is raised; none is ever lowered here.
pub fn raise(
    rec: Option<Record>,
    now: &Machine,
    lab: &str,
    need: Need,
    up: &dyn Fn(&str) -> bool,
) -> Step {
    let mut r = settle(rec, now, up);
    r.labs.insert(lab.to_string(), need);
    let sum = total(&r);
    let mut target = *now;
    for f in FAMILIES {
        combine(target.get_mut(f), &limits_for(sum.of(f)), u64::max);
    }
    let changes = changes(now, &target);
    r.writing = (!changes.is_empty()).then_some(target);
    Step {
        record: r,
        keep: true,
        changes,
        total: sum,
    }
}

/// `lab` is gone (or going): limits come down to what the labs still up
/// need together, never below the machine's own values, and to exactly
/// those when no lab is left. Values someone else changed meanwhile are
/// left as they are (`settle`).
pub fn release(rec: Record, now: &Machine, lab: &str, up: &dyn Fn(&str) -> bool) -> Step {
    let mut r = settle(Some(rec), now, up);
    r.labs.remove(lab);
    let sum = total(&r);
    let mut target = r.original;
    if !r.labs.is_empty() {
        for f in FAMILIES {
            let want = limits_for(sum.of(f));
            combine(target.get_mut(f), &want, u64::max);
        }
    }
    // Only ever down here, and only to at least the machine's own.
    for f in FAMILIES {
        combine(target.get_mut(f), now.get(f), u64::min);
    }
    let changes = changes(now, &target);
    r.writing = (!changes.is_empty()).then_some(target);
    Step {
        keep: !r.labs.is_empty(),
        record: r,
        changes,
        total: sum,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::resolve;
    use crate::topology::Topology;

    fn plan(text: &str) -> LabPlan {
        resolve("t", &Topology::parse(text).unwrap(), &[]).unwrap()
    }

    #[test]
    fn the_default_lab_needs_about_what_the_kernel_shows() {
        // Measured on a 10-host default lab (auto backend): 183 IPv4
        // entries and 333 IPv6 ones (/proc/net/stat/{arp,ndisc}_cache).
        let s = shape(&plan(&Topology::default_text(10)), "auto", &[]);
        let mut b = s.bridges.clone();
        b.sort();
        assert_eq!(b, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 10]);
        assert_eq!(
            (s.private_bridges, s.tunnel_pairs, s.attachments),
            (10, 0, 20)
        );
        let n = need(&s);
        assert!((170..=230).contains(&n.ipv4), "{n:?}");
        assert!((333..=420).contains(&n.ipv6), "{n:?}");
        // 40 hosts, which overflowed the default 1,024: now well over it.
        let n40 = need(&shape(&plan(&Topology::default_text(40)), "auto", &[]));
        assert!(n40.ipv4 > 1024 && n40.ipv4 < 2000, "{n40:?}");
        // 100 hosts: every host resolves the 99 others.
        let n100 = need(&shape(&plan(&Topology::default_text(100)), "auto", &[]));
        assert!(n100.ipv4 >= 100 * 99 + 200 * 3, "{n100:?}");
        assert_eq!(limits_for(n100.ipv4), [2816, 11264, 22528]);
    }

    #[test]
    fn tunnels_count_by_backend_and_segments() {
        let text = r#"
[[segment]]
name = "left"
cidr = "192.168.10.0/24"
[[segment]]
name = "right"
cidr = "192.168.20.0/24"
[[router]]
name = "r1"
[[router.nic]]
segment = "left"
[[router.nic]]
segment = "right"
[[host]]
name = "a"
count = 2
[[host.nic]]
segment = "left"
[[host]]
name = "b"
count = 3
[[host.nic]]
segment = "right"
"#;
        let p = plan(text);
        // Across the router: 2 x 3 pairs tunnel with auto; all 10 with vxlan.
        assert_eq!(shape(&p, "auto", &[]).tunnel_pairs, 6);
        assert_eq!(shape(&p, "vxlan", &[]).tunnel_pairs, 10);
        assert_eq!(shape(&p, "routed", &[]).tunnel_pairs, 0);
        let s = shape(&p, "auto", &[]);
        // left: a1, a2, r1; right: b1..b3, r1.
        assert_eq!(s.bridges, [3, 4]);
        assert!(need(&shape(&p, "vxlan", &[])).ipv4 > need(&s).ipv4);
        // An etcd member is a node on a segment but runs no agent.
        let s = shape(&p, "auto", &["b3".to_string()]);
        assert_eq!((s.agents, s.tunnel_pairs), (4, 4));
    }

    #[test]
    fn limits_keep_the_kernels_proportions_and_cover_the_need() {
        assert_eq!(limits_for(0), [128, 512, 1024]);
        assert_eq!(limits_for(512), [128, 512, 1024]);
        assert_eq!(limits_for(513), [256, 1024, 2048]);
        for need in [1, 700, 1560, 10_900, 50_000] {
            let [t1, t2, t3] = limits_for(need);
            assert!(t1 <= t2 && t2 <= t3 && t2 >= need && t3 >= 2 * need);
            assert_eq!(t3 % 1024, 0);
        }
    }

    const DEFAULTS: Machine = Machine {
        ipv4: [128, 512, 1024],
        ipv6: [128, 512, 1024],
    };

    fn need4(n: u64) -> Need {
        Need { ipv4: n, ipv6: 0 }
    }

    fn apply(now: &mut Machine, s: &Step) {
        for c in &s.changes {
            assert_eq!(now.get(c.family)[c.n as usize - 1], c.old);
            now.get_mut(c.family)[c.n as usize - 1] = c.new;
        }
    }

    /// What the record says once the writes went through; none when the
    /// step removes it.
    fn written(s: &Step, now: &Machine) -> Option<Record> {
        s.keep
            .then(|| settle(Some(s.record.clone()), now, &|_| true))
    }

    #[test]
    fn a_lab_raises_only_what_it_needs_and_down_restores_the_machines_values() {
        let mut now = DEFAULTS;
        let s = raise(None, &now, "/run/muslin/lab/a", need4(400), &|_| true);
        assert!(s.changes.is_empty(), "400 entries fit in 1,024: {s:?}");
        let s = raise(
            written(&s, &now),
            &now,
            "/run/muslin/lab/b",
            need4(1200),
            &|_| true,
        );
        assert_eq!(s.total.ipv4, 1600);
        assert_eq!(
            s.changes.iter().map(Change::describe).collect::<Vec<_>>(),
            [
                "net.ipv4.neigh.default.gc_thresh3 1024 -> 4096",
                "net.ipv4.neigh.default.gc_thresh2 512 -> 2048",
                "net.ipv4.neigh.default.gc_thresh1 128 -> 512",
            ]
        );
        assert_eq!(s.record.writing.unwrap().ipv4, [512, 2048, 4096]);
        apply(&mut now, &s);
        let rec = written(&s, &now);
        assert_eq!(rec.as_ref().unwrap().original, DEFAULTS);
        // b goes: a's 400 fit in the machine's own values.
        let s = release(rec.unwrap(), &now, "/run/muslin/lab/b", &|_| true);
        assert_eq!(s.changes.len(), 3);
        apply(&mut now, &s);
        assert_eq!(now, DEFAULTS);
        assert!(s.keep, "a is still up");
        // a goes: nothing to change, and no record left.
        let s = release(
            written(&s, &now).unwrap(),
            &now,
            "/run/muslin/lab/a",
            &|_| true,
        );
        assert!(s.changes.is_empty() && !s.keep);
    }

    #[test]
    fn labs_needs_add_up_in_the_shared_table() {
        let mut now = DEFAULTS;
        let s = raise(None, &now, "a", need4(3000), &|_| true);
        apply(&mut now, &s);
        assert_eq!(now.ipv4, [768, 3072, 6144]);
        let s = raise(written(&s, &now), &now, "b", need4(3000), &|_| true);
        apply(&mut now, &s);
        assert_eq!(now.ipv4, [1536, 6144, 12288]);
        // The bigger lab goes first: down to what the other needs alone.
        let s = release(written(&s, &now).unwrap(), &now, "a", &|_| true);
        apply(&mut now, &s);
        assert_eq!(now.ipv4, [768, 3072, 6144]);
        let s = release(written(&s, &now).unwrap(), &now, "b", &|_| true);
        apply(&mut now, &s);
        assert_eq!(now, DEFAULTS);
    }

    #[test]
    fn never_below_the_machines_own_values_nor_over_someone_elses() {
        // The machine already had more than the lab needs.
        let mut now = Machine {
            ipv4: [4096, 8192, 16384],
            ipv6: DEFAULTS.ipv6,
        };
        let s = raise(None, &now, "a", need4(3000), &|_| true);
        assert!(s.changes.is_empty());
        let s = release(written(&s, &now).unwrap(), &now, "a", &|_| true);
        assert!(s.changes.is_empty() && !s.keep);

        // An operator raises gc_thresh3 while a lab is up: it stays theirs.
        now = DEFAULTS;
        let s = raise(None, &now, "a", need4(3000), &|_| true);
        apply(&mut now, &s);
        let rec = written(&s, &now);
        now.ipv4[2] = 50_000;
        let s = release(rec.unwrap(), &now, "a", &|_| true);
        apply(&mut now, &s);
        assert_eq!(now.ipv4, [128, 512, 50_000]);
    }

    #[test]
    fn a_command_killed_half_way_leaves_a_record_that_still_restores() {
        let mut now = DEFAULTS;
        let s = raise(None, &now, "a", need4(3000), &|_| true);
        // Killed after the record, after gc_thresh3 only.
        let rec = s.record.clone();
        apply(
            &mut now,
            &Step {
                changes: s.changes[..1].to_vec(),
                ..s.clone()
            },
        );
        // The lab's own `down` later: every value back, the one written
        // and those never written alike.
        let s = release(rec, &now, "a", &|_| true);
        apply(&mut now, &s);
        assert_eq!(now, DEFAULTS);
        assert!(!s.keep);

        // Killed after all the writes: a lab whose directory is gone is
        // forgotten by the next lab's command (here another lab's down).
        let mut now = DEFAULTS;
        let s = raise(None, &now, "a", need4(3000), &|_| true);
        apply(&mut now, &s);
        let s = release(s.record, &now, "other", &|lab| lab != "a");
        apply(&mut now, &s);
        assert_eq!(now, DEFAULTS);
        assert!(!s.keep);

        // Killed while lowering, after the record: the lower values are
        // known as the labs' too, and the rest still goes down.
        let mut now = DEFAULTS;
        let s1 = raise(None, &now, "a", need4(3000), &|_| true);
        apply(&mut now, &s1);
        let s2 = raise(written(&s1, &now), &now, "b", need4(3000), &|_| true);
        apply(&mut now, &s2);
        let s3 = release(written(&s2, &now).unwrap(), &now, "b", &|_| true);
        apply(
            &mut now,
            &Step {
                changes: s3.changes[..1].to_vec(),
                ..s3.clone()
            },
        );
        let s4 = release(s3.record, &now, "a", &|_| true);
        apply(&mut now, &s4);
        assert_eq!(now, DEFAULTS);
    }

    #[test]
    fn the_record_reads_back_as_written() {
        let s = raise(None, &DEFAULTS, "/run/muslin/lab/a", need4(3000), &|_| true);
        let r = s.record;
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"writing\""), "{text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), r);
    }
}
