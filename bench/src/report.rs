//! Benchmark figures: comparisons of two systems per workload, written as JSON and as a table.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// Whether a larger figure is better (throughput) or a smaller one (latency, memory).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub workload: String,
    pub unit: &'static str,
    pub better: Better,
    pub ours: f64,
    pub theirs: f64,
    /// How many times better ours is (>1 means ours wins), whichever direction is better.
    pub advantage: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub benchmark: &'static str,
    pub ours: &'static str,
    pub theirs: String,
    pub machine: String,
    pub rows: Vec<Row>,
}

impl Report {
    pub fn new(benchmark: &'static str, ours: &'static str, theirs: String) -> Self {
        let machine = format!(
            "{} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| format!("Linux {}", s.trim()))
                .unwrap_or_default()
        );
        Self {
            benchmark,
            ours,
            theirs,
            machine,
            rows: Vec::new(),
        }
    }

    pub fn add(
        &mut self,
        workload: impl Into<String>,
        unit: &'static str,
        better: Better,
        ours: f64,
        theirs: f64,
    ) {
        let advantage = match better {
            Better::Higher => ours / theirs,
            Better::Lower => theirs / ours,
        };
        let row = Row {
            workload: workload.into(),
            unit,
            better,
            ours,
            theirs,
            advantage,
        };
        let theirs = if row.theirs.is_nan() {
            "-".to_string()
        } else {
            format!("{:.2}", row.theirs)
        };
        eprintln!(
            "  {:<44} {:>12.2} {theirs:>12} {unit}",
            row.workload, row.ours
        );
        self.rows.push(row);
    }

    /// A figure with nothing to compare it with (no target, no other system): shown alone.
    pub fn measured(
        &mut self,
        workload: impl Into<String>,
        unit: &'static str,
        better: Better,
        ours: f64,
    ) {
        self.add(workload, unit, better, ours, f64::NAN);
    }

    /// Writes the JSON file and prints the table.
    pub fn write(&self, out: &Path) -> anyhow::Result<()> {
        std::fs::write(out, serde_json::to_string_pretty(self)? + "\n")?;
        println!("{}", self.table());
        println!("figures written to {}", out.display());
        Ok(())
    }

    pub fn table(&self) -> String {
        let mut t = format!(
            "{} benchmark: {} vs {} ({})\n{:<44} {:>12} {:>12} {:>10}  unit\n",
            self.benchmark,
            self.ours,
            self.theirs,
            self.machine,
            "workload",
            self.ours,
            self.theirs.split_whitespace().next().unwrap_or("theirs"),
            "advantage"
        );
        for r in &self.rows {
            let (theirs, advantage) = if r.theirs.is_nan() {
                ("-".to_string(), "-".to_string())
            } else {
                (format!("{:.2}", r.theirs), format!("{:.2}x", r.advantage))
            };
            t += &format!(
                "{:<44} {:>12.2} {:>12} {:>10}  {} ({} is better)\n",
                r.workload,
                r.ours,
                theirs,
                advantage,
                r.unit,
                match r.better {
                    Better::Higher => "higher",
                    Better::Lower => "lower",
                }
            );
        }
        t
    }
}

/// The `p`-th percentile (0–100) of `samples`, by nearest rank; zero for no samples.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut samples, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut samples, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut samples, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut samples, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn advantage_points_the_right_way() {
        let mut r = Report::new("t", "a", "b".into());
        r.add("throughput", "ops/s", Better::Higher, 200.0, 100.0);
        r.add("latency", "ms", Better::Lower, 2.0, 8.0);
        assert_eq!(r.rows[0].advantage, 2.0);
        assert_eq!(r.rows[1].advantage, 4.0);
    }
}
