//! The gossip generation of this node's last run, kept in the state
//! directory so the next run numbers itself above it whatever the wall
//! clock says (see `muslin_store::next_generation`).

use std::path::Path;

const FILE: &str = "gossip-generation";

/// Generations are milliseconds since 1970: a value this large is a
/// damaged file, and going on from it would soon leave no number above.
const IMPLAUSIBLE: u64 = u64::MAX / 2;

/// The last run's generation; 0 when unknown (a first start, or a file
/// that does not read: the wall clock then decides).
fn load(dir: &Path) -> u64 {
    let Ok(s) = std::fs::read_to_string(dir.join(FILE)) else {
        return 0;
    };
    match s.trim().parse::<u64>() {
        Ok(g) if g < IMPLAUSIBLE => g,
        Ok(g) => {
            tracing::warn!(generation = g, "ignoring an implausible {FILE}");
            0
        }
        Err(e) => {
            tracing::warn!(cause = %e, "ignoring an unreadable {FILE}");
            0
        }
    }
}

/// This run's generation, kept for the next run before it is returned.
pub fn next(dir: &Path) -> std::io::Result<u64> {
    next_at(dir, crate::leases::now_ms())
}

fn next_at(dir: &Path, now_ms: u64) -> std::io::Result<u64> {
    let previous = load(dir);
    let generation = muslin_store::next_generation(now_ms, previous);
    if now_ms <= previous {
        tracing::warn!(
            previous,
            behind_ms = previous - now_ms,
            "the wall clock is behind this node's previous run: its gossip generation goes on from that run's, so peers take this run for the newer"
        );
    }
    std::fs::create_dir_all(dir)?;
    crate::atomic_file::write(&dir.join(FILE), format!("{generation}\n").as_bytes())?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_numbers_itself_above_the_last_kept_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let t = 1_790_000_000_000;
        assert_eq!(next_at(&dir, t).unwrap(), t, "first start: the clock");
        assert_eq!(load(&dir), t, "kept before it is used");
        assert_eq!(next_at(&dir, t + 9_000).unwrap(), t + 9_000);
        // The clock went back an hour: the run still counts as newer.
        assert_eq!(next_at(&dir, t - 3_600_000).unwrap(), t + 9_001);
        assert_eq!(next_at(&dir, 0).unwrap(), t + 9_002);
        for bad in ["not a number".to_string(), u64::MAX.to_string()] {
            std::fs::write(dir.join(FILE), &bad).unwrap();
            assert_eq!(next_at(&dir, t).unwrap(), t, "{bad}");
        }
    }
}
