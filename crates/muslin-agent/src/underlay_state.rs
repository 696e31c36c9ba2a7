//! The underlay choice of the previous run, kept in the state directory: a
//! restart (an upgrade, a crash, a reboot during a partition) must not wait
//! for join peers that may be unreachable before it serves its pods. The
//! kept choice is used when it is still an address of the same interface;
//! peers' probes then confirm it or move it, as for any choice.

use std::path::Path;

use muslin_model::underlay::{Candidate, Choice};
use serde::{Deserialize, Serialize};

const FILE: &str = "underlay.json";

/// The choice and what it was made for: a changed node name, method or
/// join list makes it void.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    pub node: String,
    pub method: String,
    pub join: Vec<String>,
    pub choice: Choice,
}

/// The kept choice, if it was made for `basis` and still names an address
/// on that interface.
pub fn load(dir: &Path, basis: &Kept, cands: &[Candidate]) -> Option<Choice> {
    let bytes = std::fs::read(dir.join(FILE)).ok()?;
    let kept: Kept = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(cause = %e, "ignoring an unreadable {FILE}; choosing the underlay afresh");
            return None;
        }
    };
    if (&kept.node, &kept.method, &kept.join) != (&basis.node, &basis.method, &basis.join) {
        tracing::info!(
            "the node name, underlay method or join list changed: choosing the underlay afresh"
        );
        return None;
    }
    let kept = kept.choice;
    let c = cands.iter().find(|c| c.ifname == kept.ifname && c.up)?;
    c.addresses.contains(&kept.address).then(|| Choice {
        mtu: c.mtu,
        reason: format!("kept from the previous run ({})", kept.reason),
        ..kept
    })
}

/// Keeps `choice` for the next run.
pub fn save(dir: &Path, basis: &Kept, choice: &Choice) {
    let kept = Kept {
        choice: choice.clone(),
        ..basis.clone()
    };
    let res = std::fs::create_dir_all(dir).and_then(|()| {
        crate::atomic_file::write(
            &dir.join(FILE),
            &serde_json::to_vec(&kept).expect("serializes"),
        )
    });
    if let Err(e) = res {
        tracing::warn!(cause = %e, "could not keep the underlay choice; a restart chooses afresh");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_choice_is_used_only_for_the_same_node_method_and_address() {
        let dir = std::env::temp_dir().join(format!("muslin-underlay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let eth1 = |addr: &str| Candidate {
            ifname: "eth1".into(),
            kind: None,
            up: true,
            mtu: 1400,
            addresses: vec![addr.parse().unwrap()],
        };
        let basis = Kept {
            node: "h1".into(),
            method: "reachability".into(),
            join: vec!["192.168.56.12".into()],
            choice: Choice {
                ifname: String::new(),
                address: "0.0.0.0/0".parse().unwrap(),
                mtu: 0,
                reason: String::new(),
            },
        };
        let here = [eth1("192.168.56.11/24")];
        assert!(load(&dir, &basis, &here).is_none(), "nothing kept yet");
        let choice = Choice {
            ifname: "eth1".into(),
            address: "192.168.56.11/24".parse().unwrap(),
            mtu: 1500,
            reason: "reaches join peer 192.168.56.12".into(),
        };
        save(&dir, &basis, &choice);
        let c = load(&dir, &basis, &here).unwrap();
        assert_eq!(
            (c.ifname.as_str(), c.mtu),
            ("eth1", 1400),
            "MTU read afresh"
        );
        assert!(
            c.reason.contains("kept from the previous run"),
            "{}",
            c.reason
        );
        assert!(
            load(&dir, &basis, &[eth1("192.168.56.99/24")]).is_none(),
            "renumbered"
        );
        let moved = Kept {
            join: vec!["192.168.56.13".into()],
            ..basis.clone()
        };
        assert!(load(&dir, &moved, &here).is_none(), "another join list");
        let renamed = Kept {
            node: "h9".into(),
            ..basis.clone()
        };
        assert!(load(&dir, &renamed, &here).is_none(), "another node name");
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert!(load(&dir, &basis, &here).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
