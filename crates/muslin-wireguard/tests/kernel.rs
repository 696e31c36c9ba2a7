//! The kernel device against a real kernel, in throwaway network
//! namespaces. Needs root. Tests that need the WireGuard module look for it
//! first and return early, saying so, on kernels without it: they run for
//! real wherever the module is present.

use std::process::Command;
use std::time::Duration;

use muslin_wireguard::{
    kernel_wireguard_available, start_device, AnyDevice, AnyError, DeviceConfig, Implementation,
    KernelDevice, KernelError, KeyPair, PeerSpec, PublicKey,
};

mod common;

use common::{run, Netns};

fn on<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    rt.block_on(rt.spawn(f)).unwrap()
}

/// Whether the module is there, and what the probe found.
fn kernel_wireguard() -> (bool, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let found = rt.block_on(kernel_wireguard_available());
    (found.is_available(), format!("{found:?}"))
}

/// Whether the module is there; if not, says which test is skipped and why.
fn kernel_wireguard_or_skip(test: &str) -> bool {
    let (available, found) = kernel_wireguard();
    if !available {
        eprintln!("{test}: skipped, this kernel has no WireGuard ({found})");
    }
    available
}

fn config(ifname: &str, key: &KeyPair, port: u16) -> DeviceConfig {
    let mut c = DeviceConfig::new(ifname, key.private.clone());
    c.listen_port = port;
    c.uapi = None;
    c
}

fn spec(public: PublicKey, endpoint: &str, tunnel: &str) -> PeerSpec {
    PeerSpec {
        public_key: public,
        endpoint: endpoint.parse().unwrap(),
        allowed_ips: vec![tunnel.parse().unwrap()],
        persistent_keepalive: None,
    }
}

fn ping(ns: &Netns, to: &str) -> bool {
    Command::new("ip")
        .args([
            "netns", "exec", &ns.0, "ping", "-c", "3", "-i", "0.2", "-W", "2", to,
        ])
        .status()
        .unwrap()
        .success()
}

