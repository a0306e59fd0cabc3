//! Creating, listing and revoking keys in the store's API_KEYS table.
//!
//! [`create`] returns the plain key exactly once; nothing else ever sees
//! it. [`list`] and [`revoke`] answer [`KeyInfo`]s, which hold neither the
//! key nor its digest. A revoked key keeps its record (so its id is never
//! handed out again) with `revoked` set.

use std::time::Duration;

use prost::Message;
use serde::Serialize;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{Outcome, Precondition, Rejection, Table};
use tidal_store::client::{Client, ClientError};

use crate::key::{Scope, generate, sha256_hex};

/// The longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 100;

/// What may be shown of a key: never the key, nor its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// What it may do.
    pub scopes: Vec<Scope>,
    /// When it was created (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Whether it was revoked.
    pub revoked: bool,
}

impl KeyInfo {
    /// The shown part of a stored key. Scopes this version does not know
    /// (written by a newer one) are left out.
    pub fn from_record(key: &pb::ApiKey) -> KeyInfo {
        KeyInfo {
            id: key.id.clone(),
            name: key.name.clone(),
            scopes: key.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            created_at_ms: key.created_at_ms,
            revoked: key.revoked,
        }
    }

    /// Its scopes, comma-separated (`-` for none).
    pub fn scopes_text(&self) -> String {
        if self.scopes.is_empty() {
            return "-".to_owned();
        }
        let names: Vec<&str> = self.scopes.iter().map(|s| s.as_str()).collect();
        names.join(",")
    }
}

/// A key just created: the plain key (show it once), what is stored of
/// it, and the store revision of the write.
#[derive(Clone, PartialEq, Eq)]
pub struct NewKey {
    /// The whole key, `tidal_<id>_<secret>`. Not stored anywhere.
    pub key: String,
    /// What is stored of it.
    pub info: KeyInfo,
    /// The record as written.
    pub record: pb::ApiKey,
    /// The revision of the write.
    pub revision: u64,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("info", &self.info)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be created, listed or revoked.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The store could not be reached or refused the call.
    #[error("store: {0}")]
    Store(#[from] ClientError),
    /// The store refused the write.
    #[error("the store refused the write: {0}")]
    Rejected(Rejection),
    /// A stored key record does not decode.
    #[error("the stored record of key {id} cannot be decoded: {reason}")]
    Corrupt {
        /// The key's id.
        id: String,
        /// The decoder's error.
        reason: String,
    },
    /// No key has this id.
    #[error("no API key has id {0:?}; `tidal keys list` shows them")]
    NotFound(String),
    /// The name is too long or holds control characters.
    #[error(
        "name must be at most {MAX_NAME_CHARS} characters without control characters; got {0:?}"
    )]
    InvalidName(String),
    /// No scope was given.
    #[error("a key needs at least one scope: `management` and/or `inference`")]
    NoScopes,
    /// `/dev/urandom` could not be read.
    #[error("cannot read /dev/urandom for a new key: {0}")]
    Random(std::io::Error),
    /// The store answered something a put never answers.
    #[error("the store answered a key write with {0}")]
    Unexpected(String),
    /// The record kept changing while it was revoked.
    #[error("key {0} kept changing while it was revoked; try again")]
    Contended(String),
}

/// The store's clock, to stamp creation times (ms since the Unix epoch).
fn now_ms() -> u64 {
    tidal_store::service::now_ms()
}

fn decode(id: &str, value: &[u8]) -> Result<pb::ApiKey, KeyStoreError> {
    pb::ApiKey::decode(value).map_err(|e| KeyStoreError::Corrupt {
        id: id.to_owned(),
        reason: e.to_string(),
    })
}

/// Creates a key named `name` with `scopes` and returns it, once.
pub async fn create(
    client: &Client,
    name: &str,
    scopes: &[Scope],
) -> Result<NewKey, KeyStoreError> {
    if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(KeyStoreError::InvalidName(name.to_owned()));
    }
    let mut scopes = scopes.to_vec();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() {
        return Err(KeyStoreError::NoScopes);
    }
    // An id collision (36^8 ids) is unlikely; a few tries are plenty.
    let mut last = None;
    for _ in 0..4 {
        let (id, key) = generate().map_err(KeyStoreError::Random)?;
        let record = pb::ApiKey {
            id: id.clone(),
            name: name.to_owned(),
            sha256: sha256_hex(&key),
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            created_at_ms: now_ms(),
            revoked: false,
        };
        let put = Request::put(
            Table::ApiKeys,
            id.as_str(),
            record.encode_to_vec(),
            Precondition::MustNotExist,
            None,
        );
        match client.write(&put).await?.outcome {
            Outcome::Written { revision } => {
                return Ok(NewKey {
                    key,
                    info: KeyInfo::from_record(&record),
                    record,
                    revision,
                });
            }
            Outcome::Rejected(r @ Rejection::Conflict { .. }) => last = Some(r),
            Outcome::Rejected(r) => return Err(KeyStoreError::Rejected(r)),
            other => return Err(KeyStoreError::Unexpected(format!("{other:?}"))),
        }
    }
    Err(match last {
        Some(rejection) => KeyStoreError::Rejected(rejection),
        None => KeyStoreError::Unexpected("no id could be chosen".to_owned()),
    })
}

/// Every key, by id (revoked ones included).
pub async fn list(client: &Client) -> Result<Vec<KeyInfo>, KeyStoreError> {
    let (rows, _) = client.list(Table::ApiKeys, "").await?;
    rows.iter()
        .map(|(id, kv)| Ok(KeyInfo::from_record(&decode(id, &kv.value)?)))
        .collect()
}

/// Revokes key `id` (compare-and-set; revoking a revoked key changes
/// nothing). Returns the key and the revision at which it is revoked.
pub async fn revoke(client: &Client, id: &str) -> Result<(KeyInfo, u64), KeyStoreError> {
    for _ in 0..8 {
        let (stored, read_at) = client.get(Table::ApiKeys, id).await?;
        let kv = stored.ok_or_else(|| KeyStoreError::NotFound(id.to_owned()))?;
        let mut record = decode(id, &kv.value)?;
        if record.revoked {
            return Ok((KeyInfo::from_record(&record), read_at));
        }
        record.revoked = true;
        let put = Request::put(
            Table::ApiKeys,
            id,
            record.encode_to_vec(),
            Precondition::ModRevision(kv.mod_revision),
            None,
        );
        match client.write(&put).await?.outcome {
            Outcome::Written { revision } => return Ok((KeyInfo::from_record(&record), revision)),
            Outcome::Rejected(Rejection::Conflict { .. }) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Outcome::Rejected(r) => return Err(KeyStoreError::Rejected(r)),
            other => return Err(KeyStoreError::Unexpected(format!("{other:?}"))),
        }
    }
    Err(KeyStoreError::Contended(id.to_owned()))
}
