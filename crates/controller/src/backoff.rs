//! Replica records over time: start backoff for deployments whose replicas
//! keep failing, and the retention of finished records. Pure functions of
//! the records and `now`; the placer carries them out.
//!
//! # Rules
//!
//! 1. **Crash loop.** A deployment with `n ≥ 1` replicas Failed within the
//!    last [`FAILURE_WINDOW_MS`] waits `min(BASE × 2^(n−1), MAX)` after the
//!    latest of those failures before a new replica is placed (10 s, 20 s,
//!    40 s, … up to 5 min, like Kubernetes' CrashLoopBackOff). Meanwhile the
//!    placer places nothing for it (stops still happen) and its status says
//!    why, with the last failure's first line.
//! 2. **Retention.** A terminal record (Stopped, Failed, Lost) is deleted
//!    [`RETENTION_MS`] after it became terminal (Failed ones after
//!    [`FAILED_RETENTION_MS`], so people can read why).

use std::collections::BTreeMap;

/// Failures older than this do not count toward a backoff.
pub const FAILURE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The first backoff.
pub const BASE_MS: u64 = 10_000;
/// The longest backoff.
pub const MAX_MS: u64 = 5 * 60 * 1000;
/// How long Stopped and Lost records are kept.
pub const RETENTION_MS: u64 = 10 * 60 * 1000;
/// How long Failed records are kept.
pub const FAILED_RETENTION_MS: u64 = 60 * 60 * 1000;

/// How a replica record ended, as these rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Stopped or Lost.
    Finished,
    /// Failed.
    Failed,
}

/// A terminal replica record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terminal<'a> {
    /// Its id.
    pub id: &'a str,
    /// Its deployment.
    pub deployment: &'a str,
    /// How it ended.
    pub ended: Ended,
    /// When (ms since the Unix epoch).
    pub at_ms: u64,
    /// Its reason.
    pub reason: &'a str,
}

/// A deployment waiting out a crash-loop backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    /// Failures in the window.
    pub failures: u32,
    /// When a replica may be placed again.
    pub until_ms: u64,
    /// The first line of the latest failure's reason.
    pub last_reason: String,
}

impl Backoff {
    /// The deployment's status reason while it waits. It changes only when
    /// another failure happens, not as the wait runs down.
    pub fn status(&self) -> String {
        format!(
            "replicas keep failing ({} in the last 10 minutes); new replicas wait up to {} s \
             between attempts; last failure: {}",
            self.failures,
            backoff_ms(self.failures) / 1000,
            self.last_reason
        )
    }
}

/// The wait after `failures` failures.
pub fn backoff_ms(failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(16);
    BASE_MS.saturating_mul(1 << doublings).min(MAX_MS)
}

/// Deployments that must not get new replicas at `now_ms`.
pub fn backoffs<'a>(
    terminal: impl IntoIterator<Item = &'a Terminal<'a>>,
    now_ms: u64,
) -> BTreeMap<String, Backoff> {
    let mut recent: BTreeMap<&str, (u32, u64, &str)> = BTreeMap::new();
    for t in terminal {
        if t.ended != Ended::Failed || t.at_ms.saturating_add(FAILURE_WINDOW_MS) <= now_ms {
            continue;
        }
        let entry = recent.entry(t.deployment).or_insert((0, 0, ""));
        entry.0 += 1;
        if t.at_ms >= entry.1 {
            entry.1 = t.at_ms;
            entry.2 = t.reason;
        }
    }
    recent
        .into_iter()
        .filter_map(|(deployment, (failures, last, reason))| {
            let until_ms = last.saturating_add(backoff_ms(failures));
            (now_ms < until_ms).then(|| {
                let backoff = Backoff {
                    failures,
                    until_ms,
                    last_reason: reason.lines().next().unwrap_or("").to_owned(),
                };
                (deployment.to_owned(), backoff)
            })
        })
        .collect()
}

/// When a terminal record may be deleted.
pub fn expires_at(t: &Terminal<'_>) -> u64 {
    let keep = match t.ended {
        Ended::Finished => RETENTION_MS,
        Ended::Failed => FAILED_RETENTION_MS,
    };
    t.at_ms.saturating_add(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(deployment: &'static str, at_ms: u64, reason: &'static str) -> Terminal<'static> {
        Terminal {
            id: "r",
            deployment,
            ended: Ended::Failed,
            at_ms,
            reason,
        }
    }

    #[test]
    fn the_wait_doubles_from_10_s_to_5_min() {
        let waits: Vec<u64> = (1..=7).map(backoff_ms).collect();
        assert_eq!(
            waits,
            [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        assert_eq!(backoff_ms(u32::MAX), MAX_MS);
        assert_eq!(backoff_ms(0), BASE_MS);
    }

    #[test]
    fn a_failure_holds_its_deployment_until_the_wait_is_over() {
        let now = 1_000_000;
        let records = [
            failed(
                "a",
                now - 5_000,
                "exited (exit status 7); last output:\nboom",
            ),
            failed("a", now - 1_000, "exit status 9\nmore"),
            failed("b", now - 11_000, "old"),
        ];
        let held = backoffs(&records, now);
        // a: 2 failures, the latest 1 s ago, wait 20 s.
        let a = &held["a"];
        assert_eq!(a.failures, 2);
        assert_eq!(a.until_ms, now - 1_000 + 20_000);
        assert_eq!(a.last_reason, "exit status 9");
        assert!(
            a.status().contains("2 in the last 10 minutes"),
            "{}",
            a.status()
        );
        assert!(a.status().contains("up to 20 s"), "{}", a.status());
        // b: 1 failure 11 s ago, wait 10 s: over.
        assert!(!held.contains_key("b"));
        // Once a's wait is over, it may place again.
        assert!(backoffs(&records, now + 18_999).contains_key("a"));
        assert!(!backoffs(&records, now + 19_000).contains_key("a"));
    }

    #[test]
    fn old_failures_and_clean_stops_do_not_count() {
        let now = 100 * 60 * 1000;
        let mut stopped = failed("a", now - 1, "scaled down");
        stopped.ended = Ended::Finished;
        let records = [
            stopped,
            failed("a", now - FAILURE_WINDOW_MS, "too old"),
            failed("c", now - FAILURE_WINDOW_MS + 1, "recent"),
        ];
        let held = backoffs(&records, now);
        assert!(!held.contains_key("a"), "{held:?}");
        // c failed once, long enough ago that its 10 s are over.
        assert!(!held.contains_key("c"));
    }

    #[test]
    fn failed_records_are_kept_longer() {
        let mut t = failed("a", 1_000, "x");
        assert_eq!(expires_at(&t), 1_000 + FAILED_RETENTION_MS);
        t.ended = Ended::Finished;
        assert_eq!(expires_at(&t), 1_000 + RETENTION_MS);
    }
}
