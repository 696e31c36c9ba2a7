//! Running the kernel's command-line tools (`nft`, the iptables family):
//! arguments and optional standard input in, the whole output back. Each
//! `nft` run is counted, reads included.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs `program`; the error says which step failed (start, feed, wait).
pub(super) fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, (String, std::io::Error)> {
    if program == "nft" {
        super::counters::nft_run();
    }
    // Errors are matched by their text ("No such file or directory"):
    // untranslated, whatever the service's locale.
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (format!("running {program} (is it installed?)"), e))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .map_err(|e| (format!("feeding {program}"), e))?;
    }
    child
        .wait_with_output()
        .map_err(|e| (format!("running {program}"), e))
}
