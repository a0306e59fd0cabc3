//! Traffic traces: one average concurrency per second, read from and written
//! to CSV (`second,concurrency`), and generated from a few shapes.

use std::fmt::Write as _;

use crate::Concurrency;

/// One concurrency sample per second, from second 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// `samples[t]` is the average in-flight requests during second `t`.
    pub samples: Vec<Concurrency>,
}

/// A trace that could not be read, with the line at fault (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct TraceError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub message: String,
}

impl Trace {
    /// Parses CSV with the header `second,concurrency` and one row per second
    /// from 0, in order. Blank lines are skipped.
    pub fn parse_csv(text: &str) -> Result<Trace, TraceError> {
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        let err = |line, message: String| TraceError { line, message };
        let header = lines.by_ref().find(|(_, l)| !l.is_empty());
        match header {
            Some((_, "second,concurrency")) => {}
            Some((n, other)) => {
                return Err(err(
                    n,
                    format!("expected the header `second,concurrency`; got `{other}`"),
                ));
            }
            None => {
                return Err(err(
                    1,
                    "the trace is empty; expected the header `second,concurrency`".into(),
                ));
            }
        }
        let mut samples = Vec::new();
        for (n, line) in lines.filter(|(_, l)| !l.is_empty()) {
            let mut fields = line.split(',');
            let (Some(second), Some(value), None) = (fields.next(), fields.next(), fields.next())
            else {
                return Err(err(
                    n,
                    format!("expected two fields `second,concurrency`; got `{line}`"),
                ));
            };
            let second: u64 = second.trim().parse().map_err(|_| {
                err(
                    n,
                    format!("second must be a whole number; got `{}`", second.trim()),
                )
            })?;
            let expected = samples.len() as u64;
            if second != expected {
                return Err(err(
                    n,
                    format!(
                        "expected second {expected} (one row per second from 0, in order); got {second}"
                    ),
                ));
            }
            let value =
                Concurrency::parse(value).map_err(|e| err(n, format!("concurrency: {e}")))?;
            samples.push(value);
        }
        if samples.is_empty() {
            return Err(err(
                text.lines().count() + 1,
                "the trace has a header but no rows; expected one row per second from 0".into(),
            ));
        }
        Ok(Trace { samples })
    }

    /// Writes the trace as CSV.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("second,concurrency\n");
        for (second, value) in self.samples.iter().enumerate() {
            let _ = writeln!(out, "{second},{value}");
        }
        out
    }

    /// Seconds in the trace.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the trace has no rows.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// The shapes `tidal sim generate` can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Constant load at the peak, with ±5 % noise.
    Steady,
    /// Nothing for the first quarter, the peak for half, nothing for the last quarter.
    Step,
    /// A low baseline (10 % of peak) with five short spikes to the peak.
    Spike,
    /// One day compressed into the trace: a smooth rise to the peak and back, with noise.
    Diurnal,
    /// Bursts of random height and length separated by random idle gaps.
    Bursty,
}

