//! How many requests `tidal load` keeps in flight at each moment: a
//! constant, a list of steps, or a periodic spike. Pure: `at(elapsed)`.

use std::fmt;
use std::time::Duration;

/// One step of `--steps`: `concurrency` for `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub concurrency: usize,
    pub length: Duration,
}

/// `--steps "4x30s,8x60s,0x30s"`: each step in turn, then the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Steps(pub Vec<Step>);

/// `--spike "base=2,peak=16,every=60s,for=10s"`: each period of `every`
/// keeps `base` in flight, then `peak` for its last `length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spike {
    pub base: usize,
    pub peak: usize,
    pub every: Duration,
    pub length: Duration,
}

/// The target concurrency over time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Schedule {
    Constant {
        concurrency: usize,
        duration: Duration,
    },
    Steps(Steps),
    Spike {
        spike: Spike,
        duration: Duration,
    },
}

impl Schedule {
    /// How long the load runs.
    pub(crate) fn duration(&self) -> Duration {
        match self {
            Schedule::Constant { duration, .. } | Schedule::Spike { duration, .. } => *duration,
            Schedule::Steps(steps) => steps.0.iter().map(|s| s.length).sum(),
        }
    }

    /// The most requests it ever keeps in flight (the workers to start).
    pub(crate) fn max(&self) -> usize {
        match self {
            Schedule::Constant { concurrency, .. } => *concurrency,
            Schedule::Steps(steps) => steps.0.iter().map(|s| s.concurrency).max().unwrap_or(0),
            Schedule::Spike { spike, .. } => spike.base.max(spike.peak),
        }
    }

