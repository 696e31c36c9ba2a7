//! The one way the agent replaces a state file: a crash at any instant
//! leaves either the old contents or the new, never half of either.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it
/// over `path` and syncs the directory (without which the rename itself
/// may be lost on power failure). State files are the agent's alone: 0600.
/// Two fsyncs can take tens of milliseconds: on the agent's runtime the
/// calling worker hands its other tasks to another thread meanwhile.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, |w| w.write_all(bytes))
}

/// [`write`] of what `fill` writes, streamed to the file: a large state
/// needs no buffer of its whole size.
pub fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| write_now_with(path, fill))
        }
        _ => write_now_with(path, fill),
    }
}

/// [`write_with`] on the calling thread, whatever it is.
pub fn write_now_with(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{path:?} names no file")))?
        .to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut w = std::io::BufWriter::new(f);
    let replaced = fill(&mut w)
        .and_then(|()| w.flush())
        .and_then(|()| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = replaced {
        // The old file stands: no half-written one lies beside it.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_and_leaves_no_temporary() {
        // Removed when dropped, also when an assertion fails.
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let f = d.join("state.json");
        write(&f, b"first").unwrap();
        write(&f, b"second").unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        let mode = std::fs::metadata(&f).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_failed_fill_keeps_the_old_file_and_no_temporary() {
        // Removed when dropped, also when an assertion fails.
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        let f = d.join("state.json");
        write(&f, b"old").unwrap();
        let err = write_now_with(&f, |w| {
            w.write_all(b"half")?;
            Err(std::io::Error::other("cannot serialize"))
        });
        assert!(err.is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 1);
        write_with(&f, |w| w.write_all(b"streamed")).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"streamed");
    }
}
