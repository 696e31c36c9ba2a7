//! Link-time layout of the release binary.
//!
//! Every agent maps most of the binary: the kernel maps 64 kB around each
//! page it faults in, and the code an agent runs is spread over nearly all
//! of `.text`. `hot-code.order` lists the functions an agent runs (from
//! start through idle, collected by `scripts/hot-code-order.sh`); the
//! linker puts them first, together, so an agent's resident code is about
//! their size rather than the whole binary's.
//!
//! Stripping is done here rather than by the profile's `strip`, since
//! cargo hashes the profile into every symbol name and the order file must
//! name the symbols of the build it lays out.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn set(var: &str) -> bool {
    env::var(var).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn main() {
    for var in [
        "MUSLIN_KEEP_SYMBOLS",
        "MUSLIN_NO_CODE_ORDER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let order =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo")).join("hot-code.order");
    // Watching a file that does not exist would rerun this (and the whole
    // LTO link) on every build.
    if order.exists() {
        println!("cargo:rerun-if-changed=hot-code.order");
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
    if env::var("PROFILE").as_deref() != Ok("release")
        || env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux")
    {
        return;
    }
    // A release build asked for debug info (a profiling build) keeps it.
    if !set("MUSLIN_KEEP_SYMBOLS") && env::var("DEBUG").as_deref() == Ok("false") {
        println!("cargo:rustc-link-arg-bins=-Wl,--strip-all");
    }
    if order.exists() && !set("MUSLIN_NO_CODE_ORDER") {
        if links_with_order_file() {
            // Separate arguments: `-Wl,` would split a path at its commas.
            println!("cargo:rustc-link-arg-bins=-Xlinker");
            println!(
                "cargo:rustc-link-arg-bins=--symbol-ordering-file={}",
                order.display()
            );
            // lld warns of each symbol the file names and the build lacks
            // (renamed since the file was made); a stale order only costs
            // resident memory, and the warnings would bury real ones.
            println!("cargo:rustc-link-arg-bins=-Xlinker");
            println!("cargo:rustc-link-arg-bins=--no-warn-symbol-ordering");
        } else {
            println!(
                "cargo:warning=this linker does not take --symbol-ordering-file (lld does): \
                 the agent's code is linked in plain order and its resident memory is larger"
            );
        }
    }
}

/// Whether the linker this build uses takes an order file: rustup's rustc
/// links x86_64 Linux with its own lld since 1.90, but an older or a
/// distribution's rustc, or `-fuse-ld=mold` or `bfd`, links with one that
/// refuses it. Tried on an empty program with the build's own flags.
fn links_with_order_file() -> bool {
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let src = out.join("order_probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return false;
    }
    let empty = out.join("order_probe.order");
    if std::fs::write(&empty, "").is_err() {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let mut cmd = Command::new(rustc);
    cmd.arg(&src)
        .arg("-o")
        .arg(out.join("order_probe"))
        .args(["--target", &env::var("TARGET").expect("set by cargo")])
        .args(["-C", "link-arg=-Xlinker"])
        .arg("-C")
        .arg(format!(
            "link-arg=--symbol-ordering-file={}",
            Path::new(&empty).display()
        ));
    if let Ok(linker) = env::var("RUSTC_LINKER") {
        cmd.arg("-C").arg(format!("linker={linker}"));
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    cmd.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
