//! Our nftables table through `nft`'s JSON interface, run off the async
//! workers; and the ruleset generation, read over netlink so that an idle
//! agent can tell "nothing changed" without running `nft` at all.

use muslin_plan::nft::{parse_observed, NftChange, NftFamily, NftObserved, TABLE};

use super::counters;
use crate::KernelError;

/// Runs `nft` with `args` and optional standard input; returns its output.
pub(crate) fn run(args: &[&str], stdin: Option<&str>) -> Result<std::process::Output, KernelError> {
    super::process::run("nft", args, stdin)
        .map_err(|(what, source)| KernelError::Io { what, source })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KernelError> + Send + 'static,
) -> Result<T, KernelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KernelError::Io {
            what: "nft task".into(),
            source: std::io::Error::other(e),
        })?
}

pub(super) async fn apply(c: NftChange) -> Result<(), KernelError> {
    blocking(move || {
        let doc = c.to_json();
        let out = run(&["-j", "-f", "-"], Some(&doc))?;
        if !out.status.success() {
            return Err(KernelError::Io {
                what: format!(
                    "nft refused `{c}`: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::ErrorKind::InvalidInput.into(),
            });
        }
        counters::tool_write();
        counters::nft_wrote();
        Ok(())
    })
    .await
}

pub(super) async fn observe(fam: NftFamily) -> Result<NftObserved, KernelError> {
    blocking(move || {
        let out = run(&["-j", "list", "table", fam.name(), TABLE], None)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(NftObserved::default());
            }
            return Err(KernelError::Io {
                what: format!("nft list table {} {TABLE}: {}", fam.name(), err.trim()),
                source: std::io::ErrorKind::Other.into(),
            });
        }
        parse_observed(&String::from_utf8_lossy(&out.stdout)).map_err(|e| KernelError::Io {
            what: e,
            source: std::io::ErrorKind::InvalidData.into(),
        })
    })
    .await
}

pub(super) async fn observe_policy() -> Result<muslin_plan::policy_nft::PolicyObserved, KernelError>
{
    use muslin_plan::policy_nft::{parse_observed, POLICY_TABLE};
    blocking(move || {
        let out = run(&["-j", "list", "table", "ip", POLICY_TABLE], None)?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("No such file or directory") {
                return Ok(Default::default());
            }
            return Err(KernelError::Io {
                what: format!("nft list table ip {POLICY_TABLE}: {}", err.trim()),
                source: std::io::ErrorKind::Other.into(),
            });
        }
        parse_observed(&String::from_utf8_lossy(&out.stdout)).map_err(|e| KernelError::Io {
            what: e,
            source: std::io::ErrorKind::InvalidData.into(),
        })
    })
    .await
}

/// nftables' generation id: every ruleset change bumps it.
pub(super) async fn generation() -> Result<u32, KernelError> {
    blocking(|| read_generation().map_err(KernelError::io("reading the nftables generation"))).await
}

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;
const NLMSG_ERROR: u16 = 2;

fn read_generation() -> std::io::Result<u32> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16 bytes) + nfgenmsg (4 bytes), host byte order but for
    // nfgenmsg's res_id.
    let mut req = [0u8; 20];
    req[0..4].copy_from_slice(&20u32.to_ne_bytes());
    req[4..6].copy_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN).to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    // SAFETY: the buffer outlives the call; the kernel is the destination
    // (a zeroed sockaddr_nl).
    let sent = unsafe {
        let mut addr: libc::sockaddr_nl = std::mem::zeroed();
        addr.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 512];
    // SAFETY: reads at most buf.len() bytes into buf.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    parse_generation(&buf[..n as usize])
}

fn parse_generation(b: &[u8]) -> std::io::Result<u32> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "short netlink answer");
    let u16_at = |i: usize| -> std::io::Result<u16> {
        Ok(u16::from_ne_bytes(
            b.get(i..i + 2)
                .ok_or_else(bad)?
                .try_into()
                .expect("2 bytes"),
        ))
    };
    let ty = u16_at(4)?;
    if ty == NLMSG_ERROR {
        let code = i32::from_ne_bytes(b.get(16..20).ok_or_else(bad)?.try_into().expect("4 bytes"));
        return Err(std::io::Error::from_raw_os_error(-code));
    }
    let mut i = 20;
    while i + 4 <= b.len() {
        let len = usize::from(u16_at(i)?);
        let kind = u16_at(i + 2)? & 0x3fff;
        if len < 4 {
            break;
        }
        if kind == NFTA_GEN_ID && len >= 8 {
            return Ok(u32::from_be_bytes(
                b[i + 4..i + 8].try_into().expect("4 bytes"),
            ));
        }
        i += (len + 3) & !3;
    }
    Err(bad())
}
