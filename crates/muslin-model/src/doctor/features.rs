//! A kernel feature Muslin uses that this kernel lacks (VXLAN, WireGuard,
//! nftables), and the fallback in use instead.

use super::{AgentView, Finding, HostFacts};

pub const CHECK: &str = "kernel-features";

pub fn check(host: &HostFacts, agent: AgentView<'_>) -> Vec<Finding> {
    let cluster = agent.ok().and_then(|s| s.cluster.as_deref());
    let f = &host.features;
    let mut out = Vec::new();
    let backend = cluster.map(|c| c.backend.as_str()).unwrap_or("");
    out.push(match f.vxlan {
        Some(true) => Finding::ok(CHECK, "VXLAN: present"),
        None => Finding::warning(
            CHECK,
            "VXLAN: could not tell whether the kernel has it",
            "check `modprobe vxlan` works if peers are on other subnets",
        ),
        Some(false) if backend == "vxlan" => Finding::problem(
            CHECK,
            "VXLAN: missing, and the backend is vxlan: no pod traffic leaves this host",
            "load the vxlan module (`modprobe vxlan`) or use backend auto on a shared L2 segment",
        ),
        Some(false) => Finding::warning(
            CHECK,
            format!(
                "VXLAN: missing; backend {backend} routes only peers on this host's L2 segment"
            ),
            "load the vxlan module (`modprobe vxlan`) to reach peers on other subnets",
        ),
    });
    let wg = cluster.and_then(|c| c.wireguard.as_ref());
    out.push(match (f.wireguard, wg) {
        (Some(true), None) => Finding::ok(CHECK, "WireGuard: present (encryption is off)"),
        (_, None) => Finding::ok(
            CHECK,
            "WireGuard: not in this kernel; not needed (encryption is off)",
        ),
        (Some(true), Some(w)) => Finding::ok(CHECK, format!("WireGuard: present; {}", w.path)),
        (_, Some(w)) => Finding::warning(
            CHECK,
            format!("WireGuard: not in this kernel; fallback in use: {}", w.path),
            "load the wireguard module (Linux 5.6+) for lower latency and no traffic loss on agent restarts",
        ),
    });
    out.push(match f.nftables {
        Some(true) => Finding::ok(CHECK, "nftables: present"),
        None => Finding::warning(
            CHECK,
            "nftables: could not tell whether the kernel has it",
            "check that `nft list tables` works",
        ),
        Some(false) => Finding::problem(
            CHECK,
            "nftables: missing: no masquerade, policy or encryption guard",
            "load nf_tables (`modprobe nf_tables`) or use a kernel with it",
        ),
    });
    out
}
