//! Reads the host's firewalls and applies what
//! `muslin_model::host_firewall` decides: our tagged accept rules in every
//! forward chain that would drop pod traffic, each written with the tool
//! that manages its chain. When nothing is missing it only reads, so the
//! agent can re-assert the rules every few seconds without touching the
//! host's rules or their counters.

use muslin_model::host_firewall::{
    self as model, Action, Backend, Family, IptablesForward, Observed, IPTABLES_CHAIN,
    XTABLES_LOCK_WAIT,
};
use serde_json::{json, Value};

/// Errors say which command failed on what, in the words of the tool.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The tool ran and refused or failed.
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("reading nft's ruleset: {0}")]
    Ruleset(String),
    /// Several independent changes failed; each was still attempted.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Several(Vec<FirewallError>),
}

fn kernel(e: FirewallError) -> crate::KernelError {
    crate::KernelError::Io {
        what: e.to_string(),
        source: std::io::ErrorKind::Other.into(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FirewallError> + Send + 'static,
) -> Result<T, crate::KernelError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| crate::KernelError::Io {
            what: "firewall task".into(),
            source: std::io::Error::other(e),
        })?
        .map_err(kernel)
}

pub(super) async fn observe() -> Result<Observed, crate::KernelError> {
    blocking(observe_now).await
}

/// The legacy iptables FORWARD chains, as saved: nftables' generation does
/// not cover them, so a change there shows only here. Empty when no legacy
/// table exists (and then nothing is run).
pub(super) async fn observe_legacy() -> Result<Vec<String>, crate::KernelError> {
    blocking(|| {
        let mut out = Vec::new();
        for family in [Family::Ip, Family::Ip6] {
            if legacy_filter_exists(family) {
                out.push(iptables_forward(Backend::IptablesLegacy, family)?.save);
            }
        }
        Ok(out)
    })
    .await
}

pub(super) async fn apply_one(a: Action) -> Result<(), crate::KernelError> {
    blocking(move || apply(std::slice::from_ref(&a))).await
}

/// The host's firewalls as the model reads them: the nft ruleset, and the
/// FORWARD chain of every iptables variant in use. The legacy tables are
/// read only when they already exist: running iptables-legacy would
/// otherwise load the legacy kernel module and create them.
pub fn observe_now() -> Result<Observed, FirewallError> {
    let nft = nft_ruleset()?;
    let mut iptables = Vec::new();
    for family in model::iptables_nft_families(&nft).map_err(parse_error)? {
        iptables.extend(iptables_nft_forward(family));
    }
    for family in [Family::Ip, Family::Ip6] {
        if legacy_filter_exists(family) {
            iptables.push(iptables_forward(Backend::IptablesLegacy, family)?);
        }
    }
    Ok(Observed { nft, iptables })
}

/// Carries out `actions`: native nft changes in one transaction, iptables
/// ones a command each. A failure does not stop the others.
fn apply(actions: &[Action]) -> Result<(), FirewallError> {
    let mut failures = Vec::new();
    let nft: Vec<Value> = actions.iter().filter_map(Action::nft_command).collect();
    if !nft.is_empty() {
        let script = json!({ "nftables": nft }).to_string();
        failures.extend(run("nft", &["-j", "-f", "-"], Some(&script)).err());
    }
    for (program, args) in actions.iter().filter_map(Action::iptables_command) {
        failures.extend(run(program, &args, None).err());
    }
    match failures.len() {
        0 => Ok(()),
        1 => Err(failures.remove(0)),
        _ => Err(FirewallError::Several(failures)),
    }
}

fn nft_ruleset() -> Result<Value, FirewallError> {
    // Terse: the host's sets may hold many thousands of elements, and no
    // decision here looks into a named set.
    let args = ["-j", "-t", "list", "ruleset"];
    let out = run("nft", &args, None)?;
    serde_json::from_str(&out).map_err(|e| FirewallError::Ruleset(format!("not JSON: {e}")))
}

/// The FORWARD chain through iptables-nft. `None` when iptables-nft cannot
/// read it (not installed, or a table that nft users built by hand with
/// iptables' names): the model then treats it as a chain of nft's own.
fn iptables_nft_forward(family: Family) -> Option<IptablesForward> {
    iptables_forward(Backend::IptablesNft, family)
        .inspect_err(|e| tracing::debug!(cause = %e, "iptables-nft cannot read its FORWARD chain; handling it with nft"))
        .ok()
}

fn iptables_forward(backend: Backend, family: Family) -> Result<IptablesForward, FirewallError> {
    let program = model::iptables_program(backend, family).expect("an iptables backend");
    let save = run(
        program,
        &["-w", XTABLES_LOCK_WAIT, "-S", IPTABLES_CHAIN],
        None,
    )?;
    Ok(IptablesForward {
        backend,
        family,
        save,
    })
}

/// Whether the legacy `filter` table exists in this thread's network
/// namespace (`thread-self`, not `self`: a thread may have entered
/// another namespace than the process's main thread).
fn legacy_filter_exists(family: Family) -> bool {
    let names = match family {
        Family::Ip6 => "ip6_tables_names",
        _ => "ip_tables_names",
    };
    std::fs::read_to_string(format!("/proc/thread-self/net/{names}"))
        .is_ok_and(|t| t.lines().any(|l| l.trim() == "filter"))
}

/// Runs `program` and returns its standard output; a non-zero exit is an
/// error carrying its standard error.
fn run(
    program: &str,
    args: &[impl AsRef<str>],
    stdin: Option<&str>,
) -> Result<String, FirewallError> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let command = format!("{program} {}", args.join(" "));
    let writes = args.iter().any(|a| matches!(*a, "-f" | "-I" | "-D"));
    let out = super::process::run(program, &args, stdin)
        .map_err(|(what, source)| FirewallError::Io { what, source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = match stderr.trim() {
            "" => out.status.to_string(),
            s => s.to_string(),
        };
        return Err(FirewallError::Command { command, detail });
    }
    if writes {
        super::counters::tool_write();
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn parse_error(e: model::ParseError) -> FirewallError {
    FirewallError::Ruleset(e.to_string())
}
