//! How many repetitions each cell has and still needs.
//!
//! A repetition (`rep`) runs every revision of the sweep once (base and head back to back
//! for an A/B sweep). It is *good* unless one of its runs was `rejected` (steal or a
//! saturated generator): a rejected repetition is re-run in a later round, up to
//! `repeat.retries` extra repetitions per cell, so that the planned number of pairs is
//! measured instead of losing pairs (fewer than 7 pairs can never reach p < 0.01).
//! Failed runs are data (a crash is a finding) and count; an unsupported cell runs once.

use crate::experiment::Repeat;
use crate::util::mean_sd;

#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Repetitions started (the next one is `attempts + 1`).
    pub attempts: u32,
    /// Repetitions with no rejected run.
    pub good: u32,
    /// Rejected repetitions (re-run).
    pub rejected: u32,
    /// Throughput of the good ok repetitions (head/base for an A/B sweep), for the RSD rule.
    pub values: Vec<f64>,
    /// Unsupported: never repeated.
    pub once: bool,
}

impl Tally {
    /// Whether the cell runs again in the next round.
    pub fn needs_more(&self, r: &Repeat) -> bool {
        if self.once || self.attempts >= r.max + r.retries {
            return false;
        }
        if self.good < r.min {
            return true;
        }
        if self.good >= r.max {
            return false;
        }
        let (_, _, rsd) = mean_sd(&self.values);
        self.values.len() >= 2 && rsd > r.rsd_pct
    }

    /// Records one finished repetition: the status of each revision's run and the
    /// throughput-like value of the repetition (None when not every run was ok).
    pub fn record(&mut self, statuses: &[&str], value: Option<f64>) {
        self.attempts += 1;
        if statuses.contains(&"unsupported") {
            self.once = true;
        }
        if statuses.contains(&"rejected") {
            self.rejected += 1;
            return;
        }
        self.good += 1;
        if let Some(v) = value {
            self.values.push(v);
        }
    }

    /// Every planned good repetition was measured, or the cell cannot run more.
    pub fn short_of(&self, r: &Repeat) -> Option<u32> {
        (!self.once && self.good < r.min).then(|| r.min - self.good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(min: u32, max: u32, retries: u32) -> Repeat {
        Repeat {
            min,
            max,
            rsd_pct: 100.0,
            retries,
        }
    }

    #[test]
    fn rejected_repetitions_are_topped_up_within_the_retry_budget() {
        let r = rep(3, 3, 2);
        let mut t = Tally::default();
        t.record(&["ok", "ok"], Some(1.0));
        t.record(&["ok", "rejected"], None);
        t.record(&["ok", "ok"], Some(1.0));
        assert!(t.needs_more(&r), "2 good of 3 planned: one more");
        t.record(&["rejected", "ok"], None);
        assert!(t.needs_more(&r), "retries left: 5 attempts allowed");
        t.record(&["ok", "ok"], Some(1.0));
        assert_eq!((t.attempts, t.good, t.rejected), (5, 3, 2));
        assert!(!t.needs_more(&r));
        assert_eq!(t.short_of(&r), None);
        let mut t = Tally::default();
        for _ in 0..5 {
            t.record(&["rejected"], None);
        }
        assert!(!t.needs_more(&r), "the retry budget is spent");
        assert_eq!(t.short_of(&r), Some(3));
    }

    #[test]
    fn failed_runs_count_and_unsupported_cells_run_once() {
        let r = rep(3, 3, 3);
        let mut t = Tally::default();
        t.record(&["failed", "ok"], None);
        assert_eq!(t.good, 1);
        t.record(&["unsupported", "unsupported"], None);
        assert!(!t.needs_more(&r) && t.short_of(&r).is_none());
    }
}