#[test]
fn kernel_devices_ping_across_namespaces() {
    if !kernel_wireguard_or_skip("kernel_devices_ping_across_namespaces") {
        return;
    }
    let (a, b) = (Netns::new("mwk"), Netns::new("mwk"));
    run(&[
        "ip", "link", "add", "va", "netns", &a.0, "type", "veth", "peer", "name", "vb", "netns",
        &b.0,
    ]);
    a.ip(&["addr", "add", "192.168.78.1/24", "dev", "va"]);
    b.ip(&["addr", "add", "192.168.78.2/24", "dev", "vb"]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    let (ka, kb) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let (rta, rtb) = (a.runtime(), b.runtime());

    let (ca, cb) = (config("wgk", &ka, 51820), config("wgk", &kb, 51821));
    let da = on(&rta, KernelDevice::start(ca.clone())).unwrap();
    let db = on(&rtb, KernelDevice::start(cb)).unwrap();
    assert!(a.ip(&["-d", "link", "show", "wgk"]).contains("wireguard"));
    assert!(a.ip(&["link", "show", "wgk"]).contains("mtu 1420"));

    let to_b = vec![spec(kb.public, "192.168.78.2:51821", "10.78.0.2/32")];
    let to_a = vec![spec(ka.public, "192.168.78.1:51820", "10.78.0.1/32")];
    let (da, diff) = on(&rta, {
        let to_b = to_b.clone();
        async move {
            let d = da.set_peers(&to_b).await.unwrap();
            (da, d)
        }
    });
    assert_eq!(diff.add.len(), 1);
    let (db, _) = on(&rtb, async move {
        let d = db.set_peers(&to_a).await.unwrap();
        (db, d)
    });
    a.ip(&["addr", "add", "10.78.0.1/24", "dev", "wgk"]);
    b.ip(&["addr", "add", "10.78.0.2/24", "dev", "wgk"]);
    a.ip(&["link", "set", "wgk", "up"]);
    b.ip(&["link", "set", "wgk", "up"]);

    // A handshake before any traffic, as the agent asks for after a start.
    let (da, status) = on(&rta, async move {
        da.force_handshakes(Duration::from_secs(3)).await;
        let s = da.peers_status().await;
        (da, s)
    });
    assert_eq!(status.len(), 1);
    assert!(
        status[0].last_handshake.is_some(),
        "force_handshakes got a handshake: {status:?}"
    );

    assert!(ping(&a, "10.78.0.2"), "ping through kernel wireguard");
    let (da, status, port, again) = on(&rta, {
        let to_b = to_b.clone();
        async move {
            let s = da.peers_status().await;
            let p = da.listen_port().await;
            let again = da.set_peers(&to_b).await.unwrap();
            (da, s, p, again)
        }
    });
    assert_eq!(port, 51820);
    assert_eq!(status[0].public_key, kb.public);
    assert_eq!(
        status[0].endpoint,
        Some("192.168.78.2:51821".parse().unwrap())
    );
    assert!(
        status[0].rx_bytes > 0 && status[0].tx_bytes > 0,
        "{status:?}"
    );
    assert!(
        again.is_empty(),
        "same peers again changes nothing: {again:?}"
    );

    // A restarted agent takes the link over with its sessions.
    on(&rta, da.stop());
    assert!(a.has_link("wgk"), "stop leaves the link");
    let da = on(&rta, async move {
        let d = KernelDevice::start(ca).await.unwrap();
        d.set_peers(&to_b).await.unwrap();
        d
    });
    assert!(ping(&a, "10.78.0.2"), "ping after taking the link over");

    // Key rotation: b learns a's new key, traffic resumes.
    let ka2 = KeyPair::generate().unwrap();
    let new_private = ka2.private.clone();
    let da = on(&rta, async move {
        d_set_key(&da, &new_private).await;
        da
    });
    let db = on(&rtb, async move {
        db.set_peers(&[spec(ka2.public, "192.168.78.1:51820", "10.78.0.1/32")])
            .await
            .unwrap();
        db
    });
    assert!(ping(&a, "10.78.0.2"), "ping after key rotation");

    on(&rta, async move {
        da.stop().await;
        KernelDevice::remove("wgk").await.unwrap();
        // Absent is fine.
        KernelDevice::remove("wgk").await.unwrap();
    });
    assert!(!a.has_link("wgk"));
    on(&rtb, db.stop());
}

async fn d_set_key(d: &KernelDevice, k: &muslin_wireguard::PrivateKey) {
    d.set_private_key(k).await.unwrap();
}

#[test]
fn kernel_takes_large_peer_lists_in_pieces() {
    if !kernel_wireguard_or_skip("kernel_takes_large_peer_lists_in_pieces") {
        return;
    }
    let ns = Netns::new("mwk");
    let rt = ns.runtime();
    let k = KeyPair::generate().unwrap();
    let peers: Vec<PeerSpec> = (0..300u32)
        .map(|i| PeerSpec {
            public_key: KeyPair::generate().unwrap().public,
            endpoint: format!("192.0.2.{}:{}", i % 250 + 1, 40000 + i)
                .parse()
                .unwrap(),
            allowed_ips: (0..4)
                .map(|j| {
                    format!("10.{}.{}.{}/32", i / 256, i % 256, j)
                        .parse()
                        .unwrap()
                })
                .collect(),
            persistent_keepalive: None,
        })
        .collect();
    let (added, again, removed, left) = on(&rt, async move {
        let d = KernelDevice::start(config("wgbig", &k, 0)).await.unwrap();
        let added = d.set_peers(&peers).await.unwrap().add.len();
        let again = d.set_peers(&peers).await.unwrap();
        let removed = d.set_peers(&peers[..100]).await.unwrap().remove.len();
        let left = d.peers_status().await.len();
        d.stop().await;
        KernelDevice::remove("wgbig").await.unwrap();
        (added, again, removed, left)
    });
    assert_eq!(added, 300);
    assert!(again.is_empty(), "the kernel holds all 300: {again:?}");
    assert_eq!(removed, 200);
    assert_eq!(left, 100);
}

#[test]
fn kernel_device_refuses_a_link_of_another_kind() {
    let ns = Netns::new("mwk");
    ns.ip(&[
        "link", "add", "taken", "type", "veth", "peer", "name", "taken1",
    ]);
    let rt = ns.runtime();
    let k = KeyPair::generate().unwrap();
    let err = on(&rt, async move {
        KernelDevice::start(config("taken", &k, 0))
            .await
            .err()
            .unwrap()
    });
    assert!(
        matches!(&err, KernelError::NotWireguard { kind, .. } if kind == "veth"),
        "{err}"
    );
    assert!(ns.has_link("taken"), "someone else's link is left alone");
}

#[test]
fn kernel_device_fails_cleanly_without_the_module() {
    if kernel_wireguard().0 {
        eprintln!(
            "kernel_device_fails_cleanly_without_the_module: skipped, this kernel has WireGuard"
        );
        return;
    }
    let ns = Netns::new("mwk");
    let rt = ns.runtime();
    let k = KeyPair::generate().unwrap();
    let err = on(&rt, async move {
        KernelDevice::start(config("wgnone", &k, 0))
            .await
            .err()
            .unwrap()
    });
    assert!(err.to_string().contains("creating wireguard link"), "{err}");
    assert!(!ns.has_link("wgnone"));
}

#[test]
fn start_device_honours_the_preference() {
    let (kernel, found) = kernel_wireguard();
    if !kernel {
        eprintln!(
            "start_device_honours_the_preference: this kernel has no WireGuard ({found}); \
             checking the fallback and the refusal instead of the kernel device"
        );
    }
    let ns = Netns::new("mwk");
    let rt = ns.runtime();
    let k = KeyPair::generate().unwrap();
    let (auto, forced, user) = on(&rt, async move {
        let mut out = Vec::new();
        for prefer in [
            Implementation::Auto,
            Implementation::Kernel,
            Implementation::Userspace,
        ] {
            let r = start_device(config("wgany", &k, 0), prefer).await;
            let summary = match r {
                Ok((d, why)) => {
                    let got = d.implementation();
                    assert_eq!(d.ifname(), "wgany");
                    d.stop().await;
                    AnyDevice::remove("wgany").await.unwrap();
                    Ok((got, why))
                }
                Err(e) => Err(e),
            };
            out.push(summary);
        }
        let mut it = out.into_iter();
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    });
    let (got, why) = user.unwrap();
    assert_eq!(got, Implementation::Userspace);
    assert!(why.contains("userspace was asked for"), "{why}");
    if kernel {
        assert_eq!(auto.unwrap().0, Implementation::Kernel);
        assert_eq!(forced.unwrap().0, Implementation::Kernel);
    } else {
        let (got, why) = auto.unwrap();
        assert_eq!(got, Implementation::Userspace);
        assert!(why.contains("no WireGuard"), "{why}");
        let err = forced.err().unwrap();
        assert!(matches!(err, AnyError::KernelUnavailable(_)), "{err}");
    }
    assert!(!ns.has_link("wgany"));
}
