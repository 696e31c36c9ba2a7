//! Names outside the cluster domain: asked of the host's resolvers, one
//! after the other, each given a timeout, and never longer in all than a
//! client waits (glibc gives up after 5 s and asks the next nameserver).

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, Record, RecordType};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// The longest a forwarded query waits in all.
const CLIENT_PATIENCE: Duration = Duration::from_millis(4000);

pub(super) struct Upstream {
    servers: Vec<SocketAddr>,
    resolver: Option<TokioResolver>,
    deadline: Duration,
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>, timeout: Duration) -> Upstream {
        // Every upstream gets its turn within the client's patience.
        let n = servers.len().max(1) as u32;
        let timeout = timeout.min(CLIENT_PATIENCE / n);
        let deadline = (timeout * n).min(CLIENT_PATIENCE);
        let resolver = (!servers.is_empty()).then(|| {
            let name_servers = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    let mut c = NameServerConfig::udp_and_tcp(s.ip());
                    c.connections = vec![udp, tcp];
                    // A resolver's NXDOMAIN is the answer; another would
                    // only say it again, later.
                    c.trust_negative_responses = true;
                    c
                })
                .collect();
            let mut config = ResolverConfig::default();
            config.name_servers = name_servers;
            let mut opts = ResolverOpts::default();
            opts.timeout = timeout;
            opts.attempts = 1;
            // One server at a time: the next is asked when one fails.
            opts.num_concurrent_reqs = 1;
            opts.ndots = 0;
            opts.use_hosts_file = ResolveHosts::Never;
            opts.preserve_intermediates = true;
            opts.cache_size = 1024;
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
                .with_options(opts)
                .build()
        });
        let resolver = match resolver {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                tracing::warn!(cause = %e, "could not set up the upstream resolvers; names outside the cluster get SERVFAIL");
                None
            }
            None => None,
        };
        Upstream {
            servers,
            resolver,
            deadline,
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The upstream's records for `name`, or the response code to answer.
    pub async fn forward(&self, name: Name, t: RecordType) -> Result<Vec<Record>, ResponseCode> {
        let Some(r) = &self.resolver else {
            return Err(ResponseCode::ServFail);
        };
        let mut name = name;
        name.set_fqdn(true);
        match tokio::time::timeout(self.deadline, r.lookup(name, t)).await {
            Ok(Ok(l)) => Ok(l.answers().to_vec()),
            Ok(Err(e)) if e.is_nx_domain() => Err(ResponseCode::NXDomain),
            Ok(Err(e)) if e.is_no_records_found() => Ok(Vec::new()),
            Ok(Err(e)) => {
                tracing::debug!(cause = %e, "upstream resolvers failed");
                Err(ResponseCode::ServFail)
            }
            Err(_) => Err(ResponseCode::ServFail),
        }
    }
}
