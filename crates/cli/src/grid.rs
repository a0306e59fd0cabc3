//! Plain-text tables and small formats for the management commands'
//! output (`tidal deployments`, `tidal replicas`, `tidal workers`, …).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// Left-aligned columns, two spaces apart, a header row first; trailing
/// spaces trimmed.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `label  value` lines with the labels padded to one width.
pub(crate) fn fields(rows: &[(&str, String)]) -> String {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (label, value) in rows {
        out.push_str(format!("  {label:<width$}  {value}").trim_end());
        out.push('\n');
    }
    out
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A duration for people: `45s`, `3m04s`, `2h05m`, `3d04h`.
pub(crate) fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// A JSON value as a cell: strings bare, null as `-`.
pub(crate) fn cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Bytes as `512 MiB` / `1.5 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const GIB: u64 = 1 << 30;
    if n >= GIB {
        let tenths = n * 10 / GIB;
        if tenths.is_multiple_of(10) {
            format!("{} GiB", tenths / 10)
        } else {
            format!("{}.{} GiB", tenths / 10, tenths % 10)
        }
    } else {
        format!("{} MiB", n >> 20)
    }
}

/// Thousandths of a core as `4 cores` / `0.25 cores`.
pub(crate) fn cores(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{} cores", millis / 1000)
    } else {
        let text = format!("{}.{:03}", millis / 1000, millis % 1000);
        format!("{} cores", text.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_lines_are_trimmed() {
        let text = table(
            &["ID", "PHASE", "REASON"],
            &[
                vec!["r-1".into(), "READY".into(), "-".into()],
                vec!["replica-22".into(), "FAILED".into(), "exit 1".into()],
            ],
        );
        assert_eq!(
            text,
            "ID          PHASE   REASON\nr-1         READY   -\nreplica-22  FAILED  exit 1\n"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(age(45_999), "45s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
        assert_eq!(age(3 * 86_400_000 + 4 * 3_600_000), "3d04h");
        assert_eq!(bytes(268_435_456), "256 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(bytes(64 << 30), "64 GiB");
        assert_eq!(cores(4000), "4 cores");
        assert_eq!(cores(250), "0.25 cores");
        assert_eq!(cell(Some(&Value::Null)), "-");
        assert_eq!(cell(Some(&serde_json::json!(3))), "3");
        assert_eq!(
            fields(&[("a", "1".into()), ("long", "2".into())]),
            "  a     1\n  long  2\n"
        );
    }
}
