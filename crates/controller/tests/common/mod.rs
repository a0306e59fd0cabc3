//! An in-memory store for actor and supervisor tests.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;

use tidal_controller::port::{BoxFuture, Clock, Loaded, ScaleStore, StoreError, WriteResult};
use tidal_store::app::Fence;
use tidal_types::AutoscalingSettings;

/// One stored write: (clock second, desired).
pub type Writes = Vec<(u64, u32)>;

/// An in-memory store: one deployment per key, one live epoch per shard.
pub struct FakeStore {
    pub clock: Clock,
    pub deployments: Mutex<HashMap<String, Loaded>>,
    pub live_epoch: Mutex<u64>,
    pub writes: Mutex<Writes>,
    pub unavailable: Mutex<bool>,
    /// Panic in the next write (a bug in the actor's path), once.
    pub panic_next_write: Mutex<bool>,
}

impl FakeStore {
    pub fn new(
        clock: Clock,
        deployment: &str,
        settings: AutoscalingSettings,
        desired: u32,
    ) -> Arc<Self> {
        let mut deployments = HashMap::new();
        deployments.insert(deployment.to_owned(), Loaded { settings, desired });
        Arc::new(Self {
            clock,
            deployments: Mutex::new(deployments),
            live_epoch: Mutex::new(7),
            writes: Mutex::default(),
            unavailable: Mutex::new(false),
            panic_next_write: Mutex::new(false),
        })
    }

    pub fn writes(&self) -> Writes {
        self.writes.lock().unwrap().clone()
    }
}

impl ScaleStore for FakeStore {
    fn load<'a>(
        &'a self,
        deployment: &'a str,
    ) -> BoxFuture<'a, Result<Option<Loaded>, StoreError>> {
        Box::pin(async move { Ok(self.deployments.lock().unwrap().get(deployment).cloned()) })
    }

    fn write_desired<'a>(
        &'a self,
        deployment: &'a str,
        fence: Fence,
        desired: u32,
        _reason: &'a str,
    ) -> BoxFuture<'a, Result<WriteResult, StoreError>> {
        Box::pin(async move {
            if std::mem::take(&mut *self.panic_next_write.lock().unwrap()) {
                panic!("injected failure in write_desired");
            }
            if *self.unavailable.lock().unwrap() {
                return Err(StoreError("unavailable".into()));
            }
            if fence.epoch != *self.live_epoch.lock().unwrap() {
                return Ok(WriteResult::StaleEpoch);
            }
            let mut deployments = self.deployments.lock().unwrap();
            let Some(d) = deployments.get_mut(deployment) else {
                return Ok(WriteResult::Gone);
            };
            d.desired = desired;
            self.writes.lock().unwrap().push(((self.clock)(), desired));
            Ok(WriteResult::Written)
        })
    }
}

/// A clock on paused tokio time: second 0 when the test starts.
pub fn paused_clock() -> Clock {
    let start = tokio::time::Instant::now();
    Arc::new(move || start.elapsed().as_secs())
}
