//! Policy routing rules.

use futures::TryStreamExt;
use muslin_plan::object::{Family, Rule};
use rtnetlink::packet_route::rule::{RuleAction, RuleMessage};

use super::apply::Conn;
use super::counters::netlink_write;
use super::error::errno;
use super::observe::rule_of;
use crate::KernelError;

pub(super) async fn add(nl: &Conn, r: &Rule) -> Result<(), KernelError> {
    let req = nl
        .handle
        .rule()
        .add()
        .table_id(r.table)
        .priority(r.priority)
        .action(RuleAction::ToTable);
    let res = match (r.family, r.src) {
        (_, Some(ipnet::IpNet::V4(s))) => {
            req.v4()
                .source_prefix(s.addr(), s.prefix_len())
                .execute()
                .await
        }
        (_, Some(ipnet::IpNet::V6(s))) => {
            req.v6()
                .source_prefix(s.addr(), s.prefix_len())
                .execute()
                .await
        }
        (Family::V4, None) => req.v4().execute().await,
        (Family::V6, None) => req.v6().execute().await,
    };
    match res {
        Ok(()) => {
            netlink_write();
            Ok(())
        }
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(KernelError::netlink(format!("adding rule {r}"))(e)),
    }
}

pub(super) async fn delete(nl: &Conn, r: &Rule) -> Result<(), KernelError> {
    let version = match r.family {
        Family::V4 => rtnetlink::IpVersion::V4,
        Family::V6 => rtnetlink::IpVersion::V6,
    };
    let all: Vec<RuleMessage> = nl
        .handle
        .rule()
        .get(version)
        .execute()
        .try_collect()
        .await
        .map_err(KernelError::netlink("listing rules"))?;
    for m in all.into_iter().filter(|m| rule_of(m).as_ref() == Some(r)) {
        if nl.handle.rule().del(m).execute().await.is_ok() {
            netlink_write();
        }
    }
    Ok(())
}
