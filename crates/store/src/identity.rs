//! A data directory's identity: which node it belongs to and which cluster.
//!
//! Written once, on first start (node id) and when the node first joins or
//! initializes a cluster (cluster id). Starting a data directory as another
//! node, or letting another cluster's nodes talk to it, is refused.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::NodeId;

const FILE: &str = "identity.json";

/// Why an identity was refused or could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The data directory belongs to another node.
    #[error(
        "data directory {dir} belongs to node {recorded} (of cluster {cluster}); it was started as node {given}: start it with --node-id {recorded}, or use another directory"
    )]
    WrongNode {
        dir: PathBuf,
        recorded: NodeId,
        given: NodeId,
        cluster: String,
    },
    /// The data directory belongs to another cluster.
    #[error("data directory {dir} belongs to cluster {recorded}, not {given}")]
    WrongCluster {
        dir: PathBuf,
        recorded: String,
        given: String,
    },
    /// The identity file could not be read or written.
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Recorded {
    node_id: NodeId,
    cluster_id: Option<String>,
}

/// The identity of a running node, shared by its Raft client and server.
#[derive(Clone)]
pub struct Identity {
    dir: PathBuf,
    node_id: NodeId,
    cluster_id: Arc<Mutex<Option<String>>>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id())
            .finish()
    }
}

impl Identity {
    /// Loads the identity of `dir`, or records `node_id` there if it has none.
    pub fn load_or_create(dir: &Path, node_id: NodeId) -> Result<Self, IdentityError> {
        let path = dir.join(FILE);
        let io = |e: std::io::Error| IdentityError::Io {
            path: path.clone(),
            message: e.to_string(),
        };
        let recorded = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str::<Recorded>(&text).map_err(|e| IdentityError::Io {
                path: path.clone(),
                message: format!("not a tidal identity file: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let fresh = Recorded {
                    node_id,
                    cluster_id: None,
                };
                std::fs::create_dir_all(dir).map_err(io)?;
                write_atomically(&path, &fresh).map_err(io)?;
                fresh
            }
            Err(e) => return Err(io(e)),
        };
        if recorded.node_id != node_id {
            return Err(IdentityError::WrongNode {
                dir: dir.to_owned(),
                recorded: recorded.node_id,
                given: node_id,
                cluster: recorded.cluster_id.unwrap_or_else(|| "none yet".to_owned()),
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            node_id,
            cluster_id: Arc::new(Mutex::new(recorded.cluster_id)),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster this node belongs to, once it has joined or initialized one.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.lock().map(|c| c.clone()).unwrap_or(None)
    }

    /// Records that this node belongs to `cluster_id`. Idempotent; refuses
    /// another cluster once one is recorded.
    pub fn adopt(&self, cluster_id: &str) -> Result<(), IdentityError> {
        let mut current = self.cluster_id.lock().map_err(|_| IdentityError::Io {
            path: self.dir.join(FILE),
            message: "identity lock poisoned".to_owned(),
        })?;
        match current.as_deref() {
            Some(c) if c == cluster_id => return Ok(()),
            Some(c) => {
                return Err(IdentityError::WrongCluster {
                    dir: self.dir.clone(),
                    recorded: c.to_owned(),
                    given: cluster_id.to_owned(),
                });
            }
            None => {}
        }
        let path = self.dir.join(FILE);
        write_atomically(
            &path,
            &Recorded {
                node_id: self.node_id,
                cluster_id: Some(cluster_id.to_owned()),
            },
        )
        .map_err(|e| IdentityError::Io {
            path,
            message: e.to_string(),
        })?;
        *current = Some(cluster_id.to_owned());
        Ok(())
    }
}

/// A new random cluster id (128 bits, hex).
pub fn new_cluster_id() -> String {
    let mut out = String::new();
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.write_u32(std::process::id());
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// Writes `value` as JSON to a temporary file, fsyncs it and renames it over `path`.
fn write_atomically(path: &Path, value: &Recorded) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(serde_json::to_string_pretty(value)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_node_and_cluster_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let id = Identity::load_or_create(dir.path(), 2).unwrap();
        assert_eq!(id.cluster_id(), None);
        id.adopt("abc").unwrap();
        id.adopt("abc").unwrap();
        assert!(matches!(
            id.adopt("xyz"),
            Err(IdentityError::WrongCluster { .. })
        ));
        let again = Identity::load_or_create(dir.path(), 2).unwrap();
        assert_eq!(again.cluster_id().as_deref(), Some("abc"));
        let err = Identity::load_or_create(dir.path(), 3).unwrap_err();
        assert!(
            err.to_string()
                .contains("belongs to node 2 (of cluster abc); it was started as node 3"),
            "{err}"
        );
    }

    #[test]
    fn cluster_ids_are_distinct() {
        assert_ne!(new_cluster_id(), new_cluster_id());
        assert_eq!(new_cluster_id().len(), 32);
    }
}
