//! The local API server: one request line in, an acknowledgement line and
//! one response line out, per connection, on a Unix socket only root can
//! reach.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use muslin_model::api::{Accepted, Request, Response};
use muslin_model::cni::{CniError, ErrorCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

use crate::membership::policies::PolicyAsk;
use crate::metrics::Op;
use crate::networks::Ask;
use crate::node::Node;
use muslin_model::policy::Format;
use tokio::sync::oneshot;

/// Requests are small; anything larger is a confused or hostile client.
const MAX_REQUEST: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("socket {0:?} is in use by another running agent")]
    InUse(PathBuf),
    #[error("binding socket {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub async fn bind(path: &Path) -> Result<UnixListener, BindError> {
    let ioe = |source| BindError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            // 0700: the socket is unreachable to others even before chmod.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(ioe)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(BindError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(ioe)?;
    }
    let l = UnixListener::bind(path).map_err(ioe)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(ioe)?;
    Ok(l)
}

/// Serves until `stop` turns true, then closes the socket and waits up to
/// `drain` for the requests in flight: each ADD either completes (and is
/// recorded) or fails with its rollback, never half-way.
pub async fn serve(
    listener: UnixListener,
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    drain: std::time::Duration,
) {
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopping(&mut stop) => break,
            Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let node = node.clone();
                    inflight.spawn(async move {
                        if let Err(e) = handle(stream, node).await {
                            tracing::debug!(cause = %e, "client connection ended early");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let n = inflight.len();
    if n > 0 {
        tracing::info!(requests = n, "waiting for requests in flight");
    }
    let finished = tokio::time::timeout(drain, async {
        while inflight.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            requests = inflight.len(),
            "requests still running after {}s; stopping them",
            drain.as_secs()
        );
        inflight.shutdown().await;
    }
}

async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // A dropped sender means the supervisor is gone: stop too.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Reads the request, acknowledges it at once (so a client can bound its
/// wait for a live agent to seconds), then answers. A request refused
/// before it is parsed gets its error without an acknowledgement.
async fn handle(stream: UnixStream, node: Arc<Node>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let req = match read_request(r).await? {
        None => return Ok(()),
        Some(Ok(req)) => req,
        Some(Err(refusal)) => {
            write_line(&mut w, &Response::Error(refusal)).await?;
            return w.shutdown().await;
        }
    };
    // A client that is gone by now gets nothing done on its behalf.
    write_line(&mut w, &Accepted::Accepted).await?;
    let resp = dispatch(&node, req).await;
    write_line(&mut w, &resp).await?;
    w.shutdown().await
}

/// One request line; `None` when the client left without sending one.
async fn read_request(r: OwnedReadHalf) -> std::io::Result<Option<Result<Request, CniError>>> {
    let mut line = Vec::new();
    let n = BufReader::new(r.take(MAX_REQUEST as u64 + 1))
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if line.len() > MAX_REQUEST {
        return Ok(Some(Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("the request is too large: the agent accepts at most {MAX_REQUEST} bytes"),
        ))));
    }
    Ok(Some(serde_json::from_slice::<Request>(&line).map_err(
        |e| CniError::new(ErrorCode::AgentProtocol, format!("bad request: {e}")),
    )))
}

async fn write_line(w: &mut OwnedWriteHalf, v: &impl serde::Serialize) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(v).expect("reply serializes");
    out.push(b'\n');
    w.write_all(&out).await
}

async fn policy_ask<T>(
    node: &Node,
    make: impl FnOnce(oneshot::Sender<T>) -> PolicyAsk,
) -> Result<T, CniError> {
    node.networks()?.ask(|tx| Ask::Policy(make(tx))).await
}

/// The node's status as `muslin status` and the metrics show it.
pub(crate) async fn status(node: &Node) -> muslin_model::api::NodeStatus {
    let mut s = node.status().await;
    // The policies' drop counters as they are now (an idle agent reads its
    // table only when asked).
    if let (Some(c), Ok(fresh)) = (s.cluster.as_mut(), policy_ask(node, PolicyAsk::List).await) {
        c.policies = fresh;
    }
    if let (Some(c), Ok(n)) = (s.cluster.as_mut(), node.networks()) {
        c.wireguard = n.ask(Ask::WireguardStatus).await.ok().flatten();
    }
    s
}

