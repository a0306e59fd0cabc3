//! What applying a command answered: [`Outcome`] and [`Rejection`], carried
//! in a [`Response`] as protobuf `StoreResult` bytes.

use prost::Message;
use tidal_proto::pb;
use tidal_proto::pb::store_result::{self, rejected};

use super::types::{Lease, Table};
use super::{AppError, Response};

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A put or a batch was applied at `revision`.
    Written {
        /// The command's revision: the new mod_revision of what it wrote.
        revision: u64,
    },
    /// A delete was applied at `revision`.
    Deleted {
        /// The command's revision.
        revision: u64,
        /// Whether the key existed.
        existed: bool,
    },
    /// A lease was granted.
    LeaseGranted {
        /// Its epoch: the grant's revision. Fenced writes carry it.
        epoch: u64,
        /// When it expires unless renewed (leader time, ms).
        expires_at_ms: u64,
    },
    /// A lease was renewed.
    LeaseRenewed {
        /// Its epoch (unchanged).
        epoch: u64,
        /// Its new expiry (leader time, ms).
        expires_at_ms: u64,
    },
    /// A lease was released, or was already gone.
    LeaseReleased {
        /// Whether the lease existed.
        existed: bool,
    },
    /// Expired leases were removed.
    LeasesExpired {
        /// How many.
        count: u64,
    },
    /// The command was refused; nothing was written.
    Rejected(Rejection),
}

/// Why a command was refused. Nothing was written, but the revision was
/// used (the command is in the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A compare-and-set precondition failed.
    #[error(
        "{table}/{key} has mod_revision {current_mod_revision} (0 = absent), not the expected one; re-read it and retry"
    )]
    Conflict {
        /// The table of the key.
        table: Table,
        /// The key.
        key: String,
        /// Its mod_revision now; 0 if it does not exist.
        current_mod_revision: u64,
    },
    /// The fence's epoch is not the shard's live lease epoch.
    #[error(
        "stale shard epoch: the shard's live lease epoch is {current:?}; stop acting for this shard"
    )]
    StaleEpoch {
        /// The live lease's epoch; `None` if the shard has no live lease.
        current: Option<u64>,
    },
    /// Another holder has a live lease.
    #[error("the lease is held by {holder} until {expires_at_ms} ms")]
    LeaseHeld {
        /// The holder.
        holder: String,
        /// When its lease expires unless renewed.
        expires_at_ms: u64,
    },
    /// A renewal or release by someone other than the live lease's holder
    /// and epoch, or of an expired or absent lease.
    #[error("not the lease's holder (the lease now: {current:?}); grant it again")]
    NotHolder {
        /// The lease as it is now, expired or not; `None` if absent.
        current: Option<Lease>,
    },
    /// A key, value or batch over its limit.
    #[error("{what} is {size}, over the limit of {limit}")]
    TooLarge {
        /// What: `key`, `value`, `batch bytes`, `batch operations`.
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A malformed command.
    #[error("invalid command: {message}")]
    Invalid {
        /// What is wrong.
        message: String,
    },
}

impl Rejection {
    pub(crate) fn invalid(message: impl Into<String>) -> Rejection {
        Rejection::Invalid {
            message: message.into(),
        }
    }

    pub(crate) fn too_large(what: &str, size: usize, limit: usize) -> Rejection {
        Rejection::TooLarge {
            what: what.to_owned(),
            size: u64::try_from(size).unwrap_or(u64::MAX),
            limit: u64::try_from(limit).unwrap_or(u64::MAX),
        }
    }
}

impl From<Rejection> for rejected::Reason {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::Conflict {
                table,
                key,
                current_mod_revision,
            } => rejected::Reason::Conflict(rejected::Conflict {
                table: table.to_proto().into(),
                key,
                current_mod_revision,
            }),
            Rejection::StaleEpoch { current } => {
                rejected::Reason::StaleEpoch(rejected::StaleEpoch { current })
            }
            Rejection::LeaseHeld {
                holder,
                expires_at_ms,
            } => rejected::Reason::LeaseHeld(rejected::LeaseHeld {
                holder,
                expires_at_ms,
            }),
            Rejection::NotHolder { current } => rejected::Reason::NotHolder(rejected::NotHolder {
                current: current.map(Into::into),
            }),
            Rejection::TooLarge { what, size, limit } => {
                rejected::Reason::TooLarge(rejected::TooLarge { what, size, limit })
            }
            Rejection::Invalid { message } => {
                rejected::Reason::Invalid(rejected::Invalid { message })
            }
        }
    }
}

