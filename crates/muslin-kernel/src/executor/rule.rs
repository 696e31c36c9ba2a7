//! Policy routing rules.

use futures::TryStreamExt;
use muslin_plan::object::{Family, Rule};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};

use super::apply::Conn;
use super::counters::netlink_write;
use super::error::errno;
use super::observe::rule_of;
use crate::KernelError;

pub(super) async fn add(nl: &Conn, r: &Rule) -> Result<(), KernelError> {
    let mut req = nl.handle.rule().add().priority(r.priority);
    req = match r.unreachable {
        true => req.action(RuleAction::Unreachable),
        false => req.table_id(r.table).action(RuleAction::ToTable),
    };
    if let Some(i) = &r.iif {
        req = req.input_interface(i.clone());
    }
    if let Some((mark, mask)) = r.fwmark {
        req = req.fw_mark(mark);
        req.message_mut()
            .attributes
            .push(RuleAttribute::FwMask(mask));
    }
    let res = match r.family {
        Family::V4 => {
            let mut q = req.v4();
            if let Some(ipnet::IpNet::V4(s)) = r.src {
                q = q.source_prefix(s.addr(), s.prefix_len());
            }
            if let Some(ipnet::IpNet::V4(d)) = r.dst {
                q = q.destination_prefix(d.addr(), d.prefix_len());
            }
            q.execute().await
        }
        Family::V6 => {
            let mut q = req.v6();
            if let Some(ipnet::IpNet::V6(s)) = r.src {
                q = q.source_prefix(s.addr(), s.prefix_len());
            }
            if let Some(ipnet::IpNet::V6(d)) = r.dst {
                q = q.destination_prefix(d.addr(), d.prefix_len());
            }
            q.execute().await
        }
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
