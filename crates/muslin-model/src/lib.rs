//! Pure model of Muslin: configuration, the CNI protocol's types, the address
//! allocator and naming rules. Nothing here performs I/O, so every rule can be
//! unit-tested and reused by the agent, the plugin, `status` and `doctor`.

pub mod agent_config;
pub mod api;
pub mod cluster;
pub mod cni;
pub mod dataplane;
pub mod dns;
pub mod doctor;
pub mod encryption;
pub mod health;
pub mod host_firewall;
pub mod ipam;
pub mod naming;
pub mod network;
pub mod object;
pub mod peer_map;
pub mod plumbing;
pub mod policy;
pub mod record_news;
pub mod relay;
pub mod settings;
pub mod underlay;

/// Route protocol number stamped on every route Muslin installs, so that it
/// only ever removes routes it owns (see `/etc/iproute2/rt_protos`; unused by
/// the common routing daemons).
pub const ROUTE_PROTOCOL: u8 = 77;

/// The one Muslin network every attachment joins until networks can be
/// configured. A network id names an isolated address space (its blocks,
/// routes and, later, VNI); it is not the CNI network *name* a runtime
/// passes, which only keys attachments.
pub const DEFAULT_NETWORK: &str = "default";

/// Prefix of every host-side interface Muslin creates.
pub const IFACE_PREFIX: &str = "msl";
