//! The agent's node logic in-process, on a recording fake executor: what
//! ADD, DEL, a failed ADD and a restart ask of the kernel, step by step,
//! with no root and no namespaces. The same requests travel the real
//! socket and the real server; only the kernel is simulated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use muslin_kernel::executor::fake::FakeKernel;
use muslin_kernel::Executor;
use muslin_model::agent_config::AgentConfig;
use muslin_model::api::{AddRequest, DelRequest, Request, Response};
use muslin_model::ipam::AttachmentKey;
use muslin_plan::object::Ns;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

struct Running {
    socket: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    done: tokio::task::JoinHandle<Result<(), muslin_agent::AgentError>>,
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("muslin-inproc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn start(state: &Path, executor: Executor) -> Running {
    let c = AgentConfig {
        node_name: Some("h1".into()),
        socket: state.join("agent.sock"),
        state_dir: state.join("state"),
        blocks: vec!["10.99.1.0/24".parse().unwrap()],
        ..Default::default()
    };
    let socket = c.socket.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(muslin_agent::run_with(
        c,
        muslin_agent::Parts {
            executor: Some(executor),
            listener: None,
        },
        async move {
            let _ = stopped.await;
        },
    ));
    for _ in 0..200 {
        if tokio::net::UnixStream::connect(&socket).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Running { socket, stop, done }
}

impl Running {
    async fn call(&self, req: &Request) -> Response {
        let s = tokio::net::UnixStream::connect(&self.socket).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut line = serde_json::to_vec(req).unwrap();
        line.push(b'\n');
        w.write_all(&line).await.unwrap();
        let mut lines = BufReader::new(r).lines();
        let first = lines.next_line().await.unwrap().unwrap();
        if first.contains("accepted") {
            serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap()
        } else {
            serde_json::from_str(&first).unwrap()
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.done.await.unwrap().unwrap();
    }
}

fn key(c: &str) -> AttachmentKey {
    AttachmentKey {
        network: "muslin".into(),
        container_id: c.into(),
        ifname: "eth0".into(),
    }
}

fn add(c: &str, netns: &str) -> Request {
    Request::Add(AddRequest {
        key: key(c),
        netns: netns.into(),
        mtu: Some(1400),
        pod: None,
        pod_namespace: None,
        pod_name: None,
        labels: Default::default(),
        ports: Default::default(),
        aliases: Vec::new(),
        name: None,
        network: None,
    })
}

/// Steps that touch attachments (the agent also sets ip_forward at start).
fn attachment_steps(k: &FakeKernel) -> Vec<String> {
    k.take_log()
        .into_iter()
        .filter(|s| !s.contains("sysctl"))
        .collect()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..300 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_del_and_restart_ask_the_kernel_for_exactly_their_changes() {
    let d = dir("cycle");
    let (ex, k) = Executor::fake();
    let a = start(&d, ex).await;
    let Response::Added(added) = a.call(&add("c1", "/var/run/netns/c1")).await else {
        panic!("ADD failed")
    };
    assert_eq!(added.addresses[0].to_string(), "10.99.1.1/32");
    let host_if = added.host_ifname.clone();
    let steps = attachment_steps(&k);
    let expected_prefix = [
        format!("[host] link del {host_if}"),
        format!("[host] link add {host_if} type veth peer name eth0"),
    ];
    for (i, want) in expected_prefix.iter().enumerate() {
        assert!(
            steps[i].starts_with(want),
            "step {i}: {} (all: {steps:#?})",
            steps[i]
        );
    }
    assert!(
        steps.contains(&"[netns /var/run/netns/c1] addr add 10.99.1.1/32 dev eth0".to_string()),
        "{steps:#?}"
    );
    assert_eq!(
        steps.last().unwrap(),
        &format!("[host] route replace 10.99.1.1/32 dev {host_if} scope link proto 77 table 254")
    );
    let host = k.state(&Ns::Host);
    assert!(host.link(&host_if).is_some_and(|l| l.up));
    let c = k.state(&Ns::Container("/var/run/netns/c1".into()));
    assert!(c.routes.iter().any(|r| r.dst.prefix_len() == 0), "{c:?}");

    // A second ADD of the same attachment whose kernel side is complete
    // changes nothing.
    let Response::Added(again) = a.call(&add("c1", "/var/run/netns/c1")).await else {
        panic!("retried ADD failed")
    };
    assert_eq!(again.addresses, added.addresses);
    assert_eq!(attachment_steps(&k), Vec::<String>::new());

    // A restart on the same kernel: no change at all.
    a.stop().await;
    let (ex2, k2) = Executor::fake();
    *k2.world.lock().unwrap() = k.world.lock().unwrap().clone();
    let b = start(&d, ex2).await;
    let Response::Status(s) = b.call(&Request::Status).await else {
        panic!("no status")
    };
    assert_eq!(s.endpoints.len(), 1, "the record survived the restart");
    assert_eq!(
        attachment_steps(&k2),
        Vec::<String>::new(),
        "a restart disrupts nothing"
    );

    // DEL: the record goes, then the veth.
    let r = b
        .call(&Request::Del(DelRequest {
            key: key("c1"),
            netns: None,
        }))
        .await;
    assert!(matches!(r, Response::Done), "{r:?}");
    until("the veth to go", || {
        !k2.state(&Ns::Host).links.iter().any(|l| l.name == host_if)
    })
    .await;
    assert_eq!(
        attachment_steps(&k2),
        vec![format!("[host] link del {host_if}")]
    );
    b.stop().await;
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_add_rolls_back_and_records_nothing() {
    let d = dir("rollback");
    let (ex, k) = Executor::fake();
    let a = start(&d, ex).await;
    *k.fail_on.lock().unwrap() = Some("route replace 0.0.0.0/0".into());
    let r = a.call(&add("c2", "/var/run/netns/c2")).await;
    let Response::Error(e) = r else {
        panic!("ADD should fail: {r:?}")
    };
    assert_eq!(e.code, muslin_model::cni::ErrorCode::Kernel as u32, "{e:?}");
    let steps = attachment_steps(&k);
    assert!(
        steps.last().unwrap().contains("link del"),
        "rolled back: {steps:#?}"
    );
    assert!(k.state(&Ns::Host).links.is_empty());
    let Response::Status(s) = a.call(&Request::Status).await else {
        panic!()
    };
    assert!(s.endpoints.is_empty(), "nothing recorded");

    // A namespace that does not exist costs nothing at all.
    *k.fail_on.lock().unwrap() = None;
    let r = a.call(&add("c3", "/var/run/netns/missing")).await;
    assert!(matches!(r, Response::Error(_)), "{r:?}");
    assert_eq!(attachment_steps(&k), Vec::<String>::new());
    a.stop().await;
    let _ = std::fs::remove_dir_all(&d);
}
