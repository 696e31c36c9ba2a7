//! Real-kernel tests: two throwaway network namespaces joined by a veth, a
//! WireGuard device in each. Needs root and /dev/net/tun. Every name is
//! unique to the process and test, so tests run in parallel; Drop guards
//! remove what they made even when an assertion fails.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use muslin_wireguard::{
    run_uapi_daemon_until, uapi_socket_path, DaemonOptions, DeviceConfig, KeyPair, PeerSpec,
    PrivateKey, UserspaceDevice,
};

mod common;

use common::{in_ns, run, unique, Netns};

/// Two namespaces, a veth between them: underlay 192.168.77.1/.2, tunnel
/// addresses 10.77.0.1/.2 (namespaces are separate, so every pair may reuse
/// the same addresses).
struct Pair {
    a: Netns,
    b: Netns,
    if_a: String,
    if_b: String,
}

const UNDER_A: &str = "192.168.77.1";
const UNDER_B: &str = "192.168.77.2";
const TUN_A: &str = "10.77.0.1";
const TUN_B: &str = "10.77.0.2";

impl Pair {
    fn new() -> Pair {
        let (a, b) = (Netns::new("mwt"), Netns::new("mwt"));
        run(&[
            "ip", "link", "add", "va", "netns", &a.0, "type", "veth", "peer", "name", "vb",
            "netns", &b.0,
        ]);
        in_ns(
            &a.0,
            &["ip", "addr", "add", &format!("{UNDER_A}/24"), "dev", "va"],
        );
        in_ns(
            &b.0,
            &["ip", "addr", "add", &format!("{UNDER_B}/24"), "dev", "vb"],
        );
        in_ns(&a.0, &["ip", "link", "set", "va", "up"]);
        in_ns(&b.0, &["ip", "link", "set", "vb", "up"]);
        Pair {
            a,
            b,
            if_a: unique("mwa"),
            if_b: unique("mwb"),
        }
    }

    fn address_tunnels(&self) {
        for (ns, ifname, addr) in [(&self.a, &self.if_a, TUN_A), (&self.b, &self.if_b, TUN_B)] {
            in_ns(
                &ns.0,
                &["ip", "addr", "add", &format!("{addr}/24"), "dev", ifname],
            );
            in_ns(&ns.0, &["ip", "link", "set", ifname, "up"]);
        }
    }
}

fn on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).unwrap()
}

/// `muslin wireguard-device` as a library call, in its namespace, stopped
/// (and its interface removed) on drop.
struct Daemon {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    fn start(ns: &Netns, ifname: &str) -> Daemon {
        let rt = ns.runtime();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let name = ifname.to_string();
        let done = rt.spawn(async move {
            let stop = async {
                let _ = rx.await;
            };
            run_uapi_daemon_until(&name, DaemonOptions::default(), stop)
                .await
                .unwrap();
        });
        wait_for(|| uapi_socket_path(ifname).exists(), "UAPI socket");
        Daemon {
            stop: Some(tx),
            rt: Some(rt),
            done: Some(done),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let rt = self.rt.take().unwrap();
        let done = self.done.take().unwrap();
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), done).await });
    }
}

/// A child process killed on drop.
struct Kid(Child);

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(mut ok: impl FnMut() -> bool, what: &str) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn key_file(dir: &tempfile::TempDir, k: &PrivateKey) -> String {
    let p = dir.path().join(format!("{}.key", unique("k")));
    std::fs::write(&p, k.to_base64()).unwrap();
    p.to_string_lossy().into_owned()
}

/// `wg set` on one side: our key, port, and the other side as the peer.
/// Each end of `p` with its key and the other as its peer, by `wg`.
fn wg_set_both(p: &Pair, dir: &tempfile::TempDir, ka: &KeyPair, kb: &KeyPair) {
    let (ea, eb) = (format!("{UNDER_A}:51820"), format!("{UNDER_B}:51820"));
    let (fa, fb) = (key_file(dir, &ka.private), key_file(dir, &kb.private));
    wg_set(&p.a, &p.if_a, &fa, 51820, kb, TUN_B, &eb);
    wg_set(&p.b, &p.if_b, &fb, 51820, ka, TUN_A, &ea);
}

fn wg_set(
    ns: &Netns,
    ifname: &str,
    key: &str,
    port: u16,
    peer: &KeyPair,
    peer_tun: &str,
    peer_ep: &str,
) {
    in_ns(
        &ns.0,
        &[
            "wg",
            "set",
            ifname,
            "private-key",
            key,
            "listen-port",
            &port.to_string(),
            "peer",
            &peer.public.to_base64(),
            "allowed-ips",
            &format!("{peer_tun}/32"),
            "endpoint",
            peer_ep,
        ],
    );
}