    /// The concurrency `elapsed` after the start (0 once it has ended).
    pub(crate) fn at(&self, elapsed: Duration) -> usize {
        if elapsed >= self.duration() {
            return 0;
        }
        match self {
            Schedule::Constant { concurrency, .. } => *concurrency,
            Schedule::Steps(steps) => {
                let mut end = Duration::ZERO;
                for step in &steps.0 {
                    end += step.length;
                    if elapsed < end {
                        return step.concurrency;
                    }
                }
                0
            }
            Schedule::Spike { spike, .. } => {
                let every = spike.every.as_nanos();
                let into = elapsed.as_nanos() % every;
                if into >= every - spike.length.as_nanos() {
                    spike.peak
                } else {
                    spike.base
                }
            }
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Constant {
                concurrency,
                duration,
            } => write!(f, "concurrency {concurrency} for {}", secs(*duration)),
            Schedule::Steps(steps) => {
                let parts: Vec<String> = steps
                    .0
                    .iter()
                    .map(|s| format!("{}x{}", s.concurrency, secs(s.length)))
                    .collect();
                write!(f, "steps {}", parts.join(","))
            }
            Schedule::Spike { spike, duration } => write!(
                f,
                "spike base={},peak={},every={},for={} for {}",
                spike.base,
                spike.peak,
                secs(spike.every),
                secs(spike.length),
                secs(*duration)
            ),
        }
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A duration: a number with `ms`, `s`, `m` or `h` (a bare number is
/// seconds), e.g. `30s`, `1.5m`, `250ms`. Must be more than zero.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?}; use ms, s, m or h, e.g. 30s"
            ));
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number with a unit, e.g. 30s or 1.5m"))?;
    let seconds = value * scale;
    if !(seconds > 0.0 && seconds.is_finite() && seconds < 1e9) {
        return Err(format!("{text:?}: must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_count(what: &str, text: &str) -> Result<usize, String> {
    text.trim().parse().map_err(|_| {
        format!("{what} {text:?} must be a whole number of requests in flight (0 or more)")
    })
}

/// `--steps`: `CONCURRENCYxDURATION,…`, e.g. `4x30s,8x60s,0x30s`.
pub(crate) fn parse_steps(text: &str) -> Result<Steps, String> {
    let mut steps = Vec::new();
    for (i, part) in text.split(',').enumerate() {
        let n = i + 1;
        let Some((count, length)) = part.trim().split_once(['x', 'X']) else {
            return Err(format!(
                "step {n} {part:?}: expected CONCURRENCYxDURATION, e.g. 8x60s"
            ));
        };
        let concurrency = parse_count(&format!("step {n}: concurrency"), count)?;
        let length = parse_duration(length).map_err(|e| format!("step {n}: duration {e}"))?;
        steps.push(Step {
            concurrency,
            length,
        });
    }
    if steps.iter().all(|s| s.concurrency == 0) {
        return Err(format!(
            "{text:?}: every step has concurrency 0; at least one must send requests"
        ));
    }
    Ok(Steps(steps))
}

/// `--spike`: `base=N,peak=N,every=DURATION,for=DURATION`, in any order.
pub(crate) fn parse_spike(text: &str) -> Result<Spike, String> {
    let (mut base, mut peak, mut every, mut length) = (None, None, None, None);
    for part in text.split(',') {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!(
                "{part:?}: expected KEY=VALUE (keys base, peak, every, for)"
            ));
        };
        let slot_set = match key.trim() {
            "base" => base.replace(parse_count("base", value)?).is_some(),
            "peak" => peak.replace(parse_count("peak", value)?).is_some(),
            "every" => every
                .replace(parse_duration(value).map_err(|e| format!("every: {e}"))?)
                .is_some(),
            "for" => length
                .replace(parse_duration(value).map_err(|e| format!("for: {e}"))?)
                .is_some(),
            other => {
                return Err(format!(
                    "{part:?}: unknown key {other:?}; the keys are base, peak, every, for"
                ));
            }
        };
        if slot_set {
            return Err(format!("{part:?}: {} is given twice", key.trim()));
        }
    }
    let missing =
        |name: &str| format!("{name}= is missing (e.g. base=2,peak=16,every=60s,for=10s)");
    let spike = Spike {
        base: base.ok_or_else(|| missing("base"))?,
        peak: peak.ok_or_else(|| missing("peak"))?,
        every: every.ok_or_else(|| missing("every"))?,
        length: length.ok_or_else(|| missing("for"))?,
    };
    if spike.length >= spike.every {
        return Err(format!(
            "for={} must be shorter than every={}",
            secs(spike.length),
            secs(spike.every)
        ));
    }
    if spike.base.max(spike.peak) == 0 {
        return Err("base and peak are both 0; at least one must send requests".to_owned());
    }
    Ok(spike)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn durations_take_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("30s"), Ok(s(30)));
        assert_eq!(parse_duration("45"), Ok(s(45)));
        assert_eq!(parse_duration("2m"), Ok(s(120)));
        assert_eq!(parse_duration("1h"), Ok(s(3600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Ok(s(90)));
        let unit = parse_duration("10d").unwrap_err();
        assert!(unit.contains("unknown unit \"d\""), "{unit}");
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
        assert!(
            parse_duration("s")
                .unwrap_err()
                .contains("expected a number")
        );
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn steps_parse_in_order() {
        let steps = parse_steps("4x30s,8x60s,0x30s").unwrap();
        assert_eq!(
            steps.0,
            vec![
                Step {
                    concurrency: 4,
                    length: s(30)
                },
                Step {
                    concurrency: 8,
                    length: s(60)
                },
                Step {
                    concurrency: 0,
                    length: s(30)
                },
            ]
        );
        assert_eq!(parse_steps(" 2X1m ").unwrap().0[0].length, s(60));
    }

    #[test]
    fn step_errors_name_the_bad_step() {
        let cases = [
            (
                "4x30s,8y60s",
                "step 2 \"8y60s\": expected CONCURRENCYxDURATION",
            ),
            ("4x30s,-1x5s", "step 2: concurrency \"-1\""),
            (
                "4x30s,2x0s,1x1s",
                "step 2: duration \"0s\": must be more than zero",
            ),
            ("4x30s,2x5q", "step 2: duration \"5q\": unknown unit"),
            ("4x30s,,1x1s", "step 2 \"\""),
            ("0x30s,0x5s", "every step has concurrency 0"),
        ];
        for (text, expected) in cases {
            let e = parse_steps(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn spike_parses_in_any_order() {
        let spike = parse_spike("every=60s,for=10s,peak=16,base=2").unwrap();
        assert_eq!(
            spike,
            Spike {
                base: 2,
                peak: 16,
                every: s(60),
                length: s(10)
            }
        );
    }

    #[test]
    fn spike_errors_name_the_bad_part() {
        let cases = [
            ("base=2,peak=16,every=60s", "for= is missing"),
            (
                "base=2,peak=x,every=60s,for=10s",
                "peak \"x\" must be a whole number",
            ),
            (
                "base=2,peak=16,every=60s,for=10z",
                "for: \"10z\": unknown unit",
            ),
            (
                "base=2,peak=16,every=0s,for=10s",
                "every: \"0s\": must be more than zero",
            ),
            (
                "base=2,peak=16,every=60s,for=60s",
                "for=60s must be shorter than every=60s",
            ),
            ("base=2,top=16,every=60s,for=10s", "unknown key \"top\""),
            (
                "base=2,base=3,peak=1,every=60s,for=1s",
                "base is given twice",
            ),
            (
                "base=2,peak,every=60s,for=1s",
                "\"peak\": expected KEY=VALUE",
            ),
            ("base=0,peak=0,every=60s,for=1s", "both 0"),
        ];
        for (text, expected) in cases {
            let e = parse_spike(text).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn steps_schedule_follows_each_step_then_ends() {
        let schedule = Schedule::Steps(parse_steps("4x30s,8x60s,0x30s").unwrap());
        assert_eq!(schedule.duration(), s(120));
        assert_eq!(schedule.max(), 8);
        assert_eq!(schedule.at(s(0)), 4);
        assert_eq!(schedule.at(s(29)), 4);
        assert_eq!(schedule.at(s(30)), 8);
        assert_eq!(schedule.at(s(89)), 8);
        assert_eq!(schedule.at(s(90)), 0);
        assert_eq!(schedule.at(s(500)), 0);
    }

    #[test]
    fn spike_schedule_peaks_at_the_end_of_each_period() {
        let spike = parse_spike("base=2,peak=16,every=60s,for=10s").unwrap();
        let schedule = Schedule::Spike {
            spike,
            duration: s(150),
        };
        assert_eq!(schedule.max(), 16);
        assert_eq!(schedule.at(s(0)), 2);
        assert_eq!(schedule.at(s(49)), 2);
        assert_eq!(schedule.at(s(50)), 16);
        assert_eq!(schedule.at(s(59)), 16);
        assert_eq!(schedule.at(s(60)), 2);
        assert_eq!(schedule.at(s(115)), 16);
        assert_eq!(schedule.at(s(150)), 0);
    }

    #[test]
    fn constant_schedule_ends_after_its_duration() {
        let schedule = Schedule::Constant {
            concurrency: 8,
            duration: s(60),
        };
        assert_eq!(schedule.at(s(59)), 8);
        assert_eq!(schedule.at(s(60)), 0);
        assert_eq!(schedule.to_string(), "concurrency 8 for 60s");
    }
}
