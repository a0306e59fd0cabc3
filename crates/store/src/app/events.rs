//! Revisions and change events: recording them inside `apply`, trimming the
//! history deterministically, and reading it for watchers.
//!
//! The events of revision `r` are stored under key `r`, in the same write
//! transaction that makes `r` the current revision, so a reader sees a
//! revision's state and its events together or not at all.
//!
//! Retention: the events of the last [`super::EVENT_RETENTION_REVISIONS`]
//! revisions are kept, and fewer if they exceed
//! [`super::EVENT_RETENTION_BYTES`] encoded. Trimming depends only on the
//! applied entries, so every member keeps the same history.
//! `compacted_revision` is the lowest revision [`events_since`] still
//! answers; older ones get [`EventsError::Compacted`] and must re-list.

use prost::Message;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use tidal_proto::pb;

use super::tables::{self, COMPACTED_REVISION, CURRENT_REVISION, EVENT_BYTES, EVENTS};
use super::types::{ChangeEvent, Table};
use super::{AppError, Limits};

/// Which events a watcher wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this table; `None` = every table.
    pub table: Option<Table>,
    /// Only keys starting with this; empty = every key.
    pub key_prefix: String,
}

impl EventFilter {
    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &ChangeEvent) -> bool {
        self.table.is_none_or(|t| t == event.table) && event.key.starts_with(&self.key_prefix)
    }

    fn matches_proto(&self, event: &pb::ChangeEvent) -> bool {
        self.table
            .is_none_or(|t| i32::from(t.to_proto()) == event.table)
            && event.key.starts_with(&self.key_prefix)
    }
}

/// Why events cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The revision asked for is older than the retained history: re-list
    /// (read the current state) and watch from `current + 1`.
    #[error(
        "revision history before {compacted} is compacted; re-list at revision {current} and watch from {}",
        current + 1
    )]
    Compacted {
        /// The lowest revision still answered.
        compacted: u64,
        /// The current revision.
        current: u64,
    },
    /// A storage failure.
    #[error(transparent)]
    Store(#[from] AppError),
}

/// A page of events, and where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    /// The matching events, in revision order.
    pub events: Vec<ChangeEvent>,
    /// The revision to ask for next: every revision below it has been
    /// scanned (including those whose events the filter dropped).
    pub next_revision: u64,
}

/// The events from `from_revision` on that pass `filter`, at most `max`
/// (see [`events_page`]).
pub fn events_since(
    txn: &ReadTransaction,
    from_revision: u64,
    filter: &EventFilter,
    max: usize,
) -> Result<Vec<ChangeEvent>, EventsError> {
    events_page(txn, from_revision, filter, max).map(|page| page.events)
}

/// The events from `from_revision` on that pass `filter`, and where to go
/// on. A revision's events are never split across pages, so a page holds at
/// most `max` events plus the rest of one revision's. `from_revision` =
/// current + 1 answers an empty page ("nothing yet"). Fails with
/// [`EventsError::Compacted`] when `from_revision` is below the compacted
/// revision.
pub fn events_page(
    txn: &ReadTransaction,
    from_revision: u64,
    filter: &EventFilter,
    max: usize,
) -> Result<EventsPage, EventsError> {
    let current = tables::read_meta(txn, CURRENT_REVISION)?;
    let compacted = tables::read_meta(txn, COMPACTED_REVISION)?;
    if from_revision < compacted {
        return Err(EventsError::Compacted { compacted, current });
    }
    let mut events = Vec::new();
    let done = EventsPage {
        events: Vec::new(),
        next_revision: from_revision.max(current.saturating_add(1)),
    };
    if max == 0 {
        return Ok(EventsPage {
            next_revision: from_revision,
            ..done
        });
    }
    let Some(table) = tables::open_read(txn, EVENTS)? else {
        return Ok(done);
    };
    for entry in table.range(from_revision..).map_err(AppError::from)? {
        let (revision, bytes) = entry.map_err(AppError::from)?;
        let revision = revision.value();
        let stored = pb::ChangeEvents::decode(bytes.value()).map_err(|e| {
            AppError(format!(
                "stored events of revision {revision} are corrupt: {e}"
            ))
        })?;
        for event in stored.events {
            if filter.matches_proto(&event) {
                events.push(ChangeEvent::try_from(event)?);
            }
        }
        if events.len() >= max {
            return Ok(EventsPage {
                events,
                next_revision: revision + 1,
            });
        }
    }
    Ok(EventsPage { events, ..done })
}

/// Ends a command at `revision`: stores its events, makes it the current
/// revision, and trims the history.
pub(crate) fn finish(
    txn: &WriteTransaction,
    revision: u64,
    events: Vec<pb::ChangeEvent>,
    limits: &Limits,
) -> Result<(), AppError> {
    let current = tables::meta(txn, CURRENT_REVISION)?;
    if revision < current || (revision == current && revision != 0) {
        // Raft applies each index once, in order; only tests replay.
        tracing::warn!(
            revision,
            current,
            "state machine applied a revision out of order"
        );
    }
    let current = current.max(revision);
    tables::set_meta(txn, CURRENT_REVISION, current)?;

    let mut bytes = tables::meta(txn, EVENT_BYTES)?;
    let mut compacted = tables::meta(txn, COMPACTED_REVISION)?;
    let mut table = txn.open_table(EVENTS)?;
    if !events.is_empty() {
        let encoded = pb::ChangeEvents { events }.encode_to_vec();
        if let Some(old) = table.insert(revision, encoded.as_slice())? {
            bytes = bytes.saturating_sub(len64(old.value()));
        }
        bytes = bytes.saturating_add(len64(&encoded));
    }
    // Keep the last `event_revisions` revisions: revisions >= keep_from.
    let keep_from = (current + 1).saturating_sub(limits.event_revisions);
    compacted = compacted.max(keep_from);
    loop {
        let Some((first, size)) = table.first()?.map(|(k, v)| (k.value(), len64(v.value()))) else {
            break;
        };
        if first >= keep_from && bytes <= limits.event_bytes {
            break;
        }
        table.remove(first)?;
        bytes = bytes.saturating_sub(size);
        compacted = compacted.max(first + 1);
    }
    drop(table);
    tables::set_meta(txn, EVENT_BYTES, bytes)?;
    tables::set_meta(txn, COMPACTED_REVISION, compacted)?;
    Ok(())
}

fn len64(bytes: &[u8]) -> u64 {
    u64::try_from(bytes.len()).unwrap_or(u64::MAX)
}