fn ping(ns: &Netns, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "ping", "-c", "3", "-i", "0.2", "-W", "2", to,
        ])
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Moves 16 MB over TCP from `client` to `server_addr` in `server`.
fn tcp_transfer(server: &Netns, client: &Netns, server_addr: &str) {
    let port = 5201 + (std::process::id() % 1000) as u16;
    let _srv = Kid(Command::new("ip")
        .args([
            "netns",
            "exec",
            &server.0,
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    let mut last = String::new();
    for _ in 0..50 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &client.0,
                "iperf3",
                "-c",
                server_addr,
                "-p",
                &port.to_string(),
                "-n",
                "16M",
                "-J",
            ])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        // iperf3 -J may exit 0 with an "error" (e.g. the server not yet up).
        if out.status.success() && !s.contains("\"error\"") {
            assert!(s.contains("16777216"), "{s}");
            return;
        }
        last = s.into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("iperf3 never succeeded: {last}");
}

#[test]
fn two_muslin_devices_configured_with_wg() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let p = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let _da = Daemon::start(&p.a, &p.if_a);
    let _db = Daemon::start(&p.b, &p.if_b);
    wg_set_both(&p, &dir, &ka, &kb);
    p.address_tunnels();
    if !ping(&p.a, TUN_B) {
        eprintln!("{}", in_ns(&p.a.0, &["wg", "show"]));
        eprintln!("{}", in_ns(&p.a.0, &["ip", "-s", "link"]));
        eprintln!("{}", in_ns(&p.b.0, &["ip", "-s", "link"]));
        panic!("ping through the tunnel");
    }
    tcp_transfer(&p.b, &p.a, TUN_B);
    tcp_transfer(&p.a, &p.b, TUN_A);
    let show = in_ns(&p.a.0, &["wg", "show", &p.if_a]);
    assert!(show.contains(&kb.public.to_base64()), "{show}");
    assert!(show.contains("latest handshake"), "{show}");
}

#[test]
fn interop_with_wireguard_go() {
    let p = Pair::new();
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let _da = Daemon::start(&p.a, &p.if_a);
    let _go = Kid(Command::new("ip")
        .args(["netns", "exec", &p.b.0, "wireguard-go", "-f", &p.if_b])
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap());
    wait_for(
        || uapi_socket_path(&p.if_b).exists(),
        "wireguard-go's socket",
    );
    wg_set_both(&p, &dir, &ka, &kb);
    p.address_tunnels();
    assert!(ping(&p.a, TUN_B), "ping from ours to wireguard-go");
    assert!(ping(&p.b, TUN_A), "ping from wireguard-go to ours");
    tcp_transfer(&p.b, &p.a, TUN_B);
    tcp_transfer(&p.a, &p.b, TUN_A);
    let show = in_ns(&p.b.0, &["wg", "show", &p.if_b]);
    assert!(show.contains("latest handshake"), "{show}");
    let _ = std::fs::remove_file(uapi_socket_path(&p.if_b));
}

