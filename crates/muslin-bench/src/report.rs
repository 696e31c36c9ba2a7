//! The run's figures: a terminal table, JSON, and a report folder with a
//! Markdown summary and SVG charts.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::chart::{bars, fmt};
use crate::stats::Series;
use crate::BenchError;

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub stage: String,
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub repetitions: usize,
    /// Median over the underlay's median, measured in the same run.
    pub ratio_to_underlay: Option<f64>,
    /// What the median is held to, e.g. `≥ 3`, and whether it made it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// A bound a figure's median is judged against.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    fn text(self) -> String {
        match self {
            Target::AtLeast(v) => format!("≥ {v}"),
            Target::AtMost(v) => format!("≤ {v}"),
        }
    }

    fn met(self, median: f64) -> bool {
        match self {
            Target::AtLeast(v) => median >= v,
            Target::AtMost(v) => median <= v,
        }
    }
}

fn verdict(f: &Figure) -> String {
    match (&f.target, f.met) {
        (Some(t), Some(true)) => format!("target {t}: met"),
        (Some(t), _) => format!("target {t}: NOT met"),
        _ => String::new(),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub quick: bool,
    pub machine: String,
    pub seconds: f64,
    pub figures: Vec<Figure>,
    /// What a stage skipped or could not measure, and why.
    pub notes: Vec<String>,
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {mem:.0} GiB, Linux {}", kernel.trim())
}

impl Report {
    pub fn new(quick: bool) -> Report {
        Report {
            quick,
            machine: machine(),
            seconds: 0.0,
            figures: vec![],
            notes: vec![],
        }
    }

    pub fn add(
        &mut self,
        stage: &str,
        scenario: &str,
        metric: &str,
        unit: &str,
        s: &Series,
        base: Option<f64>,
    ) {
        let median = s.median();
        self.figures.push(Figure {
            stage: stage.into(),
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            median,
            min: s.min(),
            max: s.max(),
            repetitions: s.0.len(),
            ratio_to_underlay: base.filter(|b| *b > 0.0).map(|b| median / b),
            target: None,
            met: None,
        });
    }

    /// A figure judged against a target (a ratio, usually).
    pub fn add_target(
        &mut self,
        stage: &str,
        scenario: &str,
        metric: &str,
        unit: &str,
        s: &Series,
        target: Target,
    ) {
        self.add(stage, scenario, metric, unit, s, None);
        let f = self.figures.last_mut().expect("just added");
        f.target = Some(target.text());
        f.met = Some(target.met(f.median));
    }

    pub fn note(&mut self, stage: &str, text: &str) {
        self.notes.push(format!("{stage}: {text}"));
    }

    /// Figures that came out empty: what a smoke test fails on. Shares
    /// and write counts may be zero (an idle agent should write nothing),
    /// and so may memory differences (within the readings' noise) and
    /// packets lost (none, at best).
    pub fn missing(&self) -> Vec<String> {
        const MAY_BE_ZERO: &[&str] = &["%", "writes/min", "runs/min", "B", "packets"];
        self.figures
            .iter()
            .filter(|f| {
                !f.median.is_finite()
                    || (f.median <= 0.0 && !MAY_BE_ZERO.contains(&f.unit.as_str()))
            })
            .map(|f| format!("{} / {} / {}", f.stage, f.scenario, f.metric))
            .collect()
    }

    fn grouped(&self) -> BTreeMap<(String, String), Vec<&Figure>> {
        let mut g: BTreeMap<(String, String), Vec<&Figure>> = BTreeMap::new();
        for f in &self.figures {
            g.entry((f.stage.clone(), f.metric.clone()))
                .or_default()
                .push(f);
        }
        g
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "muslin bench{}: {} ({:.0} s)\n",
            if self.quick { " --quick" } else { "" },
            self.machine,
            self.seconds
        );
        let mut last = String::new();
        for f in &self.figures {
            if f.stage != last {
                out.push_str(&format!("\n{}\n", f.stage.to_uppercase()));
                last = f.stage.clone();
            }
            let spread = if f.repetitions > 1 {
                format!("{}..{}", fmt(f.min), fmt(f.max))
            } else {
                String::new()
            };
            let ratio = f
                .ratio_to_underlay
                .map(|r| format!("x{r:.2}"))
                .unwrap_or_default();
            let line = format!(
                "  {:<30} {:<44} {:>9} {:<7} {:>16} {:>6} {}",
                f.scenario,
                f.metric,
                fmt(f.median),
                f.unit,
                spread,
                ratio,
                verdict(f)
            );
            out.push_str(line.trim_end());
            out.push('\n');
        }
        if !self.notes.is_empty() {
            out.push_str("\nNOTES\n");
            for n in &self.notes {
                out.push_str(&format!("  - {n}\n"));
            }
        }
        out
    }

    pub fn markdown(&self) -> String {
        let mut out = format!(
            "# Muslin benchmark{}\n\nMachine: {}. Run time {:.0} s. Every figure is the median of its repetitions, with \
             the smallest and largest beside it; data-plane throughput also as a ratio to the underlay (host to host) \
             measured in the same run. Hand-built paths are the same kernel paths configured with `ip` as the peers \
             program them; `bridge + host-local` are Debian's reference CNI plugins.\n",
            if self.quick { " (quick)" } else { "" },
            self.machine,
            self.seconds
        );
        for ((stage, metric), figs) in self.grouped() {
            out.push_str(&format!("\n## {stage}: {metric}\n\n| scenario | median | min | max | n | x underlay |\n|---|---|---|---|---|---|\n"));
            for f in &figs {
                out.push_str(&format!(
                    "| {} | {} {} | {} | {} | {} | {} |\n",
                    f.scenario,
                    fmt(f.median),
                    f.unit,
                    fmt(f.min),
                    fmt(f.max),
                    f.repetitions,
                    f.ratio_to_underlay
                        .map(|r| format!("{r:.2}"))
                        .unwrap_or_default()
                ));
            }
            for f in figs.iter().filter(|f| f.target.is_some()) {
                out.push_str(&format!("\n{}: {}.\n", f.scenario, verdict(f)));
            }
            if figs.len() > 1 {
                out.push_str(&format!(
                    "\n![{metric}]({}.svg)\n",
                    slug(&format!("{stage} {metric}"))
                ));
            }
        }
        if !self.notes.is_empty() {
            out.push_str("\n## Notes\n\n");
            for n in &self.notes {
                out.push_str(&format!("- {n}\n"));
            }
        }
        out
    }

    /// Writes `summary.md`, `results.json` and one SVG per metric.
    pub fn write_dir(&self, dir: &Path) -> Result<(), BenchError> {
        let w = |p: &Path, text: &str| {
            std::fs::write(p, text).map_err(|source| BenchError::Write {
                path: p.display().to_string(),
                source,
            })
        };
        std::fs::create_dir_all(dir).map_err(|source| BenchError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        w(&dir.join("summary.md"), &self.markdown())?;
        w(
            &dir.join("results.json"),
            &serde_json::to_string_pretty(self).expect("report serializes"),
        )?;
        for ((stage, metric), figs) in self.grouped() {
            if figs.len() < 2 {
                continue;
            }
            let items: Vec<(String, f64, f64, f64)> = figs
                .iter()
                .map(|f| (f.scenario.clone(), f.median, f.min, f.max))
                .collect();
            w(
                &dir.join(format!("{}.svg", slug(&format!("{stage} {metric}")))),
                &bars(&metric, &figs[0].unit, &items),
            )?;
        }
        Ok(())
    }
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_renders_and_flags_missing_figures() {
        let mut r = Report::new(true);
        r.add(
            "data plane",
            "underlay",
            "TCP throughput, 1 stream",
            "Gbit/s",
            &Series(vec![10.0, 12.0]),
            Some(11.0),
        );
        r.add(
            "data plane",
            "Muslin routed",
            "TCP throughput, 1 stream",
            "Gbit/s",
            &Series(vec![9.0]),
            Some(11.0),
        );
        r.add(
            "scale",
            "lab",
            "agent CPU, idle (per agent)",
            "%",
            &Series(vec![0.0]),
            None,
        );
        r.add(
            "control plane",
            "Muslin",
            "ADD p50",
            "ms",
            &Series(vec![]),
            None,
        );
        assert_eq!(
            r.missing(),
            vec!["control plane / Muslin / ADD p50".to_string()]
        );
        assert!(r.table().contains("x0.82"));
        let md = r.markdown();
        assert!(md.contains("| Muslin routed | 9.00 Gbit/s"));
        assert!(md.contains("data-plane-tcp-throughput-1-stream.svg"));
        assert_eq!(slug("data plane: TCP, 1 stream"), "data-plane-tcp-1-stream");
        r.add_target(
            "encryption",
            "a / b",
            "ratio (target ≥ 3)",
            "x",
            &Series(vec![2.0, 4.0, 3.5]),
            Target::AtLeast(3.0),
        );
        r.add_target(
            "encryption",
            "c / d",
            "p50 ratio",
            "x",
            &Series(vec![2.0]),
            Target::AtMost(1.5),
        );
        r.note("encryption", "boringtun-cli skipped");
        let t = r.table();
        assert!(t.contains("target ≥ 3: met"), "{t}");
        assert!(t.contains("target ≤ 1.5: NOT met"), "{t}");
        assert!(
            t.contains("NOTES\n  - encryption: boringtun-cli skipped"),
            "{t}"
        );
        assert!(r.markdown().contains("a / b: target ≥ 3: met."));
    }
}
