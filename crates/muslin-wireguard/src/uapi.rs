//! The cross-platform WireGuard UAPI (wireguard.com/xplatform) on
//! /var/run/wireguard/IFNAME.sock, so `wg show` and `wg set` work on our
//! device exactly as on wireguard-go.
//!
//! The protocol is line based: `get=1` or `set=1`, then `key=value` lines,
//! then an empty line; the answer ends with `errno=N` and an empty line.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::IpNet;

use crate::engine::Engine;

pub(crate) struct UapiServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl UapiServer {
    /// Same directory and socket modes as wireguard-go (0755, 0600); a
    /// stale socket from a killed predecessor is replaced.
    pub(crate) fn start(dir: &Path, path: &Path, engine: Arc<Engine>) -> io::Result<UapiServer> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        let _ = fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("wg-uapi".into())
            .spawn(move || serve(&listener, &engine, &s))?;
        Ok(UapiServer {
            stop,
            thread: Some(thread),
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: &UnixListener, engine: &Engine, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut p = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 100) } <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else {
            continue;
        };
        // One client at a time is what `wg` needs; the timeout keeps a
        // stuck client from wedging the socket for everyone after it.
        if let Err(e) = handle(stream, engine) {
            tracing::debug!("UAPI client: {e}");
        }
    }
}

fn handle(stream: UnixStream, engine: &Engine) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    loop {
        let mut op = String::new();
        if r.read_line(&mut op)? == 0 {
            return Ok(());
        }
        let mut body = Vec::new();
        loop {
            let mut l = String::new();
            if r.read_line(&mut l)? == 0 {
                break;
            }
            let l = l.trim_end_matches('\n');
            if l.is_empty() {
                break;
            }
            body.push(l.to_string());
        }
        let reply = match op.trim_end() {
            "get=1" => {
                let mut s = get(engine);
                s.push_str("errno=0\n\n");
                s
            }
            "set=1" => {
                let errno = match set(engine, &body) {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::info!("UAPI set refused: {}", e.1);
                        e.0
                    }
                };
                format!("errno={errno}\n\n")
            }
            _ => return Ok(()),
        };
        out.write_all(reply.as_bytes())?;
    }
}

fn hex(b: &[u8; 32]) -> String {
    b.iter().fold(String::with_capacity(64), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

pub(crate) fn get(engine: &Engine) -> String {
    let snap = engine.snapshot();
    let mut s = String::new();
    if let Some(id) = &snap.key {
        let _ = writeln!(s, "private_key={}", hex(&id.secret.to_bytes()));
    }
    let _ = writeln!(s, "listen_port={}", engine.listen_port());
    let now = SystemTime::now();
    for (public, peer) in &snap.peers {
        let st = peer.lock();
        let _ = writeln!(s, "public_key={}", hex(public));
        if let Some(psk) = &st.psk {
            let _ = writeln!(s, "preshared_key={}", hex(psk));
        }
        s.push_str("protocol_version=1\n");
        if let Some(ep) = st.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let (since, tx, rx) = match &st.tunn {
            Some(t) => {
                let (since, tx, rx, _, _) = t.stats();
                (since, tx, rx)
            }
            None => (None, 0, 0),
        };
        let at = since
            .and_then(|d| now.checked_sub(d))
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", at.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", at.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={tx}");
        let _ = writeln!(s, "rx_bytes={rx}");
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            st.keepalive.unwrap_or(0)
        );
        for n in &st.allowed {
            let _ = writeln!(s, "allowed_ip={n}");
        }
    }
    s
}

type SetError = (i32, String);

fn bad(what: &str, v: &str) -> SetError {
    // A malformed key is still a secret (base64 sent where hex belongs):
    // it is never echoed, and the message is logged.
    if what.ends_with("_key") {
        return (libc::EINVAL, format!("bad {what} ({} characters)", v.len()));
    }
    (libc::EINVAL, format!("bad {what}: {v:?}"))
}

fn set(engine: &Engine, body: &[String]) -> Result<(), SetError> {
    let mut port = None;
    let result = engine.configure(|c| {
        let mut peer = None;
        let mut created = false;
        for line in body {
            let (k, v) = line.split_once('=').ok_or_else(|| bad("line", line))?;
            match k {
                "private_key" => {
                    let key = unhex(v).ok_or_else(|| bad(k, v))?;
                    c.set_private_key((key != [0; 32]).then_some(key));
                }
                "listen_port" => port = Some(v.parse::<u16>().map_err(|_| bad(k, v))?),
                "fwmark" => {}
                "replace_peers" => {
                    if v == "true" {
                        c.remove_all_peers();
                    }
                }
                "public_key" => {
                    let key = unhex(v).ok_or_else(|| bad(k, v))?;
                    // Our own key as a peer is ignored, as wireguard-go does.
                    let own = c.snap.key.as_ref().map(|id| *id.public.as_bytes());
                    if own == Some(key) {
                        peer = None;
                        continue;
                    }
                    created = !c.has_peer(&key);
                    peer = Some(c.peer(key));
                }
                _ => {
                    let Some(p) = &peer else {
                        // Settings of an ignored peer.
                        continue;
                    };
                    match k {
                        "update_only" => {
                            if v == "true" && created {
                                c.remove_peer(&p.public);
                                peer = None;
                            }
                        }
                        "remove" => {
                            if v == "true" {
                                c.remove_peer(&p.public);
                                peer = None;
                            }
                        }
                        "preshared_key" => {
                            let key = unhex(v).ok_or_else(|| bad(k, v))?;
                            let key = (key != [0; 32]).then_some(key);
                            let mut st = p.lock();
                            st.psk = key;
                            if let Some(t) = st.tunn.as_mut() {
                                t.set_preshared_key(key);
                            }
                        }
                        "endpoint" => {
                            let ep: SocketAddr = v.parse().map_err(|_| bad(k, v))?;
                            p.lock().endpoint = Some(ep);
                        }
                        "persistent_keepalive_interval" => {
                            let n: u16 = v.parse().map_err(|_| bad(k, v))?;
                            let n = (n != 0).then_some(n);
                            let mut st = p.lock();
                            st.keepalive = n;
                            if let Some(t) = st.tunn.as_mut() {
                                t.set_persistent_keepalive(n);
                            }
                        }
                        "replace_allowed_ips" => {
                            if v == "true" {
                                p.lock().allowed.clear();
                            }
                        }
                        "allowed_ip" => {
                            let n: IpNet = v.parse().map_err(|_| bad(k, v))?;
                            let p = std::sync::Arc::clone(p);
                            c.add_allowed(&p, n);
                        }
                        "protocol_version" => {
                            if v != "1" {
                                return Err((libc::EPROTO, format!("protocol_version {v}")));
                            }
                        }
                        _ => return Err(bad("key", k)),
                    }
                }
            }
        }
        Ok(())
    });
    if let Some(port) = port {
        engine
            .set_listen_port(port)
            .map_err(|e| (e.raw_os_error().unwrap_or(libc::EIO), e.to_string()))?;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let k = [0xa5; 32];
        assert_eq!(unhex(&hex(&k)), Some(k));
        assert_eq!(unhex("zz"), None);
    }
}
