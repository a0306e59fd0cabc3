//! `tidal sim --format table`: the result, for people.

use std::io::{self, Write};

use tidal_autoscale::Policy;
use tidal_autoscale::sim::Report;

/// Writes the settings in force, the changes of desired replicas, and the summary.
pub(crate) fn render(
    out: &mut impl Write,
    policy: &Policy,
    report: &Report,
    cold_start: Option<u32>,
) -> io::Result<()> {
    let s = policy.settings();
    writeln!(
        out,
        "settings     min_replica {}, max_replica {}, autoscaling_window {} s, scale_down_delay {} s",
        s.min_replica, s.max_replica, s.autoscaling_window, s.scale_down_delay
    )?;
    let mut target = format!(
        "concurrency_target {} at target_utilization_percentage {} % = {} requests per replica",
        s.concurrency_target,
        s.target_utilization_percentage,
        policy.per_replica()
    );
    if let Some(rate) = s.max_scale_down_rate {
        target += &format!(", max_scale_down_rate {rate} %");
    }
    if let (Some(window), Some(threshold)) = (s.burst_window, s.effective_burst_threshold()) {
        target += &format!(", burst_window {window} s at {threshold} %");
    }
    writeln!(out, "             {target}")?;
    if let Some(seconds) = cold_start {
        writeln!(out, "cold start   {seconds} s")?;
    }
    writeln!(out)?;

    let transitions = report.transitions(s.min_replica);
    if transitions.is_empty() {
        writeln!(
            out,
            "no transitions: desired replicas stayed at {} for the whole trace",
            s.min_replica
        )?;
    } else {
        let mut rows = vec![[
            "second".to_owned(),
            "time".to_owned(),
            "concurrency".to_owned(),
            "replicas".to_owned(),
            String::new(),
        ]];
        // Right-align "from" within the replicas column so the arrows line up.
        let from_width = transitions
            .iter()
            .map(|t| t.from.to_string().len())
            .max()
            .unwrap_or(1);
        for t in &transitions {
            let concurrency = usize::try_from(t.second)
                .ok()
                .and_then(|i| report.timeline.get(i))
                .map_or(0.0, |step| step.concurrency);
            rows.push([
                t.second.to_string(),
                clock(t.second),
                format!("{concurrency:.3}"),
                format!("{:>from_width$} → {}", t.from, t.to),
                if t.to > t.from { "up" } else { "down" }.to_owned(),
            ]);
        }
        let width = |col: usize| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        };
        let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
        for row in &rows {
            let line = format!(
                "{:>w0$}  {:>w1$}  {:>w2$}  {:<w3$}  {}",
                row[0], row[1], row[2], row[3], row[4]
            );
            writeln!(out, "{}", line.trim_end())?;
        }
    }
    writeln!(out)?;

    let summary = &report.summary;
    let seconds = u64::try_from(report.timeline.len()).unwrap_or(u64::MAX);
    writeln!(out, "summary")?;
    let mut line = |label: &str, value: String| writeln!(out, "  {label:<22} {value}");
    line("trace length", format!("{seconds} s ({})", clock(seconds)))?;
    line(
        "replica-seconds",
        format!(
            "{} ({:.2} replica-hours)",
            summary.replica_seconds,
            summary.replica_seconds as f64 / 3600.0
        ),
    )?;
    line("max replicas", summary.max_replicas.to_string())?;
    line("scale-up events", summary.scale_up_events.to_string())?;
    line("scale-down events", summary.scale_down_events.to_string())?;
    if cold_start.is_some() {
        let ready: u64 = report
            .timeline
            .iter()
            .map(|step| u64::from(step.ready_replicas.unwrap_or(0)))
            .sum();
        line(
            "ready replica-seconds",
            format!(
                "{ready} ({} replica-seconds spent starting)",
                summary.replica_seconds.saturating_sub(ready)
            ),
        )?;
    }
    if let Some(waited) = summary.cold_start_wait_request_seconds {
        line(
            "waited on cold starts",
            format!("{waited:.3} request-seconds"),
        )?;
    }
    Ok(())
}

/// `h:mm:ss`.
fn clock(seconds: u64) -> String {
    format!(
        "{}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}
