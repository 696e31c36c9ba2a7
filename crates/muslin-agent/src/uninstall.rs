//! `muslin uninstall`: removes everything of the cluster data plane Muslin
//! made on this host (the VXLAN devices, the default network's and each
//! network's, the name service's `msl-dns`, and with them the routes through them, its other routes to
//! peers, the pod and network rules, our nftables table, our accept rules
//! in the host's firewalls). Pod veths stay: they belong to
//! containers that may still run. Computed like everything else: observe,
//! diff against an empty desired state, execute.

use muslin_kernel::{Executor, KernelError, Lane, OnFailure};
use muslin_model::dataplane::VXLAN_DEV;
use muslin_plan::data_plane::all_ownership;
use muslin_plan::nft::{NftChange, NftFamily};
use muslin_plan::{diff, Change, HostState, Step};

/// Removes what is there and says what it removed.
pub async fn uninstall() -> Result<Vec<String>, KernelError> {
    let ex = Executor::spawn()?;
    let mut done: Vec<String> = crate::host_firewall::remove_all(&ex)
        .await
        .map_err(|what| KernelError::Io {
            what: format!("host firewall: {what}"),
            source: std::io::ErrorKind::Other.into(),
        })?
        .iter()
        .map(|x| format!("our accept rule from {}", x.chain()))
        .collect();
    let observed = ex.host().await?;
    let tunnel = |name: &str| {
        name == VXLAN_DEV
            || name == muslin_model::encryption::WG_DEV
            || muslin_model::network::parse_vxlan_dev(name).is_some()
    };
    let mut steps: Vec<Step> = observed
        .links
        .iter()
        .filter(|l| tunnel(&l.name) || l.name == muslin_plan::data_plane::DNS_DEV)
        .map(|l| Step::host(Change::DeleteLink(l.name.clone())))
        .collect();
    let d = diff(&observed, &HostState::default(), &all_ownership(&[], true));
    steps.extend(
        d.changes
            .into_iter()
            .filter(
                |c| !matches!(c, Change::DeleteRoute(r) if r.dev.as_deref().is_some_and(tunnel)),
            )
            .map(Step::host),
    );
    for fam in [NftFamily::Ip, NftFamily::Ip6] {
        if ex.masquerade(fam).await?.exists {
            steps.push(Step::host(Change::Nft(NftChange::DeleteTable(fam))));
        }
    }
    let policy = ex.policy_table().await?;
    if let Some(c) = muslin_plan::policy_nft::diff(&policy, &Default::default()) {
        steps.push(Step::host(Change::Nft(NftChange::Policy(c))));
    }
    let report = ex.apply(Lane::Host, steps, OnFailure::Continue).await;
    for o in report.outcomes {
        match o.result {
            Ok(()) => done.push(o.step.change.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
