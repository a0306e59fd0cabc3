//! The state machine's vocabulary in Rust: tables, lease kinds, stored
//! records, change events, and their conversions to and from `tidal.v1`.

use std::fmt;

use tidal_proto::pb;

use super::AppError;

/// The store's tables. Keys are UTF-8 strings; values are typed records
/// encoded by the caller (e.g. a `pb::Deployment`).
///
/// A table added later must be written only by commands that set
/// `requires_version`, or an older node would refuse what a newer one applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Models, by model id.
    Models,
    /// Deployments (spec, settings, status, desired replicas), by deployment id.
    Deployments,
    /// Environments, by model id and environment name.
    Environments,
    /// Worker nodes and their inventory, by node id.
    WorkerNodes,
    /// Replicas (assignment, phase, endpoint), by replica id.
    Replicas,
    /// Node leases ([`Lease`] values), by node id; lease commands only.
    NodeLeases,
    /// Shard leases ([`Lease`] values), by shard number; lease commands only.
    ShardLeases,
    /// API keys (hashed), by key id.
    ApiKeys,
    /// Cluster-wide settings, by setting name.
    ClusterSettings,
}

impl Table {
    /// Every table, in protobuf order.
    pub const ALL: [Table; 9] = [
        Table::Models,
        Table::Deployments,
        Table::Environments,
        Table::WorkerNodes,
        Table::Replicas,
        Table::NodeLeases,
        Table::ShardLeases,
        Table::ApiKeys,
        Table::ClusterSettings,
    ];

    /// The table's name in snake case, e.g. `worker_nodes`.
    pub fn name(self) -> &'static str {
        match self {
            Table::Models => "models",
            Table::Deployments => "deployments",
            Table::Environments => "environments",
            Table::WorkerNodes => "worker_nodes",
            Table::Replicas => "replicas",
            Table::NodeLeases => "node_leases",
            Table::ShardLeases => "shard_leases",
            Table::ApiKeys => "api_keys",
            Table::ClusterSettings => "cluster_settings",
        }
    }

    /// Whether only lease commands may change the table.
    pub fn is_lease_table(self) -> bool {
        matches!(self, Table::NodeLeases | Table::ShardLeases)
    }

    /// The table a protobuf enum number names; `None` for UNSPECIFIED or a
    /// number this version does not know.
    pub fn from_proto(value: i32) -> Option<Table> {
        match pb::StoreTable::try_from(value).ok()? {
            pb::StoreTable::Unspecified => None,
            pb::StoreTable::Models => Some(Table::Models),
            pb::StoreTable::Deployments => Some(Table::Deployments),
            pb::StoreTable::Environments => Some(Table::Environments),
            pb::StoreTable::WorkerNodes => Some(Table::WorkerNodes),
            pb::StoreTable::Replicas => Some(Table::Replicas),
            pb::StoreTable::NodeLeases => Some(Table::NodeLeases),
            pb::StoreTable::ShardLeases => Some(Table::ShardLeases),
            pb::StoreTable::ApiKeys => Some(Table::ApiKeys),
            pb::StoreTable::ClusterSettings => Some(Table::ClusterSettings),
        }
    }

    /// The protobuf enum value.
    pub fn to_proto(self) -> pb::StoreTable {
        match self {
            Table::Models => pb::StoreTable::Models,
            Table::Deployments => pb::StoreTable::Deployments,
            Table::Environments => pb::StoreTable::Environments,
            Table::WorkerNodes => pb::StoreTable::WorkerNodes,
            Table::Replicas => pb::StoreTable::Replicas,
            Table::NodeLeases => pb::StoreTable::NodeLeases,
            Table::ShardLeases => pb::StoreTable::ShardLeases,
            Table::ApiKeys => pb::StoreTable::ApiKeys,
            Table::ClusterSettings => pb::StoreTable::ClusterSettings,
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which lease table a lease command acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseKind {
    /// A worker node's liveness lease, named by node id.
    Node,
    /// A controller's lease on a shard, named by the shard number in decimal
    /// (see [`LeaseKind::shard_name`]); its epoch fences writes.
    Shard,
}

impl LeaseKind {
    /// The table holding this kind of lease.
    pub fn table(self) -> Table {
        match self {
            LeaseKind::Node => Table::NodeLeases,
            LeaseKind::Shard => Table::ShardLeases,
        }
    }

    /// The lease name of shard `shard`: its number in decimal.
    pub fn shard_name(shard: u32) -> String {
        shard.to_string()
    }

    pub(crate) fn from_proto(value: i32) -> Option<LeaseKind> {
        match pb::LeaseKind::try_from(value).ok()? {
            pb::LeaseKind::Unspecified => None,
            pb::LeaseKind::Node => Some(LeaseKind::Node),
            pb::LeaseKind::Shard => Some(LeaseKind::Shard),
        }
    }

    pub(crate) fn to_proto(self) -> pb::LeaseKind {
        match self {
            LeaseKind::Node => pb::LeaseKind::Node,
            LeaseKind::Shard => pb::LeaseKind::Shard,
        }
    }
}

/// A stored value with its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValueRecord {
    /// The revision that created the key (since it last did not exist).
    pub create_revision: u64,
    /// The revision that last changed the key.
    pub mod_revision: u64,
    /// The value, as the writer encoded it.
    pub value: Vec<u8>,
}

impl From<pb::KeyValue> for KeyValueRecord {
    fn from(kv: pb::KeyValue) -> Self {
        KeyValueRecord {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            value: kv.value,
        }
    }
}

impl From<KeyValueRecord> for pb::KeyValue {
    fn from(kv: KeyValueRecord) -> Self {
        pb::KeyValue {
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            value: kv.value,
        }
    }
}

/// A lease, as stored (protobuf `Lease`) in the lease tables. Times are the
/// leader's clock, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it.
    pub holder: String,
    /// The revision of its grant. A later grant of the same lease always has a
    /// higher one; grants coalesced into one log entry (a group) share it.
    pub epoch: u64,
    /// When it was granted.
    pub granted_at_ms: u64,
    /// When it expires unless renewed.
    pub expires_at_ms: u64,
    /// Its time to live, restarted by each renewal.
    pub ttl_ms: u64,
}

