//! Parsing a [`Request`] into a checked [`Command`]: everything about a
//! command that does not depend on the store's contents (shape, sizes,
//! names). Shared by [`Request::validate`] and `apply`, so a proposer and
//! every member decide alike.

use prost::Message;
use tidal_proto::pb;
use tidal_proto::pb::store_command::{self as sc, Command as PbCommand};

use super::outcome::Rejection;
use super::types::{Fence, LeaseKind, Table};
use super::{APP_VERSION, AppError, Limits, Request};

pub(crate) fn too_new(version: u32) -> AppError {
    AppError(format!(
        "the command needs state-machine version {version} but this node has {APP_VERSION}: \
         upgrade this node (a newer tidal proposed it)"
    ))
}

/// A command, checked.
#[derive(Debug)]
pub(crate) struct Command {
    /// The leader's time; 0 = not stamped.
    pub now_ms: u64,
    pub fence: Option<Fence>,
    pub op: Op,
}

/// The operation of a checked command.
#[derive(Debug)]
pub(crate) enum Op {
    Put(KvOp),
    Delete(KvOp),
    Batch(Vec<KvOp>),
    Grant(LeaseOp, u64),
    Renew(LeaseOp, u64),
    Release(LeaseOp, u64),
    Expire,
    /// Independent commands in one entry (each member's bytes); see
    /// `StoreCommand.Group`.
    Group(Vec<Vec<u8>>),
}

/// A checked put (`value: Some`) or delete (`value: None`).
#[derive(Debug)]
pub(crate) struct KvOp {
    pub table: Table,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub expected_mod_revision: Option<u64>,
}

/// The lease a lease command names, and who asks.
#[derive(Debug)]
pub(crate) struct LeaseOp {
    pub kind: LeaseKind,
    pub name: String,
    pub holder: String,
}

/// Why a request cannot be applied.
#[derive(Debug)]
pub(crate) enum Parse {
    /// Refused, deterministically on every node.
    Reject(Rejection),
    /// Needs a newer state machine: this node must stop, not guess.
    TooNew(AppError),
}

impl From<Rejection> for Parse {
    fn from(r: Rejection) -> Self {
        Parse::Reject(r)
    }
}

/// Decodes and checks a request.
pub(crate) fn parse(request: &Request, limits: &Limits) -> Result<Command, Parse> {
    let command = pb::StoreCommand::decode(request.0.as_slice())
        .map_err(|e| Rejection::invalid(format!("undecodable store command: {e}")))?;
    if command.requires_version > APP_VERSION {
        return Err(Parse::TooNew(too_new(command.requires_version)));
    }
    let op = match command.command {
        None => return Err(Rejection::invalid("the command has no operation").into()),
        Some(PbCommand::Put(p)) => Op::Put(kv_op(
            p.table,
            p.key,
            Some(p.value),
            p.expected_mod_revision,
            limits,
        )?),
        Some(PbCommand::Delete(d)) => Op::Delete(kv_op(
            d.table,
            d.key,
            None,
            d.expected_mod_revision,
            limits,
        )?),
        Some(PbCommand::Batch(b)) => Op::Batch(batch(b, limits)?),
        Some(PbCommand::GrantLease(g)) => {
            if g.ttl_ms == 0 || g.ttl_ms > limits.max_ttl_ms {
                return Err(Rejection::invalid(format!(
                    "ttl_ms must be ≥ 1 and ≤ {}; got {}",
                    limits.max_ttl_ms, g.ttl_ms
                ))
                .into());
            }
            Op::Grant(lease_op(g.kind, g.name, g.holder, limits)?, g.ttl_ms)
        }
        Some(PbCommand::RenewLease(r)) => {
            Op::Renew(lease_op(r.kind, r.name, r.holder, limits)?, r.epoch)
        }
        Some(PbCommand::ReleaseLease(r)) => {
            Op::Release(lease_op(r.kind, r.name, r.holder, limits)?, r.epoch)
        }
        Some(PbCommand::ExpireLeases(sc::ExpireLeases {})) => Op::Expire,
        Some(PbCommand::Group(g)) => {
            if g.commands.is_empty() {
                return Err(Rejection::invalid("a group needs at least one command").into());
            }
            if command.fence.is_some() || command.now_ms != 0 {
                return Err(Rejection::invalid(
                    "a group has no fence or time of its own; its members carry them",
                )
                .into());
            }
            Op::Group(g.commands)
        }
    };
    Ok(Command {
        now_ms: command.now_ms,
        fence: command.fence.map(|f| Fence {
            shard: f.shard,
            epoch: f.epoch,
        }),
        op,
    })
}

