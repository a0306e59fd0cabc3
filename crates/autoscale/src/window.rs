//! The metric window: 1-second buckets in a ring, with running sums so that
//! an average costs the same whatever the window's length.

use crate::Concurrency;

/// The last `len` seconds of concurrency samples for one deployment, plus a
/// running sum over the last `len` seconds and over a shorter burst window.
///
/// Samples for the same second add up (several gateways report the same
/// deployment). A second with no sample counts as zero once history has
/// started; before the first second seen, nothing counts, so an average early
/// in history is over the seconds present.
#[derive(Debug, Clone)]
pub struct MetricWindow {
    /// `slots[s % len]` holds second `s`'s total, if `seconds[s % len] == s`.
    values: Vec<u64>,
    seconds: Vec<u64>,
    /// The latest second the window has advanced to.
    head: Option<u64>,
    /// The first second of history.
    first: u64,
    /// Sum over `(head - len, head]`, in millionths.
    sum: u128,
    /// Length of the burst window (≤ len), if any, and its sum.
    burst: Option<(u64, u128)>,
}

/// A sum of samples and how many seconds it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSum {
    /// Sum of the per-second averages, in millionths of a request.
    pub micros: u128,
    /// Seconds covered (never zero once the window has a head).
    pub seconds: u64,
}

impl WindowSum {
    /// The average over the covered seconds, rounded down to a millionth.
    pub fn average(&self) -> Concurrency {
        if self.seconds == 0 {
            return Concurrency::ZERO;
        }
        let avg = self.micros / u128::from(self.seconds);
        Concurrency::from_micros(u64::try_from(avg).unwrap_or(u64::MAX))
    }
}

impl MetricWindow {
    /// An empty window of `len` seconds (at least 1), with an optional burst
    /// window of `burst_len` seconds (clamped to `len`).
    pub fn new(len: u32, burst_len: Option<u32>) -> Self {
        let len = len.max(1) as usize;
        Self {
            values: vec![0; len],
            seconds: vec![u64::MAX; len],
            head: None,
            first: 0,
            sum: 0,
            burst: burst_len.map(|b| (u64::from(b).clamp(1, len as u64), 0)),
        }
    }

    /// The window's length in seconds.
    pub fn len(&self) -> u64 {
        self.values.len() as u64
    }

    /// Whether no second has been seen yet.
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// The latest second seen.
    pub fn head(&self) -> Option<u64> {
        self.head
    }

    /// The value recorded for `second`, if it is still in the window.
    pub fn get(&self, second: u64) -> Concurrency {
        let i = self.slot(second);
        if self.seconds[i] == second {
            Concurrency::from_micros(self.values[i])
        } else {
            Concurrency::ZERO
        }
    }

    fn slot(&self, second: u64) -> usize {
        // The remainder is below `len`, which is a usize.
        usize::try_from(second % self.len()).unwrap_or(0)
    }

    /// Adds a sample for `second`. A sample older than the window is dropped
    /// (returns `false`); a newer one advances the window first.
    pub fn record(&mut self, second: u64, value: Concurrency) -> bool {
        match self.head {
            None => {
                self.head = Some(second);
                self.first = second;
            }
            Some(head) if second > head => self.advance(second),
            Some(head) if second + self.len() <= head => return false,
            Some(_) => {}
        }
        let head = self.head.unwrap_or(second);
        self.first = self.first.min(second);
        let i = self.slot(second);
        if self.seconds[i] != second {
            self.seconds[i] = second;
            self.values[i] = 0;
        }
        let v = value.micros();
        self.values[i] = self.values[i].saturating_add(v);
        self.sum += u128::from(v);
        if let Some((blen, bsum)) = &mut self.burst
            && second + *blen > head
        {
            *bsum += u128::from(v);
        }
        true
    }

    /// Moves the window's head to `now`, dropping seconds that fall out.
    /// Cost is proportional to the seconds skipped, at most the window length.
    pub fn advance(&mut self, now: u64) {
        let Some(head) = self.head else {
            self.head = Some(now);
            self.first = now;
            return;
        };
        if now <= head {
            return;
        }
        if now - head >= self.len() {
            self.values.iter_mut().for_each(|v| *v = 0);
            self.seconds.iter_mut().for_each(|s| *s = u64::MAX);
            self.sum = 0;
            if let Some((_, bsum)) = &mut self.burst {
                *bsum = 0;
            }
            self.head = Some(now);
            return;
        }
        for s in head + 1..=now {
            if let Some((blen, bsum)) = &mut self.burst
                && s >= *blen
            {
                let leaving = s - *blen;
                let i = usize::try_from(leaving % self.values.len() as u64).unwrap_or(0);
                if self.seconds[i] == leaving {
                    *bsum -= u128::from(self.values[i]);
                }
            }
            let i = self.slot(s);
            if self.seconds[i] != u64::MAX {
                self.sum -= u128::from(self.values[i]);
            }
            self.seconds[i] = s;
            self.values[i] = 0;
        }
        self.head = Some(now);
    }

