//! Routes, in any table and either family.

use std::net::IpAddr;

use muslin_plan::object::{Route, Scope};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteMetric, RouteScope};
use rtnetlink::RouteMessageBuilder;

use super::apply::Conn;
use super::counters::netlink_write;
use super::error::errno;
use super::netlink::protocol;
use crate::KernelError;

async fn message(nl: &Conn, r: &Route) -> Result<RouteMessage, KernelError> {
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(r.dst.addr(), r.dst.prefix_len())
        .expect("prefix of a valid net")
        .table_id(r.table)
        .protocol(protocol(r.protocol));
    if let Some(v) = r.via {
        b = b.gateway(v).map_err(|_| KernelError::Io {
            what: format!("route to {} via {v}: families differ", r.dst),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
    }
    if let Some(d) = &r.dev {
        b = b.output_interface(nl.index(d).await?);
    }
    if r.scope == Scope::Link {
        b = b.scope(RouteScope::Link);
    }
    if r.onlink {
        b = b.onlink();
    }
    if let Some(s) = r.src {
        b = b.pref_source(s).map_err(|_| KernelError::Io {
            what: format!("route to {} src {s}: families differ", r.dst),
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
    }
    let mut m = b.build();
    if let Some(mtu) = r.mtu {
        m.attributes
            .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(mtu)]));
    }
    Ok(m)
}

pub(super) async fn replace(nl: &Conn, r: &Route) -> Result<(), KernelError> {
    let m = message(nl, r).await?;
    nl.handle
        .route()
        .add(m)
        .replace()
        .execute()
        .await
        .map_err(KernelError::netlink(format!("adding route {r}")))?;
    netlink_write();
    Ok(())
}

/// A route already gone (or whose device is gone) is not an error.
pub(super) async fn delete(nl: &Conn, r: &Route) -> Result<(), KernelError> {
    let m = match message(nl, r).await {
        Ok(m) => m,
        // Its device is gone, and the route with it.
        Err(KernelError::Io { source, .. })
            if r.dev.is_some() && source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    match nl.handle.route().del(m).execute().await {
        Ok(()) => {
            netlink_write();
            Ok(())
        }
        Err(e) if errno(&e) == Some(libc::ESRCH) => Ok(()),
        Err(e) => Err(KernelError::netlink(format!("removing route {r}"))(e)),
    }
}