/// Runs one CNI request, recording its outcome and latency.
async fn cni<T>(
    node: &Node,
    op: Op,
    run: impl std::future::Future<Output = Result<T, CniError>>,
) -> Result<T, CniError> {
    let start = std::time::Instant::now();
    let res = run.await;
    node.metrics.cni(op, res.is_ok(), start.elapsed());
    res
}

async fn dispatch(node: &Node, req: Request) -> Response {
    let res = match req {
        Request::Add(r) => cni(node, Op::Add, node.add(r)).await.map(Response::Added),
        Request::Del(r) => cni(node, Op::Del, node.del(r))
            .await
            .map(|_| Response::Done),
        Request::Check(r) => cni(node, Op::Check, node.check(r))
            .await
            .map(|_| Response::Done),
        Request::Gc(r) => cni(node, Op::Gc, node.gc(r))
            .await
            .map(|released| Response::Collected { released }),
        Request::Status => Ok(Response::Status(status(node).await)),
        Request::NetworkCreate(c) => match node.networks() {
            Ok(n) => n.ask(|tx| Ask::Create(c, tx)).await.and_then(|r| r),
            Err(e) => Err(e),
        }
        .map(Response::Network),
        Request::NetworkDelete { name } => match node.networks() {
            Ok(n) => n.ask(|tx| Ask::Delete(name, tx)).await.and_then(|r| r),
            Err(e) => Err(e),
        }
        .map(|_| Response::Done),
        Request::NetworkList => match node.networks() {
            Ok(n) => n.ask(Ask::List).await,
            Err(e) => Err(e),
        }
        .map(|networks| Response::Networks { networks }),
        Request::PolicyApply { text, toml } => policy_ask(node, |reply| PolicyAsk::Apply {
            text,
            format: if toml { Format::Toml } else { Format::Yaml },
            reply,
        })
        .await
        .and_then(|r| r)
        .map(|keys| Response::Applied { keys }),
        Request::PolicyDelete { key } => policy_ask(node, |reply| PolicyAsk::Delete { key, reply })
            .await
            .and_then(|r| r)
            .map(|_| Response::Done),
        Request::PolicyList => policy_ask(node, PolicyAsk::List)
            .await
            .map(|policies| Response::Policies { policies }),
        Request::NamespaceLabel {
            namespace,
            set,
            remove,
        } => policy_ask(node, |reply| PolicyAsk::NamespaceLabel {
            namespace,
            set,
            remove,
            reply,
        })
        .await
        .and_then(|r| r)
        .map(|labels| Response::Labels { labels }),
        Request::Label {
            target,
            set,
            remove,
        } => node
            .relabel(&target, set, remove)
            .await
            .map(|labels| Response::Labels { labels }),
        Request::Reap { apply } => node
            .reap(apply)
            .await
            .map(|stale| Response::Reaped { stale }),
        Request::DnsLookup { name, networks } => match &node.dns {
            None => Err(CniError::new(
                ErrorCode::InvalidConfig,
                "this agent serves no DNS (started with --dns false, or without a cluster)",
            )),
            Some(_) if name.is_empty() || name.len() > 255 => Err(CniError::new(
                ErrorCode::InvalidConfig,
                "name: 1 to 255 characters",
            )),
            Some(d) if networks.iter().any(|n| !d.knows(n)) => Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "network: {:?} is not a network this agent serves",
                    networks.iter().find(|n| !d.knows(n)).expect("checked")
                ),
            )),
            Some(d) => {
                let nets: Vec<&str> = if networks.is_empty() {
                    vec![muslin_model::DEFAULT_NETWORK]
                } else {
                    networks.iter().map(String::as_str).collect()
                };
                Ok(Response::Dns(d.lookup(&name, &nets).await))
            }
        },
        Request::RotateKey => match node.networks() {
            Ok(n) => n
                .ask(Ask::RotateKey)
                .await
                .and_then(|r| r)
                .map(|public_key| Response::Rotated { public_key }),
            Err(e) => Err(e),
        },
    };
    res.unwrap_or_else(Response::Error)
}
