use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{parse_cni_args, CniError, ErrorCode};
use crate::naming::invalid_ifname_reason;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: BTreeMap<String, String>,
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidEnvironment, msg)
}

/// Upper bounds on the variables a runtime hands over, checked before
/// anything else reads them: no sane runtime comes near them, and a value
/// beyond them is a bug upstream that must fail as invalid input (code 4),
/// not travel to the agent or be echoed in full in an error message.
pub const ENV_LIMITS: [(&str, usize); 4] = [
    ("CNI_CONTAINERID", CONTAINER_ID_MAX),
    // PATH_MAX.
    ("CNI_NETNS", 4096),
    ("CNI_IFNAME", IFNAME_INPUT_MAX),
    ("CNI_ARGS", 64 * 1024),
];

/// Runtimes use 64 hex digits; the spec sets no limit, so leave room.
pub(super) const CONTAINER_ID_MAX: usize = 1024;
/// Generous: the kernel's 15-byte limit is checked where the name is used,
/// and commands that ignore the name (VERSION) must not fail on it.
pub(super) const IFNAME_INPUT_MAX: usize = 255;

fn check_sizes(get: &impl Fn(&str) -> Option<String>) -> Result<(), CniError> {
    for (var, limit) in ENV_LIMITS {
        if let Some(len) = get(var).map(|v| v.len()).filter(|n| *n > limit) {
            return Err(invalid(format!(
                "{var} is {len} bytes long; at most {limit} are accepted"
            )));
        }
    }
    Ok(())
}

/// The spec's container ID grammar: an alphanumeric, then alphanumerics,
/// `_`, `.` or `-`.
fn check_container_id(id: &str) -> Result<(), CniError> {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(invalid(format!(
            "CNI_CONTAINERID {id:?} is invalid: it must start with a letter or digit, \
             followed by letters, digits, '_', '.' or '-'"
        )))
    }
}

impl Env {
    /// Reads and validates the environment through `get` (so tests need not
    /// touch the process environment).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        check_sizes(&get)?;
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let raw =
            nonempty("CNI_COMMAND").ok_or_else(|| invalid("CNI_COMMAND is not set".into()))?;
        let command = Command::parse(&raw).ok_or_else(|| {
            invalid(format!(
                "CNI_COMMAND {raw:?} is unknown; expected ADD, DEL, CHECK, VERSION, STATUS or GC"
            ))
        })?;
        let attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let required = |k: &str| -> Result<Option<String>, CniError> {
            match nonempty(k) {
                Some(v) => Ok(Some(v)),
                None if attachment => Err(invalid(format!("{k} is required for {raw}"))),
                None => Ok(None),
            }
        };
        let container_id = required("CNI_CONTAINERID")?;
        if let (true, Some(id)) = (attachment, &container_id) {
            check_container_id(id)?;
        }
        let ifname = required("CNI_IFNAME")?;
        if let (true, Some(name)) = (attachment, &ifname) {
            if let Some(why) = invalid_ifname_reason(name) {
                return Err(invalid(format!("CNI_IFNAME {name:?} {why}")));
            }
        }
        // DEL must work after the namespace is gone, so it may come without one.
        let netns = match command {
            Command::Add | Command::Check => required("CNI_NETNS")?,
            _ => nonempty("CNI_NETNS"),
        }
        .map(PathBuf::from);
        let args = if attachment {
            parse_cni_args(&get("CNI_ARGS").unwrap_or_default())?
        } else {
            BTreeMap::new()
        };
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| map.get(k).cloned())
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc123"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
    ];

    #[test]
    fn full_add_env() {
        let mut pairs = ADD.to_vec();
        pairs.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=p"));
        let e = env(&pairs).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.ifname.as_deref(), Some("eth0"));
        assert_eq!(e.args["K8S_POD_NAME"], "p");
    }

    #[test]
    fn each_missing_variable_is_named() {
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, 4);
            assert!(e.msg.contains(missing), "{}", e.msg);
        }
        let e = env(&[]).unwrap_err();
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(e.code, 4);
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert!(e.netns.is_none());
    }

    #[test]
    fn bad_values() {
        let mut pairs = ADD.to_vec();
        pairs[3] = ("CNI_IFNAME", "averyveryverylongname");
        let e = env(&pairs).unwrap_err();
        assert!(
            e.msg.contains("CNI_IFNAME") && e.msg.contains("15"),
            "{}",
            e.msg
        );
        let mut pairs = ADD.to_vec();
        pairs[1] = ("CNI_CONTAINERID", "-bad");
        assert!(env(&pairs).unwrap_err().msg.contains("CNI_CONTAINERID"));
    }

    #[test]
    fn over_long_values_are_refused_naming_the_variable_and_limit() {
        for (var, limit) in ENV_LIMITS {
            let long = "a".repeat(limit + 1);
            let mut pairs = ADD.to_vec();
            pairs.retain(|(k, _)| *k != var);
            pairs.push((var, &long));
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, 4, "{var}");
            assert!(
                e.msg.contains(var) && e.msg.contains(&limit.to_string()),
                "{}",
                e.msg
            );
            assert!(e.msg.len() < 200, "the value is not echoed: {}", e.msg);
        }
        // At the limit is fine (the container ID grammar allows all 'a's).
        let id = "a".repeat(1024);
        let mut pairs = ADD.to_vec();
        pairs[1] = ("CNI_CONTAINERID", &id);
        env(&pairs).unwrap();
    }

    #[test]
    fn version_status_gc_need_nothing() {
        for c in ["VERSION", "STATUS", "GC"] {
            env(&[("CNI_COMMAND", c)]).unwrap();
        }
        // Runtimes probe VERSION with a dummy namespace: accepted and ignored.
        env(&[("CNI_COMMAND", "VERSION"), ("CNI_NETNS", "dummy")]).unwrap();
    }
}