/// A small seeded generator (SplitMix64): the same seed gives the same trace.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Generates `seconds` seconds of `shape` peaking at `peak` requests.
pub fn generate(shape: Shape, seconds: u64, peak: f64, seed: u64) -> Trace {
    let mut rng = SplitMix64(seed);
    let n = seconds.max(1);
    let peak = peak.max(0.0);
    let mut values = Vec::with_capacity(usize::try_from(seconds).unwrap_or(0));
    let noise = |rng: &mut SplitMix64, v: f64| v * (0.95 + 0.1 * rng.unit());
    match shape {
        Shape::Steady => {
            for _ in 0..seconds {
                values.push(noise(&mut rng, peak));
            }
        }
        Shape::Step => {
            for t in 0..seconds {
                let on = t >= n / 4 && t < n / 4 + n / 2;
                values.push(if on { peak } else { 0.0 });
            }
        }
        Shape::Spike => {
            let spike_len = (n / 60).clamp(3, 30);
            let every = n / 5;
            for t in 0..seconds {
                let in_spike =
                    every > 0 && t % every >= every / 2 && t % every < every / 2 + spike_len;
                values.push(if in_spike {
                    peak
                } else {
                    noise(&mut rng, peak * 0.1)
                });
            }
        }
        Shape::Diurnal => {
            for t in 0..seconds {
                let phase = std::f64::consts::TAU * t as f64 / n as f64;
                values.push(noise(&mut rng, peak * (1.0 - phase.cos()) / 2.0));
            }
        }
        Shape::Bursty => {
            let mut t = 0;
            while t < seconds {
                let idle = rng.range(10, (n / 10).max(10));
                let idle_len = usize::try_from(idle.min(seconds - t)).unwrap_or(0);
                values.extend(std::iter::repeat_n(0.0, idle_len));
                t += idle;
                let len = rng.range(5, (n / 20).max(5));
                let height = peak * (0.3 + 0.7 * rng.unit());
                for _ in 0..len.min(seconds.saturating_sub(t)) {
                    values.push(noise(&mut rng, height));
                }
                t += len;
            }
        }
    }
    let samples = values
        .into_iter()
        .map(|v| {
            // Three decimals keep the CSV readable.
            // Values too large for the fixed point saturate rather than vanish.
            Concurrency::from_f64((v * 1000.0).round() / 1000.0)
                .unwrap_or(Concurrency::from_micros(u64::MAX))
        })
        .collect();
    Trace { samples }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_trace() {
        let t = Trace::parse_csv("second,concurrency\n0,0\n1,2.5\n\n2,7\n").unwrap();
        assert_eq!(
            t.samples,
            vec![
                Concurrency::ZERO,
                Concurrency::from_micros(2_500_000),
                Concurrency::from_requests(7)
            ]
        );
        assert_eq!(Trace::parse_csv(&t.to_csv()).unwrap(), t);
    }

    #[test]
    fn malformed_rows_name_their_line() {
        let cases = [
            ("second,value\n", 1, "expected the header"),
            ("", 1, "empty"),
            ("second,concurrency\n", 2, "no rows"),
            (
                "second,concurrency\n0,1\n1,-2\n",
                3,
                "concurrency: expected a number ≥ 0",
            ),
            ("second,concurrency\n0,1\n2,1\n", 3, "expected second 1"),
            ("second,concurrency\n0,1,3\n", 2, "two fields"),
            (
                "second,concurrency\n0,1\nx,1\n",
                3,
                "second must be a whole number",
            ),
            ("second,concurrency\n0\n", 2, "two fields"),
        ];
        for (text, line, message) in cases {
            let e = Trace::parse_csv(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.message.contains(message), "{text:?}: {e}");
        }
    }

    #[test]
    fn generators_are_seeded_and_sized() {
        for shape in [
            Shape::Steady,
            Shape::Step,
            Shape::Spike,
            Shape::Diurnal,
            Shape::Bursty,
        ] {
            let a = generate(shape, 600, 8.0, 7);
            assert_eq!(a.len(), 600, "{shape:?}");
            assert_eq!(a, generate(shape, 600, 8.0, 7), "{shape:?}");
            let max = a.samples.iter().max().unwrap().as_f64();
            assert!(max > 0.0 && max <= 8.0 * 1.05 + 1e-9, "{shape:?}: {max}");
        }
        assert_ne!(
            generate(Shape::Bursty, 600, 8.0, 1),
            generate(Shape::Bursty, 600, 8.0, 2)
        );
    }

    #[test]
    fn step_is_off_on_off() {
        let t = generate(Shape::Step, 100, 4.0, 1);
        assert_eq!(t.samples[24], Concurrency::ZERO);
        assert_eq!(t.samples[25], Concurrency::from_requests(4));
        assert_eq!(t.samples[74], Concurrency::from_requests(4));
        assert_eq!(t.samples[75], Concurrency::ZERO);
    }
}
