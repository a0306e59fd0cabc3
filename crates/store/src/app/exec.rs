//! Applying one command: the dispatch, fencing, and the key-value writes.
//!
//! Every refusal is decided before the first write, so a rejected command
//! changes nothing but the current revision.

use redb::WriteTransaction;
use tidal_proto::pb;

use super::outcome::{Outcome, Rejection};
use super::parse::{Command, KvOp, Op, Parse, parse};
use super::tables::{self, Fail};
use super::types::{Fence, LeaseKind, Table};
use super::{AppError, Limits, Request, Response, events, leases};

/// The state of one command being applied.
pub(crate) struct Ctx<'a> {
    pub txn: &'a WriteTransaction,
    /// The command's revision (log index).
    pub revision: u64,
    /// The leader's time carried by the command.
    pub now_ms: u64,
    /// The changes made so far, in order.
    pub events: Vec<pb::ChangeEvent>,
}

impl Ctx<'_> {
    /// Sets `key` and records a PUT event. Returns whether the key existed.
    pub fn put(&mut self, table: Table, key: &str, value: Vec<u8>) -> Result<bool, AppError> {
        let prev = tables::read_kv(self.txn, table, key)?;
        let kv = pb::KeyValue {
            create_revision: prev.as_ref().map_or(self.revision, |p| p.create_revision),
            mod_revision: self.revision,
            value,
        };
        tables::write_kv(self.txn, table, key, &kv)?;
        let existed = prev.is_some();
        self.event(
            table,
            key,
            pb::change_event::Kind::Put,
            kv,
            prev.map_or(0, |p| p.mod_revision),
        );
        Ok(existed)
    }

    /// Removes `key`, recording a DELETE event if it existed.
    pub fn remove(&mut self, table: Table, key: &str) -> Result<bool, AppError> {
        let Some(prev) = tables::remove_kv(self.txn, table, key)? else {
            return Ok(false);
        };
        let prev_mod = prev.mod_revision;
        self.event(table, key, pb::change_event::Kind::Delete, prev, prev_mod);
        Ok(true)
    }

    fn event(
        &mut self,
        table: Table,
        key: &str,
        kind: pb::change_event::Kind,
        value: pb::KeyValue,
        prev_mod_revision: u64,
    ) {
        self.events.push(pb::ChangeEvent {
            revision: self.revision,
            table: table.to_proto().into(),
            key: key.to_owned(),
            kind: kind.into(),
            value: Some(value),
            prev_mod_revision,
        });
    }
}

/// Applies `request` at `revision`; see [`super::apply`]. A group's members
/// apply one after another, each on its own (a member's refusal leaves the
/// others alone), and their change events are recorded together.
pub(crate) fn apply(
    txn: &WriteTransaction,
    revision: u64,
    request: &Request,
    limits: &Limits,
) -> Result<Response, AppError> {
    let mut ctx = Ctx {
        txn,
        revision,
        now_ms: 0,
        events: Vec::new(),
    };
    let response = match parse(request, limits) {
        Ok(Command {
            op: Op::Group(members),
            ..
        }) => {
            let mut results = Vec::with_capacity(members.len());
            for member in members {
                let parsed = parse(&Request(member), limits).and_then(|command| match command.op {
                    Op::Group(_) => Err(Rejection::invalid("groups do not nest").into()),
                    _ => Ok(command),
                });
                results.push(apply_one(&mut ctx, parsed)?);
            }
            Response::group(results)
        }
        parsed => apply_one(&mut ctx, parsed)?,
    };
    events::finish(txn, revision, ctx.events, limits)?;
    Ok(response)
}

/// Applies one parsed command: a refusal is an answer, decided before it wrote.
fn apply_one(ctx: &mut Ctx<'_>, parsed: Result<Command, Parse>) -> Result<Response, AppError> {
    let written_before = ctx.events.len();
    let outcome = match run(ctx, parsed) {
        Ok(outcome) => outcome,
        Err(Fail::Reject(rejection)) => {
            debug_assert_eq!(
                ctx.events.len(),
                written_before,
                "a command was rejected after it wrote"
            );
            tracing::debug!(revision = ctx.revision, %rejection, "store command rejected");
            Outcome::Rejected(rejection)
        }
        Err(Fail::Fatal(e)) => return Err(e),
    };
    Ok(Response::from_outcome(outcome))
}

fn run(ctx: &mut Ctx<'_>, parsed: Result<Command, Parse>) -> Result<Outcome, Fail> {
    let Command { now_ms, fence, op } = match parsed {
        Ok(command) => command,
        Err(Parse::Reject(r)) => return Err(r.into()),
        Err(Parse::TooNew(e)) => return Err(e.into()),
    };
    ctx.now_ms = now_ms;
    let needs_time = fence.is_some() || matches!(op, Op::Grant(..) | Op::Renew(..) | Op::Expire);
    if needs_time && now_ms == 0 {
        return Err(Rejection::invalid(
            "the command needs the leader's time (now_ms), and it is not stamped; \
             the proposer must send Request::stamped(now_ms)",
        )
        .into());
    }
    if let Some(fence) = fence {
        check_fence(ctx, fence)?;
    }
    let revision = ctx.revision;
    Ok(match op {
        Op::Put(op) => {
            write(ctx, vec![op])?;
            Outcome::Written { revision }
        }
        Op::Delete(op) => {
            let existed = write(ctx, vec![op])?;
            Outcome::Deleted { revision, existed }
        }
        Op::Batch(ops) => {
            write(ctx, ops)?;
            Outcome::Written { revision }
        }
        Op::Grant(lease, ttl_ms) => leases::grant(ctx, &lease, ttl_ms)?,
        Op::Renew(lease, epoch) => leases::renew(ctx, &lease, epoch)?,
        Op::Release(lease, epoch) => leases::release(ctx, &lease, epoch)?,
        Op::Expire => leases::expire(ctx)?,
        // `apply` unpacks a top-level group; one here is nested.
        Op::Group(_) => return Err(Rejection::invalid("groups do not nest").into()),
    })
}

/// Refuses the command unless shard `fence.shard` has a lease live at the
/// command's time with exactly `fence.epoch`.
fn check_fence(ctx: &Ctx<'_>, fence: Fence) -> Result<(), Fail> {
    let live = leases::read(
        ctx.txn,
        LeaseKind::Shard,
        &LeaseKind::shard_name(fence.shard),
    )?
    .filter(|lease| lease.is_live(ctx.now_ms));
    match live {
        Some(lease) if lease.epoch == fence.epoch => Ok(()),
        live => Err(Rejection::StaleEpoch {
            current: live.map(|l| l.epoch),
        }
        .into()),
    }
}

/// Checks every precondition, then applies every operation. Returns whether
/// the last operation's key existed before.
fn write(ctx: &mut Ctx<'_>, ops: Vec<KvOp>) -> Result<bool, Fail> {
    for op in &ops {
        let Some(expected) = op.expected_mod_revision else {
            continue;
        };
        let current = tables::read_kv(ctx.txn, op.table, &op.key)?.map_or(0, |kv| kv.mod_revision);
        if current != expected {
            return Err(Rejection::Conflict {
                table: op.table,
                key: op.key.clone(),
                current_mod_revision: current,
            }
            .into());
        }
    }
    let mut existed = false;
    for op in ops {
        existed = match op.value {
            Some(value) => ctx.put(op.table, &op.key, value)?,
            None => ctx.remove(op.table, &op.key)?,
        };
    }
    Ok(existed)
}
