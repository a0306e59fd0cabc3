//! Concurrency as exact fixed-point numbers, and the meter that turns
//! request starts and ends into 1-second time-weighted averages.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

/// Average in-flight requests, in millionths of a request.
///
/// Fixed point keeps sums and threshold comparisons exact: with a target of
/// 10 at 70 %, an average of exactly 7.0 needs one replica and 7.000001 needs
/// two, with no floating-point surprises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Concurrency(u64);

impl Concurrency {
    /// No requests.
    pub const ZERO: Concurrency = Concurrency(0);
    /// Millionths per request.
    pub const SCALE: u64 = 1_000_000;

    /// From millionths of a request.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// From a whole number of requests.
    pub const fn from_requests(requests: u32) -> Self {
        Self(requests as u64 * Self::SCALE)
    }

    /// From a float, rounded to the nearest millionth; `None` if negative,
    /// not finite, or too large.
    pub fn from_f64(value: f64) -> Option<Self> {
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let micros = (value * Self::SCALE as f64).round();
        // u64::MAX as f64 rounds up to 2^64, so compare with `<`.
        if micros < u64::MAX as f64 {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Some(Self(micros as u64))
        } else {
            None
        }
    }

    /// Millionths of a request.
    pub const fn micros(self) -> u64 {
        self.0
    }

    /// As a float (for display and JSON).
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / Self::SCALE as f64
    }

    /// Parses a decimal such as `7`, `7.25` or `1e3`. Decimals beyond the
    /// sixth place are rounded half up.
    pub fn parse(text: &str) -> Result<Self, ParseConcurrencyError> {
        let text = text.trim();
        let bad = || ParseConcurrencyError(text.to_owned());
        if text.contains(['e', 'E']) {
            let value: f64 = text.parse().map_err(|_| bad())?;
            return Self::from_f64(value).ok_or_else(bad);
        }
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(bad());
        }
        let whole: u64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad())?
        };
        let mut micros: u64 = 0;
        for (i, b) in frac.bytes().take(6).enumerate() {
            let place = 10u64.pow(5 - u32::try_from(i).unwrap_or(5));
            micros += u64::from(b - b'0') * place;
        }
        if frac.as_bytes().get(6).is_some_and(|b| *b >= b'5') {
            micros += 1;
        }
        whole
            .checked_mul(Self::SCALE)
            .and_then(|w| w.checked_add(micros))
            .map(Self)
            .ok_or_else(bad)
    }

    /// Sum, saturating.
    pub fn saturating_add(self, other: Concurrency) -> Concurrency {
        Self(self.0.saturating_add(other.0))
    }
}

impl fmt::Display for Concurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / Self::SCALE;
        let frac = self.0 % Self::SCALE;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let frac = format!("{frac:06}");
        write!(f, "{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// A concurrency value that is not a non-negative decimal number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a number ≥ 0 (such as 3 or 2.5); got {0:?}")]
pub struct ParseConcurrencyError(String);

/// Turns request starts and ends into 1-second time-weighted averages, the
/// samples the policy consumes: two requests of 500 ms in one second give 1.0.
///
/// Times are offsets from any fixed origin (the caller's clock; the meter never
/// reads one). A time earlier than the last one seen counts as the last one.
#[derive(Debug, Clone)]
pub struct ConcurrencyMeter {
    /// The second being accumulated.
    second: u64,
    /// Microseconds into `second` already integrated.
    offset_us: u64,
    /// Requests in flight now.
    in_flight: u64,
    /// Request-microseconds accumulated in `second` (equals the average in millionths).
    area: u64,
    /// Finished seconds not yet taken.
    closed: VecDeque<(u64, Concurrency)>,
}

/// The most finished seconds a meter keeps before dropping the oldest.
pub const METER_BACKLOG: usize = 3600;

