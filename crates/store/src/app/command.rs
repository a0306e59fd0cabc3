//! Commands: the [`Request`] constructors, decoding, stamping and validation.

use prost::Message;
use tidal_proto::pb;
use tidal_proto::pb::store_command::{self as sc, Command as PbCommand};

use super::outcome::Rejection;
use super::parse::{Parse, parse, too_new};
use super::types::{Fence, LeaseKind, Precondition, Table};
use super::{APP_VERSION, AppError, GROUP_VERSION, Limits, Request};

/// One put or delete of a [`Request::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` in `table` to `value`, if `precondition` holds.
    Put {
        /// The table (not a lease table).
        table: Table,
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The compare-and-set condition.
        precondition: Precondition,
    },
    /// Remove `key` from `table`, if `precondition` holds.
    Delete {
        /// The table (not a lease table).
        table: Table,
        /// The key.
        key: String,
        /// The compare-and-set condition.
        precondition: Precondition,
    },
}

impl BatchOp {
    fn to_proto(&self) -> sc::BatchOp {
        let op = match self {
            BatchOp::Put {
                table,
                key,
                value,
                precondition,
            } => {
                sc::batch_op::Op::Put(put_proto(*table, key.clone(), value.clone(), *precondition))
            }
            BatchOp::Delete {
                table,
                key,
                precondition,
            } => sc::batch_op::Op::Delete(delete_proto(*table, key.clone(), *precondition)),
        };
        sc::BatchOp { op: Some(op) }
    }
}

fn put_proto(table: Table, key: String, value: Vec<u8>, pre: Precondition) -> sc::Put {
    sc::Put {
        table: table.to_proto().into(),
        key,
        value,
        expected_mod_revision: pre.to_proto(),
    }
}

fn delete_proto(table: Table, key: String, pre: Precondition) -> sc::Delete {
    sc::Delete {
        table: table.to_proto().into(),
        key,
        expected_mod_revision: pre.to_proto(),
    }
}

fn request(command: PbCommand, fence: Option<Fence>) -> Request {
    Request::from_command(&pb::StoreCommand {
        now_ms: 0,
        fence: fence.map(Into::into),
        requires_version: 0,
        command: Some(command),
    })
}

impl Request {
    /// Sets `key` in `table` to `value` if `precondition` holds (and, with a
    /// fence, only while that shard epoch is current).
    pub fn put(
        table: Table,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        precondition: Precondition,
        fence: Option<Fence>,
    ) -> Request {
        let put = put_proto(table, key.into(), value.into(), precondition);
        request(PbCommand::Put(put), fence)
    }

    /// Removes `key` from `table` if `precondition` holds (and the fence).
    pub fn delete(
        table: Table,
        key: impl Into<String>,
        precondition: Precondition,
        fence: Option<Fence>,
    ) -> Request {
        request(
            PbCommand::Delete(delete_proto(table, key.into(), precondition)),
            fence,
        )
    }

    /// Applies `ops` together at one revision, all or none. A key may appear
    /// only once; every precondition is checked before anything is written.
    pub fn batch(ops: &[BatchOp], fence: Option<Fence>) -> Request {
        let ops = ops.iter().map(BatchOp::to_proto).collect();
        request(PbCommand::Batch(sc::Batch { ops }), fence)
    }

    /// Asks for lease `name` of `kind` for `holder`, for `ttl_ms`.
    pub fn grant_lease(
        kind: LeaseKind,
        name: impl Into<String>,
        holder: impl Into<String>,
        ttl_ms: u64,
    ) -> Request {
        let grant = sc::GrantLease {
            kind: kind.to_proto().into(),
            name: name.into(),
            holder: holder.into(),
            ttl_ms,
        };
        request(PbCommand::GrantLease(grant), None)
    }

    /// Extends the lease by its ttl from the command's time.
    pub fn renew_lease(
        kind: LeaseKind,
        name: impl Into<String>,
        holder: impl Into<String>,
        epoch: u64,
    ) -> Request {
        let renew = sc::RenewLease {
            kind: kind.to_proto().into(),
            name: name.into(),
            holder: holder.into(),
            epoch,
        };
        request(PbCommand::RenewLease(renew), None)
    }

    /// Gives the lease up.
    pub fn release_lease(
        kind: LeaseKind,
        name: impl Into<String>,
        holder: impl Into<String>,
        epoch: u64,
    ) -> Request {
        let release = sc::ReleaseLease {
            kind: kind.to_proto().into(),
            name: name.into(),
            holder: holder.into(),
            epoch,
        };
        request(PbCommand::ReleaseLease(release), None)
    }

    /// Removes every lease expired at the command's time (the leader
    /// proposes it periodically).
    pub fn expire_leases() -> Request {
        request(PbCommand::ExpireLeases(sc::ExpireLeases {}), None)
    }

    /// Encodes a command message.
    pub fn from_command(command: &pb::StoreCommand) -> Request {
        Request(command.encode_to_vec())
    }

    /// Decodes the command message. Fails on bytes that are not a
    /// `StoreCommand`, on a command with no operation, and on one that needs
    /// a newer state machine than this node's.
    pub fn decode(&self) -> Result<pb::StoreCommand, AppError> {
        let command = pb::StoreCommand::decode(self.0.as_slice())
            .map_err(|e| AppError(format!("undecodable store command: {e}")))?;
        if command.requires_version > APP_VERSION {
            return Err(too_new(command.requires_version));
        }
        if command.command.is_none() {
            return Err(AppError("the store command has no operation".into()));
        }
        Ok(command)
    }

    /// Independent commands in one log entry, each applied on its own with
    /// its own result (see `StoreCommand.Group`). The leader's proposer forms
    /// groups; members are stamped already.
    pub fn group(members: Vec<Request>) -> Request {
        let command = pb::StoreCommand {
            requires_version: GROUP_VERSION,
            command: Some(PbCommand::Group(sc::Group {
                commands: members.into_iter().map(|m| m.0).collect(),
            })),
            ..Default::default()
        };
        Request::from_command(&command)
    }

    /// Whether this is a group (clients may not send one).
    pub fn is_group(&self) -> bool {
        self.decode()
            .is_ok_and(|c| matches!(c.command, Some(PbCommand::Group(_))))
    }

    /// The same command stamped with the leader's clock: the proposer (the
    /// leader, just before `client_write`) calls this; lease and fence
    /// checks in `apply` use this time and no other.
    pub fn stamped(&self, now_ms: u64) -> Result<Request, AppError> {
        let mut command = self.decode()?;
        command.now_ms = now_ms;
        Ok(Request::from_command(&command))
    }

    /// Checks everything about the command that does not depend on the
    /// store's contents (shape, sizes, names), as `apply` will. A proposer
    /// calls it to refuse a bad write before it enters the log.
    pub fn validate(&self) -> Result<(), Rejection> {
        match parse(self, &Limits::DEFAULT) {
            Ok(_) => Ok(()),
            Err(Parse::Reject(r)) => Err(r),
            Err(Parse::TooNew(e)) => Err(Rejection::invalid(e.0)),
        }
    }
}
