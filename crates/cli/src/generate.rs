//! `tidal sim generate`: write a synthetic trace.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tidal_autoscale::trace::{self, Shape};

use crate::{Failure, write_stdout};

/// The longest trace `generate` writes: 31 days.
const MAX_SECONDS: u64 = 31 * 24 * 3600;

/// The highest peak `generate` accepts, far below where concurrency
/// (millionths of a request in a `u64`) would overflow.
const MAX_PEAK: f64 = 1e9;

const LONG_ABOUT: &str = "\
Write a synthetic traffic trace (CSV) for `tidal sim --trace`.

The trace has the header `second,concurrency` and one row per second, with
values rounded to three decimals. The same shape, length, peak and seed
always give the same trace. Exit status: 2 for invalid options; 1 when the
output cannot be written.";

/// Write a synthetic traffic trace (CSV) for `tidal sim --trace`.
#[derive(Debug, Args)]
#[command(long_about = LONG_ABOUT)]
pub(crate) struct GenerateArgs {
    /// The shape of the traffic.
    #[arg(value_enum)]
    shape: ShapeArg,

    /// Length of the trace in seconds, from 1 to 31 days (2678400).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS)
    )]
    seconds: u64,

    /// Peak concurrency (requests in flight): a number ≥ 0.
    #[arg(
        long,
        value_name = "X",
        default_value_t = 10.0,
        value_parser = parse_peak,
        allow_negative_numbers = true
    )]
    peak: f64,

    /// Seed for the noise and the bursts; the same seed gives the same trace.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,

    /// Write the trace to FILE instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Traffic shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ShapeArg {
    /// Constant load at the peak, with ±5 % noise.
    Steady,
    /// Nothing for a quarter, the peak for half, nothing for a quarter.
    Step,
    /// A baseline of 10 % of the peak with five short spikes to the peak.
    Spike,
    /// One day compressed: a smooth rise to the peak and back, with noise.
    Diurnal,
    /// Bursts of random height and length between random idle gaps.
    Bursty,
}

impl From<ShapeArg> for Shape {
    fn from(shape: ShapeArg) -> Self {
        match shape {
            ShapeArg::Steady => Shape::Steady,
            ShapeArg::Step => Shape::Step,
            ShapeArg::Spike => Shape::Spike,
            ShapeArg::Diurnal => Shape::Diurnal,
            ShapeArg::Bursty => Shape::Bursty,
        }
    }
}

fn parse_peak(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(peak) if peak.is_finite() && (0.0..=MAX_PEAK).contains(&peak) => Ok(peak),
        _ => Err(format!("the peak must be a number from 0 to {MAX_PEAK}")),
    }
}

pub(crate) fn run(args: GenerateArgs) -> Result<(), Failure> {
    let csv = trace::generate(args.shape.into(), args.seconds, args.peak, args.seed).to_csv();
    match args.output {
        Some(path) => std::fs::write(&path, csv)
            .with_context(|| format!("{}: cannot write", path.display()))
            .map_err(Failure::Other),
        None => write_stdout(|out| out.write_all(csv.as_bytes())),
    }
}
