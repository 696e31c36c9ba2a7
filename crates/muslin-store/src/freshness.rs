//! What makes a sealed gossip frame acceptable beyond its seal: it was sent
//! recently (its timestamp, inside the seal, is within a window of our
//! clock) and it was not seen before (its nonce is remembered for that
//! window). A captured frame replayed later is refused, so it can neither
//! re-apply old state nor pass for a sign of life. And what the transport
//! says about the datagrams it drops: one line per source per interval,
//! with a count, so a flood cannot flood the log.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How far a frame's timestamp may be from our clock (hosts' clocks drift;
/// NTP keeps them far closer).
pub const WINDOW_MS: u64 = 30_000;
/// Remembered nonces at most: far above what gossip sends in a window.
const MAX_NONCES: usize = 200_000;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refused {
    /// Plaintext where the cluster needs its secret.
    Unauthenticated,
    /// Sealed with another secret, or damaged.
    BadSeal,
    /// Its timestamp is outside the window: a late replay, or a clock far
    /// off.
    Stale,
    /// Seen before within the window.
    Replayed,
}

impl Refused {
    pub fn describe(self) -> &'static str {
        match self {
            Refused::Unauthenticated => {
                "unauthenticated gossip (this cluster needs the cluster secret)"
            }
            Refused::BadSeal => "gossip sealed with another secret, or damaged",
            Refused::Stale => {
                "gossip sent more than 30 s ago (a replay, or that host's clock is off)"
            }
            Refused::Replayed => "gossip frames seen before (a replay)",
        }
    }
}

/// Nonces seen within the window.
#[derive(Default)]
pub struct ReplayGuard {
    seen: HashMap<[u8; 12], u64>,
}

impl ReplayGuard {
    /// Accepts a frame stamped `sent_ms` with `nonce` at `now_ms`, once.
    pub fn accept(&mut self, nonce: [u8; 12], sent_ms: u64, now_ms: u64) -> Result<(), Refused> {
        if now_ms.abs_diff(sent_ms) > WINDOW_MS {
            return Err(Refused::Stale);
        }
        if self.seen.len() >= MAX_NONCES {
            self.seen
                .retain(|_, t| now_ms.saturating_sub(*t) <= 2 * WINDOW_MS);
        }
        if self.seen.insert(nonce, sent_ms).is_some() {
            return Err(Refused::Replayed);
        }
        if self.seen.len().is_multiple_of(4096) {
            self.seen
                .retain(|_, t| now_ms.saturating_sub(*t) <= 2 * WINDOW_MS);
        }
        Ok(())
    }
}

/// Rate-limited reports of dropped datagrams: at most one line per source
/// per interval, at most [`MAX_LINES`] lines per interval in all (a flood
/// from spoofed sources), the rest summed up in one line.
pub struct DropLog {
    every: Duration,
    sources: HashMap<IpAddr, Source>,
    pub total: u64,
    window: Option<Instant>,
    lines: u32,
    /// Datagrams and new sources not reported in this window.
    quiet: (u64, u64),
}

const MAX_LINES: u32 = 10;
const MAX_SOURCES: usize = 4096;

struct Source {
    reported: Instant,
    since: u64,
}

impl DropLog {
    pub fn new(every: Duration) -> DropLog {
        DropLog {
            every,
            sources: HashMap::new(),
            total: 0,
            window: None,
            lines: 0,
            quiet: (0, 0),
        }
    }

    /// Counts a drop from `from`; returns the line to log, if one is due.
    pub fn dropped(&mut self, from: IpAddr, why: Refused, now: Instant) -> Option<String> {
        self.total += 1;
        let every = self.every;
        let mut summary = None;
        if self.window.is_none_or(|w| now.duration_since(w) >= every) {
            let (n, m) = std::mem::take(&mut self.quiet);
            if n > 0 {
                summary = Some(format!(
                    "dropped {n} more datagrams from {m} more sources in the last {} s (not itemized)",
                    every.as_secs()
                ));
            }
            self.window = Some(now);
            self.lines = 0;
            self.sources
                .retain(|_, s| now.duration_since(s.reported) < every * 6);
        }
        let count = match self.sources.get_mut(&from) {
            Some(s) if now.duration_since(s.reported) < every => {
                s.since += 1;
                return summary;
            }
            Some(s) => Some(s.since + 1),
            None => None,
        };
        let known = count.is_some();
        let text = match count {
            Some(n) => format!(
                "dropped {n} datagrams from {from} in the last {} s: {}",
                every.as_secs(),
                why.describe()
            ),
            None => format!(
                "dropped a datagram from {from}: {} (more from it are counted, reported every {} s)",
                why.describe(),
                every.as_secs()
            ),
        };
        if summary.is_some()
            || self.lines >= MAX_LINES
            || (!known && self.sources.len() >= MAX_SOURCES)
        {
            self.quiet.0 += 1;
            self.quiet.1 += u64::from(!known);
            return summary;
        }
        self.lines += 1;
        self.sources.insert(
            from,
            Source {
                reported: now,
                since: 0,
            },
        );
        Some(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_accepted_once_and_only_while_fresh() {
        let mut g = ReplayGuard::default();
        let now = 1_000_000;
        assert_eq!(g.accept([1; 12], now - 1000, now), Ok(()));
        assert_eq!(g.accept([1; 12], now - 1000, now), Err(Refused::Replayed));
        assert_eq!(g.accept([2; 12], now - 60_000, now), Err(Refused::Stale));
        assert_eq!(g.accept([3; 12], now + 60_000, now), Err(Refused::Stale));
        assert_eq!(
            g.accept([4; 12], now + 5_000, now),
            Ok(()),
            "small drift is fine"
        );
    }

    #[test]
    fn a_flood_is_one_line_per_source_per_interval() {
        let mut d = DropLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let lines: Vec<String> = (0..10_000)
            .filter_map(|i| d.dropped(a, Refused::BadSeal, t0 + Duration::from_micros(i)))
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(d.total, 10_000);
        let next = d
            .dropped(a, Refused::BadSeal, t0 + Duration::from_secs(11))
            .unwrap();
        assert!(
            next.starts_with("dropped 10000 datagrams from 192.0.2.1"),
            "{next}"
        );
    }

    #[test]
    fn spoofed_sources_are_summed_up() {
        let mut d = DropLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let lines = (0..10_000u32)
            .filter_map(|i| {
                let ip = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
                d.dropped(
                    ip,
                    Refused::BadSeal,
                    t0 + Duration::from_micros(u64::from(i)),
                )
            })
            .count();
        assert!(lines <= 10, "{lines} lines");
        let next = d
            .dropped(
                "192.0.2.9".parse().unwrap(),
                Refused::BadSeal,
                t0 + Duration::from_secs(11),
            )
            .unwrap();
        assert!(next.contains("from 9990 more sources"), "{next}");
    }
}