impl ConcurrencyMeter {
    /// A meter with nothing in flight, starting at `at`.
    pub fn new(at: Duration) -> Self {
        Self {
            second: at.as_secs(),
            offset_us: u64::from(at.subsec_micros()),
            in_flight: 0,
            area: 0,
            closed: VecDeque::new(),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// A request started at `at`.
    pub fn start(&mut self, at: Duration) {
        self.advance(at);
        self.in_flight += 1;
    }

    /// A request finished (or was abandoned) at `at`.
    pub fn finish(&mut self, at: Duration) {
        self.advance(at);
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Closes every second that ended by `at` and returns their averages in
    /// order. Seconds with nothing in flight are returned too, as zero.
    pub fn take_closed(&mut self, at: Duration) -> Vec<(u64, Concurrency)> {
        self.advance(at);
        self.closed.drain(..).collect()
    }

    fn advance(&mut self, at: Duration) {
        let (second, offset) = (at.as_secs(), u64::from(at.subsec_micros()));
        if (second, offset) <= (self.second, self.offset_us) {
            return;
        }
        if second == self.second {
            self.area += self.in_flight * (offset - self.offset_us);
            self.offset_us = offset;
            return;
        }
        // Finish the current second.
        self.area += self.in_flight * (1_000_000 - self.offset_us);
        self.push_closed(self.second, Concurrency::from_micros(self.area));
        // Whole seconds in between carry the constant in-flight count; only
        // the last METER_BACKLOG of them can be kept anyway.
        let gap_start = (self.second + 1).max(second.saturating_sub(METER_BACKLOG as u64));
        for s in gap_start..second {
            self.push_closed(s, Concurrency::from_micros(self.in_flight * 1_000_000));
        }
        self.second = second;
        self.offset_us = offset;
        self.area = self.in_flight * offset;
    }

    fn push_closed(&mut self, second: u64, value: Concurrency) {
        if self.closed.len() == METER_BACKLOG {
            self.closed.pop_front();
        }
        self.closed.push_back((second, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn parse_is_exact_for_decimals() {
        assert_eq!(
            Concurrency::parse("7").unwrap(),
            Concurrency::from_requests(7)
        );
        assert_eq!(Concurrency::parse("7.0").unwrap().micros(), 7_000_000);
        assert_eq!(Concurrency::parse("0.1").unwrap().micros(), 100_000);
        assert_eq!(Concurrency::parse(".5").unwrap().micros(), 500_000);
        assert_eq!(Concurrency::parse("7.0000001").unwrap().micros(), 7_000_000);
        assert_eq!(Concurrency::parse("7.0000005").unwrap().micros(), 7_000_001);
        assert_eq!(
            Concurrency::parse("1e3").unwrap(),
            Concurrency::from_requests(1000)
        );
        for bad in ["", "-1", "abc", "1.2.3", "nan", "inf", "1,5", "."] {
            assert!(Concurrency::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_trims_trailing_zeros() {
        assert_eq!(Concurrency::from_micros(7_250_000).to_string(), "7.25");
        assert_eq!(Concurrency::from_requests(3).to_string(), "3");
        assert_eq!(
            Concurrency::from_f64(0.000001).unwrap().to_string(),
            "0.000001"
        );
        assert_eq!(Concurrency::from_f64(-1.0), None);
    }

    #[test]
    fn two_half_second_requests_in_one_second_average_one() {
        let mut m = ConcurrencyMeter::new(ms(0));
        m.start(ms(0));
        m.finish(ms(500));
        m.start(ms(500));
        m.finish(ms(1000));
        assert_eq!(
            m.take_closed(ms(1000)),
            vec![(0, Concurrency::from_requests(1))]
        );
    }

    #[test]
    fn overlapping_requests_are_time_weighted() {
        let mut m = ConcurrencyMeter::new(ms(0));
        m.start(ms(0)); // 1 in flight for 250 ms
        m.start(ms(250)); // 2 in flight for 500 ms
        m.finish(ms(750)); // 1 in flight for 250 ms
        let closed = m.take_closed(ms(1000));
        assert_eq!(closed, vec![(0, Concurrency::from_micros(1_500_000))]);
        // The request still in flight fills the next seconds.
        assert_eq!(
            m.take_closed(ms(3000)),
            vec![
                (1, Concurrency::from_requests(1)),
                (2, Concurrency::from_requests(1))
            ]
        );
        assert_eq!(m.in_flight(), 1);
    }

    #[test]
    fn earlier_times_count_as_the_latest() {
        let mut m = ConcurrencyMeter::new(ms(1000));
        m.start(ms(1500));
        m.finish(ms(1200)); // arrives late: counted at 1500
        assert_eq!(m.take_closed(ms(2000)), vec![(1, Concurrency::ZERO)]);
    }

    #[test]
    fn backlog_is_bounded() {
        let mut m = ConcurrencyMeter::new(ms(0));
        m.start(ms(0));
        let closed = m.take_closed(Duration::from_secs(10_000));
        assert_eq!(closed.len(), METER_BACKLOG);
        assert_eq!(closed.last().unwrap().0, 9_999);
    }
}
