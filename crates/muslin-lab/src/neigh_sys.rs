//! The kernel's neighbour limits and the machine-wide record of what labs
//! need (`neigh` decides; this reads, writes and locks).
//!
//! The record is one file for the whole machine, whatever registry root a
//! lab uses (tests each use their own): the limits it tracks are the
//! kernel's. Every change happens under its lock, record first, kernel
//! second, record again, so a command killed at any point leaves a record
//! the next one settles (`neigh::settle`).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::neigh::{self, Change, Family, Limits, Machine, Need, Record, Step, FAMILIES};
use crate::registry::write_atomic;
use crate::LabError;

const DIR: &str = "/run/muslin";
const RECORD: &str = "lab-neigh.json";
const LOCK: &str = "lab-neigh.lock";

fn sysctl(f: Family, n: usize) -> PathBuf {
    PathBuf::from(format!(
        "/proc/sys/net/{}/neigh/default/gc_thresh{}",
        f.name(),
        n + 1
    ))
}

/// The limits as the kernel has them. They are visible only in the
/// machine's first network namespace: elsewhere this says so. A family
/// the kernel lacks (IPv6 off) reads as unlimited, so it is never touched.
pub fn read() -> Result<Machine, String> {
    let mut m = Machine::default();
    for f in FAMILIES {
        let mut l: Limits = [0; 3];
        for (i, v) in l.iter_mut().enumerate() {
            let p = sysctl(f, i);
            *v = match fs::read_to_string(&p) {
                Ok(s) => s
                    .trim()
                    .parse()
                    .map_err(|e| format!("{}: {e}", p.display()))?,
                Err(_) if f == Family::Ipv6 && !Path::new("/proc/sys/net/ipv6").exists() => {
                    u64::MAX
                }
                Err(e) => {
                    return Err(format!(
                        "{} is not readable ({e}): the neighbour limits are the kernel's, \
                         visible only from the machine's first network namespace",
                        p.display()
                    ))
                }
            };
        }
        match f {
            Family::Ipv4 => m.ipv4 = l,
            Family::Ipv6 => m.ipv6 = l,
        }
    }
    Ok(m)
}

fn write(c: &Change) -> Result<(), String> {
    let p = sysctl(c.family, usize::from(c.n) - 1);
    fs::write(&p, format!("{}\n", c.new)).map_err(|e| format!("writing {}: {e}", p.display()))
}

/// What `up` or `down` did to the limits.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// This lab's need (on `up`).
    pub need: Need,
    /// What all labs up need together, after the command.
    pub total: Need,
    pub changes: Vec<Change>,
    /// Why the limits could not be sized, when they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

impl Report {
    /// Progress lines: what changed, or why nothing could.
    pub fn lines(&self, raising: bool) -> Vec<String> {
        let mut out = Vec::new();
        if raising {
            out.push(format!(
                "neighbour tables: this lab needs about {} IPv4 and {} IPv6 entries; all labs up {} and {}",
                self.need.ipv4, self.need.ipv6, self.total.ipv4, self.total.ipv6
            ));
        }
        if !self.changes.is_empty() {
            let what: Vec<String> = self.changes.iter().map(Change::describe).collect();
            out.push(format!(
                "neighbour tables: {} {}{}",
                if raising { "raised" } else { "restored" },
                what.join(", "),
                if raising {
                    " (restored by `lab down`)"
                } else {
                    ""
                }
            ));
        }
        if let Some(p) = &self.problem {
            out.push(format!("neighbour tables: WARNING: {p}"));
        }
        out
    }
}

struct Held {
    dir: PathBuf,
    _lock: Flock<File>,
}

fn lock() -> Result<Held, String> {
    let dir = PathBuf::from(DIR);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {DIR}: {e}"))?;
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(LOCK))
        .map_err(|e| format!("opening {DIR}/{LOCK}: {e}"))?;
    let lock = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("locking {DIR}/{LOCK}: {e}"))?;
    Ok(Held { dir, _lock: lock })
}

impl Held {
    fn path(&self) -> PathBuf {
        self.dir.join(RECORD)
    }

    /// The record; an unreadable one is treated as none (and replaced):
    /// the kernel's values then count as the machine's own, which never
    /// lowers anything it should not.
    fn load(&self) -> Option<Record> {
        let bytes = fs::read(self.path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn store(&self, r: Option<&Record>) -> Result<(), String> {
        match r {
            Some(r) => write_atomic(
                &self.path(),
                &serde_json::to_vec_pretty(r).expect("record serializes"),
            )
            .map_err(|e: LabError| e.to_string()),
            None => match fs::remove_file(self.path()) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("removing {}: {e}", self.path().display()))
                }
                _ => Ok(()),
            },
        }
    }
}

/// A lab is up while its record is: a lab whose `up` was killed keeps
/// its need until `down` removes it.
fn lab_is_up(dir: &str) -> bool {
    Path::new(dir).join("lab.json").exists()
}

/// Writes the record (with the values about to be written), the kernel,
/// then the record as written, or none once no lab needs anything.
fn carry_out(held: &Held, step: &Step) -> Result<(), String> {
    if !step.changes.is_empty() {
        held.store(Some(&step.record))?;
        for c in &step.changes {
            write(c)?;
        }
    }
    if !step.keep {
        return held.store(None);
    }
    let now = read()?;
    held.store(Some(&neigh::settle(
        Some(step.record.clone()),
        &now,
        &lab_is_up,
    )))
}

/// `lab up`: records the lab's need (by its registry directory) and raises
/// the limits the labs up now need together. Never fails the lab: a
/// problem is reported instead, for the operator to fix by hand.
pub fn raise(lab_dir: &Path, need: Need) -> Report {
    let key = lab_dir.display().to_string();
    let mut report = Report {
        need,
        ..Report::default()
    };
    let result = (|| {
        let held = lock()?;
        let now = read()?;
        let step = neigh::raise(held.load(), &now, &key, need, &lab_is_up);
        report.total = step.total;
        report.changes = step.changes.clone();
        carry_out(&held, &step)
    })();
    if let Err(e) = result {
        let want = neigh::limits_for(report.total.ipv4.max(need.ipv4));
        report.problem = Some(format!(
            "{e}; pairs may fail once the kernel's neighbour table overflows \
             (this lab wants net.ipv4.neigh.default.gc_thresh3 >= {})",
            want[2]
        ));
    }
    report
}

/// `lab down`: forgets the lab (and any lab no longer up) and lowers the
/// limits to what the labs still up need, or back to the machine's own
/// values when none is left.
pub fn release(lab_dir: &Path) -> Report {
    let key = lab_dir.display().to_string();
    let mut report = Report::default();
    let result = (|| {
        let held = lock()?;
        let Some(rec) = held.load() else {
            return Ok(());
        };
        let now = read()?;
        let step = neigh::release(rec, &now, &key, &lab_is_up);
        report.total = step.total;
        report.changes = step.changes.clone();
        carry_out(&held, &step)
    })();
    if let Err(e) = result {
        report.problem = Some(e);
    }
    report
}

/// The machine-wide record and the kernel's limits, read together under
/// the record's lock (no lab changes either meanwhile).
pub fn snapshot() -> Result<(Option<Record>, Machine), String> {
    let held = lock()?;
    Ok((held.load(), read()?))
}
