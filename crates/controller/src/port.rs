//! What a deployment actor needs from the store, as a trait, so actor tests
//! run against an in-memory fake and production against the store client
//! ([`crate::store_port::StorePort`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tidal_store::app::Fence;
use tidal_types::AutoscalingSettings;

/// A boxed future, for the object-safe [`ScaleStore`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A deployment as its actor needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Its autoscaling settings.
    pub settings: AutoscalingSettings,
    /// The desired replicas the store holds now.
    pub desired: u32,
}

/// The answer to a fenced write of desired replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteResult {
    /// Stored.
    Written,
    /// The shard epoch is no longer the live lease's: stop acting.
    StaleEpoch,
    /// The deployment no longer exists.
    Gone,
}

/// A store failure worth retrying (unavailable, timed out, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// The store, as deployment actors use it.
pub trait ScaleStore: Send + Sync + 'static {
    /// Reads `deployment`; `None` if it does not exist.
    fn load<'a>(&'a self, deployment: &'a str)
    -> BoxFuture<'a, Result<Option<Loaded>, StoreError>>;

    /// Sets `deployment`'s desired replicas, fenced with `fence`.
    fn write_desired<'a>(
        &'a self,
        deployment: &'a str,
        fence: Fence,
        desired: u32,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, StoreError>>;
}

/// A shared [`ScaleStore`].
pub type SharedStore = Arc<dyn ScaleStore>;

/// The controller's clock in whole seconds since the Unix epoch. Production
/// reads the system clock; tests pass one driven by paused tokio time.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    })
}
