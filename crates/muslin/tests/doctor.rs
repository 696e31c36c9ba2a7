//! `muslin doctor` on hosts built as README's Install section says: each
//! check meets its pitfall, names it and exits non-zero, and the same host
//! without the pitfall reports that check ok.

mod common;

use common::hosts::{level, until, Agent, Net};
use common::Netns;

#[test]
fn a_stopped_agent_is_a_problem_and_a_running_one_is_ok() {
    let net = Net::new();
    let h = [Netns::new("dr")];
    net.as_readme_hosts(&h);
    let mut a = Agent::start(&h[0], "h1", &net.secret(), &[]);
    until("the agent chose its address", 30, || {
        a.status()["cluster"]["underlay_if"] != ""
    });
    let (code, r) = a.doctor();
    assert_eq!(level(&r, "agent"), "ok", "{r:#}");
    assert_eq!(
        level(&r, "underlay"),
        "warning",
        "two NICs, no peer yet: {r:#}"
    );
    let _ = code;
    if let Some(mut c) = a.child.take() {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let (code, r) = a.doctor();
    assert_eq!(level(&r, "agent"), "problem", "{r:#}");
    assert_eq!(code, 1, "{r:#}");
}
