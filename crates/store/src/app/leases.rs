//! Lease commands: grant, renew, release, expire.
//!
//! A lease is live while `now_ms < expires_at_ms`, where `now_ms` is the
//! leader's time carried by the command (never a clock read here). Its epoch
//! is the revision of its grant, so epochs are unique and increase with every
//! grant of every lease. A lease changes only through these commands; each
//! change is a PUT or DELETE event on its table, like any other write.

use prost::Message;
use redb::{ReadableTable, WriteTransaction};
use tidal_proto::pb;

use super::AppError;
use super::exec::Ctx;
use super::outcome::{Outcome, Rejection};
use super::parse::LeaseOp;
use super::tables::{self, Fail};
use super::types::{Lease, LeaseKind};

/// Reads a lease inside a write transaction, expired or not.
pub(crate) fn read(
    txn: &WriteTransaction,
    kind: LeaseKind,
    name: &str,
) -> Result<Option<Lease>, AppError> {
    let table = kind.table();
    let Some(kv) = tables::read_kv(txn, table, name)? else {
        return Ok(None);
    };
    Ok(Some(tables::decode_lease(table, name, &kv.value)?.into()))
}

fn store(ctx: &mut Ctx<'_>, kind: LeaseKind, name: &str, lease: Lease) -> Result<(), AppError> {
    let bytes = pb::Lease::from(lease).encode_to_vec();
    ctx.put(kind.table(), name, bytes)?;
    Ok(())
}

/// Grants the lease if it is absent, expired, or live with the same holder.
///
/// A grant to the current holder is a re-grant, not a renewal: it gets a new
/// epoch (this revision), which fences every write still carrying the old
/// one. A holder that restarted and lost its epoch, or that retries a grant
/// whose answer it never saw, thus ends up with one valid epoch, and nothing
/// that acted under the previous one can write again.
pub(crate) fn grant(ctx: &mut Ctx<'_>, op: &LeaseOp, ttl_ms: u64) -> Result<Outcome, Fail> {
    if let Some(current) = read(ctx.txn, op.kind, &op.name)?
        && current.is_live(ctx.now_ms)
        && current.holder != op.holder
    {
        return Err(Rejection::LeaseHeld {
            holder: current.holder,
            expires_at_ms: current.expires_at_ms,
        }
        .into());
    }
    let lease = Lease {
        holder: op.holder.clone(),
        epoch: ctx.revision,
        granted_at_ms: ctx.now_ms,
        expires_at_ms: ctx.now_ms.saturating_add(ttl_ms),
        ttl_ms,
    };
    let outcome = Outcome::LeaseGranted {
        epoch: lease.epoch,
        expires_at_ms: lease.expires_at_ms,
    };
    store(ctx, op.kind, &op.name, lease)?;
    Ok(outcome)
}

/// Extends a live lease by its ttl from now; only by its holder and epoch.
pub(crate) fn renew(ctx: &mut Ctx<'_>, op: &LeaseOp, epoch: u64) -> Result<Outcome, Fail> {
    let current = read(ctx.txn, op.kind, &op.name)?;
    let mut lease = match current {
        Some(l) if l.holder == op.holder && l.epoch == epoch && l.is_live(ctx.now_ms) => l,
        current => return Err(Rejection::NotHolder { current }.into()),
    };
    lease.expires_at_ms = ctx.now_ms.saturating_add(lease.ttl_ms);
    let outcome = Outcome::LeaseRenewed {
        epoch,
        expires_at_ms: lease.expires_at_ms,
    };
    store(ctx, op.kind, &op.name, lease)?;
    Ok(outcome)
}

/// Removes the lease if `holder` and `epoch` match it (live or expired).
/// An absent lease answers `existed: false`: a retried release succeeds.
pub(crate) fn release(ctx: &mut Ctx<'_>, op: &LeaseOp, epoch: u64) -> Result<Outcome, Fail> {
    match read(ctx.txn, op.kind, &op.name)? {
        None => Ok(Outcome::LeaseReleased { existed: false }),
        Some(l) if l.holder == op.holder && l.epoch == epoch => {
            ctx.remove(op.kind.table(), &op.name)?;
            Ok(Outcome::LeaseReleased { existed: true })
        }
        current => Err(Rejection::NotHolder { current }.into()),
    }
}

/// Removes every lease with `expires_at_ms <= now_ms`: node leases, then
/// shard leases, each in key order.
pub(crate) fn expire(ctx: &mut Ctx<'_>) -> Result<Outcome, Fail> {
    let mut count = 0u64;
    for kind in [LeaseKind::Node, LeaseKind::Shard] {
        let table = kind.table();
        let mut expired = Vec::new();
        {
            let t = ctx.txn.open_table(table.definition())?;
            for entry in t.iter()? {
                let (key, value) = entry?;
                let key = key.value();
                let kv = tables::decode_kv(table, key, value.value())?;
                let lease = tables::decode_lease(table, key, &kv.value)?;
                if lease.expires_at_ms <= ctx.now_ms {
                    expired.push(key.to_owned());
                }
            }
        }
        for key in expired {
            ctx.remove(table, &key)?;
            count += 1;
        }
    }
    Ok(Outcome::LeasesExpired { count })
}
