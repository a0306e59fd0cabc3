//! [`KeyRing`]: every API key record in memory, kept fresh from the store
//! (list API_KEYS, then follow its watch from the listed revision; list
//! again on any break), so verifying a request costs no store call.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_store::app::{EventFilter, Table};
use tidal_store::client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::admin::KeyInfo;
use crate::key::{
    AuthError, Scope, constant_time_eq, key_from_header, parse_key, sha256_hex_bytes,
};

/// How long the ring waits before listing again after a break.
const RELIST_PAUSE: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct State {
    keys: RwLock<HashMap<String, pb::ApiKey>>,
}

impl State {
    fn keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, pb::ApiKey>> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn keys_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, pb::ApiKey>> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops the follower when the last ring handle is dropped.
#[derive(Debug)]
struct Follower(JoinHandle<()>);

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The API keys, in memory, following the store. Cheap to clone; the
/// follower stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct KeyRing {
    state: Arc<State>,
    /// The store revision the ring is up to date with; 0 until the first
    /// list.
    revision: watch::Receiver<u64>,
    _follower: Arc<Follower>,
}

impl KeyRing {
    /// Starts following the store's API_KEYS table (needs a tokio runtime).
    pub fn start(client: Client) -> KeyRing {
        let state = Arc::new(State::default());
        let (tx, revision) = watch::channel(0);
        let follower = tokio::spawn(follow(client, Arc::clone(&state), tx));
        KeyRing {
            state,
            revision,
            _follower: Arc::new(Follower(follower)),
        }
    }

    /// Whether the keys were read from the store at least once.
    pub fn is_loaded(&self) -> bool {
        *self.revision.borrow() > 0
    }

    /// The store revision the ring has caught up with (0 before the first
    /// list).
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits until the ring has caught up with store revision `revision`
    /// (e.g. the revision of a key's creation or revocation); false if
    /// `timeout` passed first.
    pub async fn wait_for_revision(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.revision.clone();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Learns a record this process just wrote (so its own writes count at
    /// once, before the watch delivers them).
    pub fn learn(&self, record: pb::ApiKey) {
        self.state.keys_mut().insert(record.id.clone(), record);
    }

    /// Checks a request's `Authorization` header for a live key with
    /// `scope`; what may be shown of the key.
    pub fn verify(&self, header: Option<&str>, scope: Scope) -> Result<KeyInfo, AuthError> {
        self.check(header, scope, KeyInfo::from_record)
    }

    /// Like [`KeyRing::verify`] without describing the key: for every
    /// request of a data path (no allocation when the key is good).
    pub fn authorize(&self, header: Option<&str>, scope: Scope) -> Result<(), AuthError> {
        self.check(header, scope, |_| ())
    }

    fn check<T>(
        &self,
        header: Option<&str>,
        scope: Scope,
        then: impl FnOnce(&pb::ApiKey) -> T,
    ) -> Result<T, AuthError> {
        let key = key_from_header(header)?;
        let parsed = parse_key(key)?;
        if !self.is_loaded() {
            return Err(AuthError::NotLoaded);
        }
        let digest = sha256_hex_bytes(parsed.whole);
        let keys = self.state.keys();
        let unknown = || AuthError::Unknown {
            id: parsed.id.to_owned(),
        };
        let record = keys.get(parsed.id).ok_or_else(unknown)?;
        if !constant_time_eq(record.sha256.as_bytes(), &digest) {
            return Err(unknown());
        }
        if record.revoked {
            return Err(AuthError::Revoked {
                id: record.id.clone(),
            });
        }
        if !record.scopes.iter().any(|s| s == scope.as_str()) {
            let info = KeyInfo::from_record(record);
            return Err(AuthError::WrongScope {
                has: info.scopes_text(),
                id: info.id,
                needed: scope,
            });
        }
        Ok(then(record))
    }
}

/// Lists and follows until the ring is dropped; lists again after a break.
async fn follow(client: Client, state: Arc<State>, revision: watch::Sender<u64>) {
    loop {
        if let Err(e) = once(&client, &state, &revision).await {
            tracing::warn!(error = %e, "key ring lost the store watch; listing again");
        }
        if revision.is_closed() {
            return;
        }
        tokio::time::sleep(RELIST_PAUSE).await;
    }
}

/// Lists API_KEYS, then applies watch events until an error.
async fn once(client: &Client, state: &State, revision: &watch::Sender<u64>) -> Result<(), String> {
    let (rows, listed_at) = client
        .list(Table::ApiKeys, "")
        .await
        .map_err(|e| e.to_string())?;
    let keys: HashMap<String, pb::ApiKey> = rows
        .into_iter()
        .filter_map(|(id, kv)| match pb::ApiKey::decode(kv.value.as_slice()) {
            Ok(key) => Some((id, key)),
            Err(e) => {
                tracing::warn!(key = %id, error = %e, "undecodable API key record ignored");
                None
            }
        })
        .collect();
    *state.keys_mut() = keys;
    revision.send_replace(listed_at.max(1));
    let filter = EventFilter {
        table: Some(Table::ApiKeys),
        key_prefix: String::new(),
    };
    let mut stream = client
        .watch(listed_at + 1, &filter)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => return Err("the watch ended".to_owned()),
            Err(status) => return Err(status.message().to_owned()),
        };
        let Some(pb::watch_response::Response::Events(events)) = message.response else {
            return Err("the watch was compacted".to_owned());
        };
        {
            let mut keys = state.keys_mut();
            for event in events.events {
                if event.kind == i32::from(pb::change_event::Kind::Delete) {
                    keys.remove(&event.key);
                    continue;
                }
                let value = event.value.map(|v| v.value).unwrap_or_default();
                match pb::ApiKey::decode(value.as_slice()) {
                    Ok(key) => {
                        keys.insert(event.key, key);
                    }
                    Err(e) => {
                        tracing::warn!(key = %event.key, error = %e, "undecodable API key ignored");
                        keys.remove(&event.key);
                    }
                }
            }
        }
        if message.next_revision > 0 {
            let seen = message.next_revision - 1;
            revision.send_if_modified(|r| {
                let newer = seen > *r;
                if newer {
                    *r = seen;
                }
                newer
            });
        }
    }
}