fn spec(k: &KeyPair, ep: &str, tun: &str) -> PeerSpec {
    PeerSpec {
        public_key: k.public,
        endpoint: ep.parse::<SocketAddr>().unwrap(),
        allowed_ips: vec![format!("{tun}/32").parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn start_api(
    rt: &tokio::runtime::Runtime,
    ifname: &str,
    key: &PrivateKey,
    port: u16,
) -> UserspaceDevice {
    let mut c = DeviceConfig::new(ifname, key.clone());
    c.listen_port = port;
    c.persistent = false;
    on(rt, async move { UserspaceDevice::start(c).await.unwrap() })
}

#[test]
fn set_peers_is_idempotent_and_key_rotation_recovers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let p = Pair::new();
    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let (rta, rtb) = (p.a.runtime(), p.b.runtime());
    let da = std::sync::Arc::new(start_api(&rta, &p.if_a, &ka.private, 51820));
    let db = std::sync::Arc::new(start_api(&rtb, &p.if_b, &kb.private, 51820));
    p.address_tunnels();
    let to_b = vec![spec(&kb, &format!("{UNDER_B}:51820"), TUN_B)];
    let to_a = vec![spec(&ka, &format!("{UNDER_A}:51820"), TUN_A)];
    let (d, l) = (da.clone(), to_b.clone());
    assert_eq!(
        on(&rta, async move { d.set_peers(&l).await.unwrap() })
            .add
            .len(),
        1
    );
    let (d, l) = (db.clone(), to_a.clone());
    on(&rtb, async move { d.set_peers(&l).await.unwrap() });
    assert!(ping(&p.a, TUN_B));

    let d = da.clone();
    let before = on(&rta, async move { d.peers_status().await });
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].public_key, kb.public);
    let hs = before[0].last_handshake.expect("handshake done");
    assert!(
        before[0].tx_bytes > 0 && before[0].rx_bytes > 0,
        "{before:?}"
    );

    // Same list again: nothing changes, the session stays.
    let (d, l) = (da.clone(), to_b.clone());
    assert!(on(&rta, async move { d.set_peers(&l).await.unwrap() }).is_empty());
    assert!(ping(&p.a, TUN_B));
    let d = da.clone();
    let after = on(&rta, async move { d.peers_status().await });
    let hs2 = after[0].last_handshake.unwrap();
    let drift = hs2.duration_since(hs).unwrap_or_else(|e| e.duration());
    // last_handshake is derived from "time since", so allow clock jitter,
    // but a new handshake would move it by the seconds the pings took.
    assert!(
        drift < Duration::from_millis(300),
        "new handshake: {hs:?} -> {hs2:?}"
    );
    assert!(after[0].rx_bytes > before[0].rx_bytes);

    // Rotate A's key; once B knows the new public key, traffic flows again.
    let ka2 = KeyPair::generate().unwrap();
    let (d, k) = (da.clone(), ka2.private.clone());
    on(&rta, async move { d.set_private_key(&k).await.unwrap() });
    let to_a2 = vec![spec(&ka2, &format!("{UNDER_A}:51820"), TUN_A)];
    let (d, l) = (db.clone(), to_a2);
    let diff = on(&rtb, async move { d.set_peers(&l).await.unwrap() });
    assert_eq!((diff.add.len(), diff.remove.len()), (1, 1));
    let d = da.clone();
    assert_eq!(
        on(&rta, async move { d.peers_status().await }).len(),
        1,
        "peers kept"
    );
    assert!(ping(&p.a, TUN_B), "traffic after key rotation");
    assert!(ping(&p.b, TUN_A), "traffic after key rotation, other way");

    for (rt, d) in [(rta, da), (rtb, db)] {
        let d = std::sync::Arc::try_unwrap(d).ok().unwrap();
        on(&rt, async move { d.stop().await });
    }
}

#[test]
fn persistent_interface_survives_the_process_and_is_reattached() {
    let p = Pair::new();
    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let (rta, rtb) = (p.a.runtime(), p.b.runtime());
    let mut ca = DeviceConfig::new(&p.if_a, ka.private.clone());
    ca.listen_port = 51820;
    ca.uapi = None;
    let da = on(&rta, {
        let ca = ca.clone();
        async move { UserspaceDevice::start(ca).await.unwrap() }
    });
    let db = start_api(&rtb, &p.if_b, &kb.private, 51820);
    p.address_tunnels();
    // A route the agent would own, through the tunnel.
    in_ns(
        &p.a.0,
        &["ip", "route", "add", "10.99.0.0/16", "dev", &p.if_a],
    );
    let to_b = vec![spec(&kb, &format!("{UNDER_B}:51820"), TUN_B)];
    let l = to_b.clone();
    let da = on(&rta, async move {
        da.set_peers(&l).await.unwrap();
        da
    });
    let db = on(&rtb, async move {
        db.set_peers(&[spec(&ka, &format!("{UNDER_A}:51820"), TUN_A)])
            .await
            .unwrap();
        db
    });
    assert!(ping(&p.a, TUN_B));

    // The process "dies": the device stops without removing anything.
    on(&rta, async move { da.stop().await });
    drop(rta);
    let routes = in_ns(&p.a.0, &["ip", "route", "show", "dev", &p.if_a]);
    assert!(routes.contains("10.99.0.0/16"), "route kept: {routes}");

    // A new process reattaches, with offloads, and traffic resumes.
    let rta = p.a.runtime();
    let da = on(
        &rta,
        async move { UserspaceDevice::start(ca).await.unwrap() },
    );
    assert!(da.offloaded());
    let da = on(&rta, async move {
        da.set_peers(&to_b).await.unwrap();
        da
    });
    assert!(ping(&p.a, TUN_B), "traffic after reattaching");
    let routes = in_ns(&p.a.0, &["ip", "route", "show", "dev", &p.if_a]);
    assert!(
        routes.contains("10.99.0.0/16"),
        "route still there: {routes}"
    );

    let ifname = p.if_a.clone();
    on(&rta, async move {
        da.stop().await;
        UserspaceDevice::remove(&ifname).await.unwrap();
    });
    let links = in_ns(&p.a.0, &["ip", "-o", "link"]);
    assert!(!links.contains(&p.if_a), "removed: {links}");
    on(&rtb, async move { db.stop().await });
}