    /// The sum over the whole window (or the history present, if shorter).
    pub fn window_sum(&self) -> WindowSum {
        self.sum_over(self.len(), self.sum)
    }

    /// The sum over the burst window, if there is one.
    pub fn burst_sum(&self) -> Option<WindowSum> {
        self.burst.map(|(blen, bsum)| self.sum_over(blen, bsum))
    }

    fn sum_over(&self, len: u64, micros: u128) -> WindowSum {
        let seconds = match self.head {
            None => 0,
            Some(head) => len.min(head - self.first + 1),
        };
        WindowSum { micros, seconds }
    }

    /// A window of another length holding the samples this one still has
    /// (those that fit). Used when settings change.
    pub fn resized(&self, len: u32, burst_len: Option<u32>) -> Self {
        let mut next = Self::new(len, burst_len);
        if let Some(head) = self.head {
            next.head = Some(head);
            next.first = self.first;
            let keep = self.len().min(next.len());
            for second in head.saturating_sub(keep - 1)..=head {
                let value = self.get(second);
                if second >= self.first && value > Concurrency::ZERO {
                    next.record(second, value);
                }
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(v: u32) -> Concurrency {
        Concurrency::from_requests(v)
    }

    #[test]
    fn average_is_over_present_history_while_shorter_than_window() {
        let mut w = MetricWindow::new(60, None);
        w.record(100, c(6));
        w.record(101, c(0));
        w.record(102, c(3));
        assert_eq!(
            w.window_sum(),
            WindowSum {
                micros: 9_000_000,
                seconds: 3
            }
        );
        assert_eq!(w.window_sum().average(), c(3));
    }

    #[test]
    fn samples_leave_after_the_window() {
        let mut w = MetricWindow::new(10, None);
        w.record(0, c(10));
        for s in 1..10 {
            w.record(s, c(0));
        }
        assert_eq!(w.window_sum().micros, 10_000_000);
        w.advance(10);
        assert_eq!(
            w.window_sum(),
            WindowSum {
                micros: 0,
                seconds: 10
            }
        );
    }

    #[test]
    fn missing_seconds_count_as_zero() {
        let mut w = MetricWindow::new(10, None);
        w.record(0, c(4));
        w.advance(3);
        assert_eq!(
            w.window_sum(),
            WindowSum {
                micros: 4_000_000,
                seconds: 4
            }
        );
        w.advance(1_000);
        assert_eq!(w.window_sum().micros, 0);
    }

    #[test]
    fn reports_for_the_same_second_add_up() {
        let mut w = MetricWindow::new(10, Some(2));
        w.record(5, c(1));
        w.record(5, c(2));
        assert_eq!(w.get(5), c(3));
        assert_eq!(w.burst_sum().unwrap().micros, 3_000_000);
    }

    #[test]
    fn too_old_samples_are_dropped() {
        let mut w = MetricWindow::new(10, None);
        w.record(20, c(1));
        assert!(!w.record(10, c(5)));
        assert!(w.record(11, c(5)));
        assert_eq!(w.window_sum().micros, 6_000_000);
    }

    #[test]
    fn burst_sum_tracks_the_short_window() {
        let mut w = MetricWindow::new(10, Some(3));
        for s in 0..10 {
            w.record(s, c(u32::try_from(s).unwrap()));
        }
        // Seconds 7, 8, 9.
        assert_eq!(
            w.burst_sum().unwrap(),
            WindowSum {
                micros: 24_000_000,
                seconds: 3
            }
        );
        w.advance(11);
        // Seconds 9, 10, 11.
        assert_eq!(w.burst_sum().unwrap().micros, 9_000_000);
        assert_eq!(
            w.window_sum().micros,
            (2..=9).map(|v| v * 1_000_000).sum::<u128>()
        );
    }

    #[test]
    fn resize_keeps_recent_samples() {
        let mut w = MetricWindow::new(10, None);
        for s in 0..10 {
            w.record(s, c(1));
        }
        let smaller = w.resized(4, None);
        assert_eq!(
            smaller.window_sum(),
            WindowSum {
                micros: 4_000_000,
                seconds: 4
            }
        );
        let larger = w.resized(100, Some(5));
        assert_eq!(
            larger.window_sum(),
            WindowSum {
                micros: 10_000_000,
                seconds: 10
            }
        );
        assert_eq!(larger.burst_sum().unwrap().micros, 5_000_000);
    }
}