fn table(value: i32) -> Result<Table, Rejection> {
    Table::from_proto(value).ok_or_else(|| {
        Rejection::invalid(format!(
            "table {value} is unspecified or unknown to this tidal"
        ))
    })
}

fn kv_op(
    table_value: i32,
    key: String,
    value: Option<Vec<u8>>,
    expected_mod_revision: Option<u64>,
    limits: &Limits,
) -> Result<KvOp, Rejection> {
    let table = table(table_value)?;
    if table.is_lease_table() {
        return Err(Rejection::invalid(format!(
            "table {table} is changed only by lease commands (grant, renew, release, expire)"
        )));
    }
    check_key("key", &key, limits)?;
    if let Some(v) = &value
        && v.len() > limits.max_value_bytes
    {
        return Err(Rejection::too_large(
            "value",
            v.len(),
            limits.max_value_bytes,
        ));
    }
    Ok(KvOp {
        table,
        key,
        value,
        expected_mod_revision,
    })
}

fn check_key(what: &str, key: &str, limits: &Limits) -> Result<(), Rejection> {
    if key.is_empty() {
        return Err(Rejection::invalid(format!("{what} must not be empty")));
    }
    if key.len() > limits.max_key_bytes {
        return Err(Rejection::too_large(what, key.len(), limits.max_key_bytes));
    }
    Ok(())
}

fn batch(b: sc::Batch, limits: &Limits) -> Result<Vec<KvOp>, Rejection> {
    if b.ops.is_empty() {
        return Err(Rejection::invalid("a batch needs at least one operation"));
    }
    if b.ops.len() > limits.max_batch_ops {
        return Err(Rejection::too_large(
            "batch operations",
            b.ops.len(),
            limits.max_batch_ops,
        ));
    }
    let mut ops = Vec::with_capacity(b.ops.len());
    let mut bytes = 0usize;
    let mut seen = std::collections::BTreeSet::new();
    for (i, op) in b.ops.into_iter().enumerate() {
        let op = match op.op {
            Some(sc::batch_op::Op::Put(p)) => kv_op(
                p.table,
                p.key,
                Some(p.value),
                p.expected_mod_revision,
                limits,
            )?,
            Some(sc::batch_op::Op::Delete(d)) => {
                kv_op(d.table, d.key, None, d.expected_mod_revision, limits)?
            }
            None => return Err(Rejection::invalid(format!("batch operation {i} is empty"))),
        };
        bytes = bytes.saturating_add(op.key.len() + op.value.as_ref().map_or(0, Vec::len));
        if !seen.insert((op.table, op.key.clone())) {
            return Err(Rejection::invalid(format!(
                "{}/{} appears twice in one batch",
                op.table, op.key
            )));
        }
        ops.push(op);
    }
    if bytes > limits.max_batch_bytes {
        return Err(Rejection::too_large(
            "batch bytes",
            bytes,
            limits.max_batch_bytes,
        ));
    }
    Ok(ops)
}

fn lease_op(
    kind: i32,
    name: String,
    holder: String,
    limits: &Limits,
) -> Result<LeaseOp, Rejection> {
    let kind = LeaseKind::from_proto(kind).ok_or_else(|| {
        Rejection::invalid(format!(
            "lease kind {kind} is unspecified or unknown to this tidal"
        ))
    })?;
    check_key("lease name", &name, limits)?;
    check_key("lease holder", &holder, limits)?;
    if kind == LeaseKind::Shard
        && name
            .parse::<u32>()
            .ok()
            .map(LeaseKind::shard_name)
            .as_deref()
            != Some(name.as_str())
    {
        return Err(Rejection::invalid(format!(
            "a shard lease is named by its shard number in decimal (e.g. \"17\"); got {name:?}"
        )));
    }
    Ok(LeaseOp { kind, name, holder })
}
