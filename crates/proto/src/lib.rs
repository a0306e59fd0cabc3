//! tidal's protobuf messages (package `tidal.v1`, in `proto/tidal/v1/`) and
//! their conversions to and from the domain types of `tidal-types`.
//!
//! The conversions are this crate's API: other crates build a
//! `tidal_types` value, turn it into its [`pb`] message with `From`, and
//! encode it with `prost`; decoded messages come back with `TryFrom`, which
//! validates ids and refuses UNSPECIFIED or unknown enum values with a
//! [`ConversionError`] naming the field. A user's `DeploymentSpec` becomes
//! the `DeploymentRecord` the store keeps with [`deployment_record`], and
//! replaces a stored one's spec with [`replace_spec`].
//!
//! **Architecture invariant:** the messages mirror `tidal-types` field for
//! field and are persisted: a field number, once used, is never reused, and
//! the frozen-bytes tests in `tests/frozen_bytes.rs` are never edited.
//! Ranges are not checked here (they depend on the cluster's limits);
//! `AutoscalingSettings::validate` does that.

mod convert;
mod spec;

pub use convert::ConversionError;
pub use spec::{SpecRecordError, deployment_record, replace_spec, spec_message};

/// The code `prost` generates from `proto/tidal/v1/*.proto`.
///
/// `tonic-prost-build` marks each generated type `#[allow(clippy::all)]`;
/// the generated gRPC clients and servers also spell out paths in full and
/// leave some types without `Debug`, which the workspace lints would flag.
#[allow(unused_qualifications, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tidal.v1.rs"));
}
