//! Interface addresses.

use futures::TryStreamExt;
use muslin_plan::object::Address;

use super::apply::Conn;
use super::counters::netlink_write;
use super::error::errno;
use crate::KernelError;

/// An address already present is not an error.
pub(super) async fn add(nl: &Conn, a: &Address) -> Result<(), KernelError> {
    let idx = nl.index(&a.link).await?;
    match nl
        .handle
        .address()
        .add(idx, a.net.addr(), a.net.prefix_len())
        .execute()
        .await
    {
        Ok(()) => {
            netlink_write();
            Ok(())
        }
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        Err(e) => Err(KernelError::netlink(format!(
            "adding {} to {}",
            a.net, a.link
        ))(e)),
    }
}

pub(super) async fn delete(nl: &Conn, a: &Address) -> Result<(), KernelError> {
    let idx = nl.index(&a.link).await?;
    let mut req = nl
        .handle
        .address()
        .get()
        .set_link_index_filter(idx)
        .set_address_filter(a.net.addr())
        .execute();
    while let Some(m) = req.try_next().await.map_err(KernelError::netlink(format!(
        "finding {} on {}",
        a.net, a.link
    )))? {
        if m.header.prefix_len != a.net.prefix_len() {
            continue;
        }
        match nl.handle.address().del(m).execute().await {
            Ok(()) => netlink_write(),
            Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => {
                return Err(KernelError::netlink(format!(
                    "removing {} from {}",
                    a.net, a.link
                ))(e))
            }
        }
    }
    Ok(())
}