fn rejection_from_proto(reason: rejected::Reason) -> Result<Rejection, AppError> {
    Ok(match reason {
        rejected::Reason::Conflict(c) => Rejection::Conflict {
            table: Table::from_proto(c.table)
                .ok_or_else(|| AppError(format!("response names unknown table {}", c.table)))?,
            key: c.key,
            current_mod_revision: c.current_mod_revision,
        },
        rejected::Reason::StaleEpoch(s) => Rejection::StaleEpoch { current: s.current },
        rejected::Reason::LeaseHeld(h) => Rejection::LeaseHeld {
            holder: h.holder,
            expires_at_ms: h.expires_at_ms,
        },
        rejected::Reason::NotHolder(n) => Rejection::NotHolder {
            current: n.current.map(Into::into),
        },
        rejected::Reason::TooLarge(t) => Rejection::TooLarge {
            what: t.what,
            size: t.size,
            limit: t.limit,
        },
        rejected::Reason::Invalid(i) => Rejection::Invalid { message: i.message },
    })
}

impl Response {
    /// Encodes `outcome`.
    pub fn from_outcome(outcome: Outcome) -> Response {
        use store_result::Result as R;
        let result = match outcome {
            Outcome::Written { revision } => R::Written(store_result::Written { revision }),
            Outcome::Deleted { revision, existed } => {
                R::Deleted(store_result::Deleted { revision, existed })
            }
            Outcome::LeaseGranted {
                epoch,
                expires_at_ms,
            } => R::LeaseGranted(store_result::LeaseGranted {
                epoch,
                expires_at_ms,
            }),
            Outcome::LeaseRenewed {
                epoch,
                expires_at_ms,
            } => R::LeaseRenewed(store_result::LeaseRenewed {
                epoch,
                expires_at_ms,
            }),
            Outcome::LeaseReleased { existed } => {
                R::LeaseReleased(store_result::LeaseReleased { existed })
            }
            Outcome::LeasesExpired { count } => {
                R::LeasesExpired(store_result::LeasesExpired { count })
            }
            Outcome::Rejected(r) => R::Rejected(store_result::Rejected {
                reason: Some(r.into()),
            }),
        };
        Response(
            pb::StoreResult {
                result: Some(result),
            }
            .encode_to_vec(),
        )
    }

    /// The result of a group: each member's response, in order.
    pub fn group(members: Vec<Response>) -> Response {
        let results = members.into_iter().map(|m| m.0).collect();
        Response(
            pb::StoreResult {
                result: Some(store_result::Result::Group(store_result::Group { results })),
            }
            .encode_to_vec(),
        )
    }

    /// Each member's response if this is a group's result; `None` otherwise.
    pub fn group_members(&self) -> Option<Vec<Response>> {
        match pb::StoreResult::decode(self.0.as_slice()).ok()?.result? {
            store_result::Result::Group(g) => Some(g.results.into_iter().map(Response).collect()),
            _ => None,
        }
    }

    /// Decodes what applying the command did. Fails on bytes that are not a
    /// `StoreResult`, on the empty response of a blank or membership entry,
    /// and on a group's result (split it with [`Response::group_members`]).
    pub fn outcome(&self) -> Result<Outcome, AppError> {
        use store_result::Result as R;
        let result = pb::StoreResult::decode(self.0.as_slice())
            .map_err(|e| AppError(format!("undecodable store response: {e}")))?;
        let result = result.result.ok_or_else(|| {
            AppError("the store response holds no result (a blank entry, or a newer tidal)".into())
        })?;
        Ok(match result {
            R::Written(w) => Outcome::Written {
                revision: w.revision,
            },
            R::Deleted(d) => Outcome::Deleted {
                revision: d.revision,
                existed: d.existed,
            },
            R::LeaseGranted(g) => Outcome::LeaseGranted {
                epoch: g.epoch,
                expires_at_ms: g.expires_at_ms,
            },
            R::LeaseRenewed(r) => Outcome::LeaseRenewed {
                epoch: r.epoch,
                expires_at_ms: r.expires_at_ms,
            },
            R::LeaseReleased(r) => Outcome::LeaseReleased { existed: r.existed },
            R::LeasesExpired(e) => Outcome::LeasesExpired { count: e.count },
            R::Group(_) => {
                return Err(AppError(
                    "a group's result holds one result per member; split it first".into(),
                ));
            }
            R::Rejected(r) => {
                let reason = r.reason.ok_or_else(|| {
                    AppError("a rejection without a reason (from a newer tidal?)".into())
                })?;
                Outcome::Rejected(rejection_from_proto(reason)?)
            }
        })
    }
}