impl Lease {
    /// Whether the lease is live at `now_ms`: `now_ms < expires_at_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms
    }
}

impl From<pb::Lease> for Lease {
    fn from(l: pb::Lease) -> Self {
        Lease {
            holder: l.holder,
            epoch: l.epoch,
            granted_at_ms: l.granted_at_ms,
            expires_at_ms: l.expires_at_ms,
            ttl_ms: l.ttl_ms,
        }
    }
}

impl From<Lease> for pb::Lease {
    fn from(l: Lease) -> Self {
        pb::Lease {
            holder: l.holder,
            epoch: l.epoch,
            granted_at_ms: l.granted_at_ms,
            expires_at_ms: l.expires_at_ms,
            ttl_ms: l.ttl_ms,
        }
    }
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or changed.
    Put,
    /// Removed: deleted, released or expired.
    Delete,
}

/// One change to one key, at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The revision of the command that made the change.
    pub revision: u64,
    /// The table.
    pub table: Table,
    /// The key.
    pub key: String,
    /// Put or delete.
    pub kind: EventKind,
    /// Put: the new value. Delete: the value as it was before the delete.
    pub value: KeyValueRecord,
    /// The key's mod_revision before the change; 0 if it did not exist.
    pub prev_mod_revision: u64,
}

impl TryFrom<pb::ChangeEvent> for ChangeEvent {
    type Error = AppError;

    fn try_from(e: pb::ChangeEvent) -> Result<Self, AppError> {
        let table = Table::from_proto(e.table).ok_or_else(|| {
            AppError(format!(
                "stored change event at revision {} has unknown table {}",
                e.revision, e.table
            ))
        })?;
        let kind = match pb::change_event::Kind::try_from(e.kind) {
            Ok(pb::change_event::Kind::Put) => EventKind::Put,
            Ok(pb::change_event::Kind::Delete) => EventKind::Delete,
            _ => {
                return Err(AppError(format!(
                    "stored change event at revision {} has unknown kind {}",
                    e.revision, e.kind
                )));
            }
        };
        Ok(ChangeEvent {
            revision: e.revision,
            table,
            key: e.key,
            kind,
            value: e.value.unwrap_or_default().into(),
            prev_mod_revision: e.prev_mod_revision,
        })
    }
}

impl From<ChangeEvent> for pb::ChangeEvent {
    fn from(e: ChangeEvent) -> Self {
        let kind = match e.kind {
            EventKind::Put => pb::change_event::Kind::Put,
            EventKind::Delete => pb::change_event::Kind::Delete,
        };
        pb::ChangeEvent {
            revision: e.revision,
            table: e.table.to_proto().into(),
            key: e.key,
            kind: kind.into(),
            value: Some(e.value.into()),
            prev_mod_revision: e.prev_mod_revision,
        }
    }
}

/// A write's claim to act for a shard: the command applies only if the
/// shard's lease is live at the command's time and has exactly this epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// The shard number.
    pub shard: u32,
    /// The epoch of the shard lease the writer holds.
    pub epoch: u64,
}

impl From<Fence> for pb::Fence {
    fn from(f: Fence) -> Self {
        pb::Fence {
            shard: f.shard,
            epoch: f.epoch,
        }
    }
}

/// A compare-and-set condition on a key's `mod_revision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Unconditional.
    #[default]
    None,
    /// Only if the key does not exist (its mod_revision is 0).
    MustNotExist,
    /// Only if the key's mod_revision is exactly this.
    ModRevision(u64),
}

impl Precondition {
    /// The `expected_mod_revision` field: `Some(0)` means "must not exist".
    pub(crate) fn to_proto(self) -> Option<u64> {
        match self {
            Precondition::None => None,
            Precondition::MustNotExist => Some(0),
            Precondition::ModRevision(n) => Some(n),
        }
    }
}
