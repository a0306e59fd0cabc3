//! tidal's autoscaling policy, as a pure library.
//!
//! - [`Concurrency`] and [`ConcurrencyMeter`]: exact fixed-point concurrency,
//!   and 1-second time-weighted averages from request starts and ends.
//! - [`MetricWindow`]: the last `autoscaling_window` seconds with running sums.
//! - [`Policy`], [`Autoscaler`], [`Decision`]: the decision of DESIGN.md §3.
//! - [`sim`]: the trace simulator behind `tidal sim`, and [`trace`]: traces
//!   (CSV) and the generators.
//!
//! **Architecture invariant:** no I/O, no clocks, no tokio, ractor, tonic or
//! openraft. Every function that depends on time takes `now`.

mod concurrency;
mod max_queue;
mod policy;
pub mod sim;
pub mod trace;
mod window;

pub use concurrency::{Concurrency, ConcurrencyMeter, METER_BACKLOG, ParseConcurrencyError};
pub use max_queue::MaxQueue;
pub use policy::{Autoscaler, Decision, Policy, Reason};
pub use window::{MetricWindow, WindowSum};
