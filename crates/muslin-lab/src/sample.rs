//! A sample of the connectivity matrix for big labs. The full matrix grows
//! with the square of the containers (59,800 pairs at 100 hosts of two
//! containers), and so would the time to check it; a sample that still
//! has every container as a source and every container and host as a
//! destination, and every kind of pair, finds a broken host, link or
//! kind of path as surely. It is deterministic: the same seed over the
//! same lab picks the same pairs, so a failure can be checked again.

use serde::Serialize;

/// A pair the matrix could check: who probes, who is probed, and what
/// kind of pair it is (say `same host`, `same segment`, `across routers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub from: String,
    pub to: String,
    pub class: String,
}

/// How a matrix was sampled, as the output says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sampling {
    pub checked: usize,
    pub of: usize,
    pub seed: u64,
    /// Every source and every destination is in at least this many pairs
    /// (when it has that many), and so is every kind of pair.
    pub each_at_least: usize,
    /// The kinds of pair, each with how many were checked.
    pub classes: Vec<(String, usize)>,
}

impl Sampling {
    pub fn describe(&self) -> String {
        let classes: Vec<String> = self
            .classes
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        format!(
            "sampled {} of {} pairs, seed {}: every container as a source and every container and \
             host as a destination at least {} times, every kind of pair too ({}); \
             `lab check --full` checks them all, `--seed N` another sample",
            thousands(self.checked),
            thousands(self.of),
            self.seed,
            self.each_at_least,
            classes.join(", ")
        )
    }
}

/// `59800` as `59,800`.
pub fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// SplitMix64: a tiny, well-mixed generator; the sample only needs to be
/// spread and reproducible, not secret.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Which of `all` to check: at least `each` pairs of every source, of
/// every destination and of every class (where there are that many), then
/// more at random up to `budget` in all. Indices into `all`, in order.
/// The coverage comes first, so a budget smaller than it is exceeded
/// rather than leaving a container unchecked.
pub fn pick(all: &[Candidate], each: usize, budget: usize, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..all.len()).collect();
    let mut rng = Rng(seed);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i + 1));
    }
    use std::collections::HashMap;
    let mut from: HashMap<&str, usize> = HashMap::new();
    let mut to: HashMap<&str, usize> = HashMap::new();
    let mut class: HashMap<&str, usize> = HashMap::new();
    let mut chosen = vec![false; all.len()];
    let mut n = 0;
    for &i in &order {
        let c = &all[i];
        let short = |m: &HashMap<&str, usize>, k: &str| m.get(k).copied().unwrap_or(0) < each;
        if short(&from, &c.from) || short(&to, &c.to) || short(&class, &c.class) {
            chosen[i] = true;
            n += 1;
            *from.entry(&c.from).or_default() += 1;
            *to.entry(&c.to).or_default() += 1;
            *class.entry(&c.class).or_default() += 1;
        }
    }
    for &i in &order {
        if n >= budget {
            break;
        }
        if !chosen[i] {
            chosen[i] = true;
            n += 1;
        }
    }
    (0..all.len()).filter(|&i| chosen[i]).collect()
}

/// The classes of the picked pairs, with their counts, in first-seen order.
pub fn classes(all: &[Candidate], picked: &[usize]) -> Vec<(String, usize)> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for &i in picked {
        match out.iter_mut().find(|(c, _)| *c == all[i].class) {
            Some((_, n)) => *n += 1,
            None => out.push((all[i].class.clone(), 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `hosts` hosts of two containers each; targets are every container
    /// and every host, as in the default lab.
    fn lab(hosts: usize) -> Vec<Candidate> {
        let containers: Vec<(usize, String)> = (1..=hosts)
            .flat_map(|h| (1..=2).map(move |c| (h, format!("h{h}/c{c}"))))
            .collect();
        let mut v = Vec::new();
        for (sh, s) in &containers {
            for (th, t) in &containers {
                if s != t {
                    let class = if sh == th {
                        "same host"
                    } else {
                        "same segment"
                    };
                    v.push(Candidate {
                        from: s.clone(),
                        to: t.clone(),
                        class: class.into(),
                    });
                }
            }
            for h in 1..=hosts {
                let class = if h == *sh { "own host" } else { "host" };
                v.push(Candidate {
                    from: s.clone(),
                    to: format!("h{h}"),
                    class: class.into(),
                });
            }
        }
        v
    }

    #[test]
    fn every_end_and_class_is_covered_and_the_budget_filled() {
        let all = lab(100);
        assert_eq!(all.len(), 59_800);
        let picked = pick(&all, 2, 2000, 7);
        assert_eq!(picked.len(), 2000);
        let count = |f: &dyn Fn(&Candidate) -> bool| picked.iter().filter(|&&i| f(&all[i])).count();
        for h in 1..=100 {
            for c in 1..=2 {
                let name = format!("h{h}/c{c}");
                assert!(count(&|x| x.from == name) >= 2, "{name} as source");
                assert!(count(&|x| x.to == name) >= 2, "{name} as destination");
            }
            let host = format!("h{h}");
            assert!(count(&|x| x.to == host) >= 2, "{host} as destination");
        }
        let cl = classes(&all, &picked);
        assert_eq!(cl.len(), 4, "{cl:?}");
        assert!(cl.iter().all(|(_, n)| *n >= 2), "{cl:?}");
        // Spread: no source is checked much more than the mean (10).
        let most = (1..=100)
            .map(|h| count(&|x| x.from == format!("h{h}/c1")))
            .max()
            .unwrap();
        assert!(most < 30, "{most}");
    }

    #[test]
    fn the_same_seed_picks_the_same_pairs_and_another_seed_others() {
        let all = lab(30);
        let a = pick(&all, 2, 500, 7);
        assert_eq!(a, pick(&all, 2, 500, 7));
        let b = pick(&all, 2, 500, 8);
        assert_ne!(a, b);
        // Indices come back in the matrix's own order.
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn coverage_beats_a_small_budget_and_a_big_one_takes_everything() {
        let all = lab(10);
        let picked = pick(&all, 2, 1, 7);
        assert!(picked.len() >= 40, "every container twice as a source");
        assert_eq!(pick(&all, 2, usize::MAX, 7).len(), all.len());
        // A class with a single pair still gets it.
        let mut all = lab(3);
        all.push(Candidate {
            from: "h1/c1".into(),
            to: "r1".into(),
            class: "across routers".into(),
        });
        let picked = pick(&all, 2, 1, 1);
        assert!(picked.contains(&(all.len() - 1)));
    }

    #[test]
    fn the_description_says_how_it_sampled() {
        let s = Sampling {
            checked: 2000,
            of: 59_800,
            seed: 7,
            each_at_least: 2,
            classes: vec![("same host".into(), 120), ("host".into(), 600)],
        };
        let d = s.describe();
        assert!(
            d.starts_with("sampled 2,000 of 59,800 pairs, seed 7: every container"),
            "{d}"
        );
        assert!(
            d.contains("at least 2 times") && d.contains("same host 120, host 600"),
            "{d}"
        );
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
