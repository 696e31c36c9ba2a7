//! The metrics endpoint: `GET /metrics` over plain HTTP/1.1, one request
//! per connection. Hand-written rather than a web framework: a scraper
//! sends one small GET and reads one body, and the agent's binary size is
//! most of its resident memory. Requests are bounded in size, time and
//! number at once, so a stray client cannot hold the agent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::node::Node;

/// A scrape's request line and headers fit in this; a larger one is not a
/// scraper's.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request, and then to read the answer.
const CLIENT_TIME: Duration = Duration::from_secs(10);
/// Scrapes served at once; each reads the host's firewall counters.
const AT_ONCE: usize = 4;
/// Connections held at once, served or waiting; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` turns true; scrapes in flight are dropped then.
pub async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stopping(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) if conns.len() >= MAX_CONNECTIONS => drop(stream),
                Ok((stream, _)) => {
                    let (node, slots) = (node.clone(), slots.clone());
                    conns.spawn(async move {
                        // The wait for a slot counts against the client's
                        // time too: nothing waits forever.
                        let served =
                            tokio::time::timeout(CLIENT_TIME, answer(stream, &node, &slots)).await;
                        match served {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(cause = %e, "metrics client left early"),
                            Err(_) => tracing::debug!("metrics client timed out"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    conns.shutdown().await;
}

async fn stopping(stop: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns must not live across the select's
    // other arms; a dropped sender means the agent is stopping too.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

/// Reads one request and answers it; a scrape waits for one of `slots`
/// (a slow client's request is read without holding one).
async fn answer(
    mut stream: TcpStream,
    node: &Node,
    slots: &tokio::sync::Semaphore,
) -> std::io::Result<()> {
    let head = match read_head(&mut stream).await? {
        Some(h) => h,
        None => return reply(&mut stream, 431, "text/plain", b"request too large\n", true).await,
    };
    let (status, body): (u16, Vec<u8>) = match route(&head) {
        Route::Metrics => {
            let _slot = slots.acquire().await;
            (200, super::scrape(node).await.into_bytes())
        }
        Route::NotFound => (404, b"not found: the metrics are at /metrics\n".to_vec()),
        Route::NotAllowed => (405, b"only GET and HEAD\n".to_vec()),
        Route::Bad => (400, b"bad request\n".to_vec()),
    };
    let content_type = if status == 200 {
        CONTENT_TYPE
    } else {
        "text/plain"
    };
    let with_body = !head.starts_with("HEAD ");
    reply(&mut stream, status, content_type, &body, with_body).await
}

/// The request line and headers; `None` when they exceed [`MAX_REQUEST`].
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Option<String>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_REQUEST {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            // A client that closed its side after the request line alone
            // still gets its answer.
            return Ok(Some(String::from_utf8_lossy(&buf).into_owned()));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Route {
    Metrics,
    NotFound,
    NotAllowed,
    Bad,
}

fn route(head: &str) -> Route {
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" && method != "HEAD" {
        return Route::NotAllowed;
    }
    // The query string (some scrapers add one) does not choose anything.
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        _ => Route::NotFound,
    }
}

async fn reply(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
    with_body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body);
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_only_get_and_head_of_metrics() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x"), Route::Metrics);
        assert_eq!(route("HEAD /metrics HTTP/1.0"), Route::Metrics);
        assert_eq!(route("GET /metrics?x=1 HTTP/1.1"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route("GET /metricsx HTTP/1.1"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1"), Route::NotAllowed);
        assert_eq!(route("GET /metrics"), Route::Bad);
        assert_eq!(route("GET /metrics SPDY/3"), Route::Bad);
        assert_eq!(route(""), Route::Bad);
    }
}
