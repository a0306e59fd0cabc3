//! The management API against a real in-process store: success and error
//! cases for every route. Records are written straight into the store (or
//! through the create endpoint); calls are raw HTTP/1.1.

#[path = "api/auth.rs"]
mod auth;
#[path = "api/cluster.rs"]
mod cluster;
#[path = "api/deployments.rs"]
mod deployments;
#[path = "api/environments.rs"]
mod environments;
#[path = "api/frozen.rs"]
mod frozen;
#[path = "api/promote.rs"]
mod promote;
#[path = "api/support.rs"]
mod support;
