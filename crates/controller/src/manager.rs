//! The shard manager: presence, shard leases, and which deployments get an
//! actor.
//!
//! Every tick it renews this controller's presence (a node lease named
//! `controller:<id>` whose holder is its address), lists the live
//! controllers, and computes the shards it should own
//! ([`crate::shard::assignment`], the same answer on every controller). It
//! releases shards it should no longer own — after stopping their actors, so
//! the next owner's first write never races an old one — renews the ones it
//! keeps, and grants the ones it lacks once they are free (released, or
//! expired and removed by the store's leader). A renewal refused, or a write
//! refused for a stale epoch, means the shard is lost: its actors stop.
//!
//! It keeps an index of every deployment (id → shard) from a list and a
//! watch of table DEPLOYMENTS, starts an actor for each deployment of an
//! owned shard, passes settings changes to it, and stops it when the
//! deployment is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::ActorRef;
use tidal_proto::pb;
use tidal_store::Request;
use tidal_store::app::{EventFilter, Fence, Lease, LeaseKind, Outcome, Rejection, Table};
use tidal_store::client::{Client, ClientError};
use tidal_types::AutoscalingSettings;
use tokio::sync::{mpsc, watch};

use crate::actor::DeploymentMsg;
use crate::inactivity;
use crate::metrics::Metrics;
use crate::placer::{self, PLACEMENT_SHARD, PlacementInput};
use crate::shard::{assignment, shard_of};
use crate::store_port::{decode_record, settings_of};
use crate::supervisor::{Routes, SupervisorEvent, SupervisorMsg};

/// The prefix of controllers' presence leases (table NODE_LEASES).
pub const PRESENCE_PREFIX: &str = "controller:";

/// Who owns what, for redirects: shard → (controller id, its address).
#[derive(Debug, Default, Clone)]
pub struct Directory {
    /// Shard → owning controller id, from the shard leases.
    pub owners: BTreeMap<u32, String>,
    /// Controller id → its address, from the presence leases.
    pub addresses: BTreeMap<String, String>,
}

impl Directory {
    /// The address of the controller owning `shard`, if known.
    pub fn owner_address(&self, shard: u32) -> Option<&str> {
        let owner = self.owners.get(&shard)?;
        self.addresses.get(owner).map(String::as_str)
    }
}

/// Shared, updated every tick.
pub type SharedDirectory = Arc<RwLock<Directory>>;

/// One deployment in the manager's index.
#[derive(Debug, Clone)]
struct Indexed {
    shard: u32,
    settings: AutoscalingSettings,
    placement: PlacementInput,
}

/// What the manager runs with.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// This controller's id (shard lease holder).
    pub id: String,
    /// Its address for redirects.
    pub advertise: String,
    /// Shards in the cluster.
    pub shards: u32,
    /// Presence and shard lease time to live.
    pub lease_ttl: Duration,
    /// How often it renews and rebalances.
    pub tick: Duration,
}

/// The shard manager's state.
pub struct Manager {
    config: ManagerConfig,
    client: Client,
    supervisor: ActorRef<SupervisorMsg>,
    routes: Routes,
    directory: SharedDirectory,
    metrics: Metrics,
    /// Owned shard → its lease epoch and when it was last granted or renewed.
    owned: BTreeMap<u32, (u64, tokio::time::Instant)>,
    /// Every deployment → what the manager and the placer need of it.
    index: HashMap<String, Indexed>,
    presence: Option<u64>,
    /// A deployment's placement input changed since the last round.
    placement_dirty: bool,
    /// The last round's observation fingerprint (workers, liveness, replicas).
    placement_seen: Option<u64>,
    /// When a round must run even if nothing changed (ms since the epoch).
    placement_due: Option<u64>,
    /// When the next inactivity sweep is due.
    next_sweep: Option<tokio::time::Instant>,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("id", &self.config.id)
            .field("owned", &self.owned.len())
            .finish_non_exhaustive()
    }
}

fn store_err(e: ClientError) -> String {
    e.to_string()
}

impl Manager {
    /// A manager; [`Manager::run`] drives it.
    pub fn new(
        config: ManagerConfig,
        client: Client,
        supervisor: ActorRef<SupervisorMsg>,
        routes: Routes,
        directory: SharedDirectory,
        metrics: Metrics,
    ) -> Self {
        Self {
            config,
            client,
            supervisor,
            routes,
            directory,
            metrics,
            owned: BTreeMap::new(),
            index: HashMap::new(),
            presence: None,
            placement_dirty: true,
            placement_seen: None,
            placement_due: None,
            next_sweep: None,
        }
    }

    /// Runs until `stop` turns true, then hands every shard over.
    pub async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<SupervisorEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stream = None;
        loop {
            if stream.is_none() {
                match self.relist().await {
                    Ok(from) => {
                        let filter = EventFilter {
                            table: Some(Table::Deployments),
                            key_prefix: String::new(),
                        };
                        match self.client.watch(from, &filter).await {
                            Ok(s) => stream = Some(s),
                            Err(e) => tracing::warn!(error = %e, "cannot watch deployments"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot list deployments"),
                }
            }
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => self.reconcile().await,
                Some(event) = events.recv() => self.lost(event).await,
                message = async {
                    match stream.as_mut() {
                        Some(s) => s.message().await,
                        None => std::future::pending().await,
                    }
                } => match message {
                    Ok(Some(response)) => {
                        if !self.watched(response).await {
                            stream = None;
                        }
                    }
                    Ok(None) | Err(_) => stream = None,
                },
            }
            if *stop.borrow() {
                break;
            }
        }
        self.hand_over().await;
    }

    /// Lists every deployment into the index; returns the revision to watch from.
    async fn relist(&mut self) -> Result<u64, String> {
        let (rows, revision) = self
            .client
            .list(Table::Deployments, "")
            .await
            .map_err(store_err)?;
        let mut seen = BTreeSet::new();
        for (id, kv) in rows {
            self.upsert(&id, &kv.value).await;
            seen.insert(id);
        }
        let gone: Vec<String> = self
            .index
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.remove(&id);
        }
        Ok(revision + 1)
    }

    /// Applies one watch message; `false` means re-list and re-watch.
    async fn watched(&mut self, response: pb::WatchResponse) -> bool {
        match response.response {
            Some(pb::watch_response::Response::Events(events)) => {
                for event in events.events {
                    let value = event.value.map(|v| v.value).unwrap_or_default();
                    if event.kind == i32::from(pb::change_event::Kind::Delete) {
                        self.remove(&event.key);
                    } else {
                        self.upsert(&event.key, &value).await;
                    }
                }
                true
            }
            _ => false,
        }
    }

    async fn upsert(&mut self, id: &str, value: &[u8]) {
        let record = match decode_record(value) {
            Ok(record) => record,
            Err(e) => {
                tracing::warn!(deployment = id, error = %e, "skipping an undecodable deployment");
                return;
            }
        };
        let settings = settings_of(&record);
        let shard = shard_of(id, self.config.shards);
        let placement = PlacementInput::from_record(&record, settings.max_replica);
        let before = self.index.insert(
            id.to_owned(),
            Indexed {
                shard,
                settings,
                placement: placement.clone(),
            },
        );
        if before.as_ref().is_none_or(|b| b.placement != placement) {
            self.placement_dirty = true;
        }
        let before = before.map(|i| i.settings);
        let Some(&(epoch, _)) = self.owned.get(&shard) else {
            return;
        };
        match before {
            Some(old) if old == settings => {}
            Some(_) => {
                if let Some(actor) = self.route(id) {
                    let _ = actor.cast(DeploymentMsg::Settings(settings));
                }
            }
            None => self.start(id, Fence { shard, epoch }),
        }
    }

    fn remove(&mut self, id: &str) {
        if self.index.remove(id).is_some() {
            self.placement_dirty = true;
            let _ = self.supervisor.cast(SupervisorMsg::Stop(id.to_owned()));
        }
    }

    fn route(&self, id: &str) -> Option<ActorRef<DeploymentMsg>> {
        self.routes.read().ok()?.get(id).cloned()
    }

    fn start(&self, deployment: &str, fence: Fence) {
        let _ = self.supervisor.cast(SupervisorMsg::Start {
            deployment: deployment.to_owned(),
            fence,
        });
    }

    /// Forgets `shard` (no longer ours) and stops its actors.
    async fn drop_shard(&mut self, shard: u32) {
        self.owned.remove(&shard);
        self.stop_shard(shard).await;
    }

    async fn stop_shard(&mut self, shard: u32) {
        let _ = ractor::call_t!(self.supervisor, SupervisorMsg::StopShard, 10_000, shard);
        self.metrics.set_shard(shard, false);
    }

    async fn lost(&mut self, event: SupervisorEvent) {
        let SupervisorEvent::ShardLost { shard, epoch } = event;
        if self.owned.get(&shard).map(|o| o.0) == Some(epoch) {
            tracing::warn!(
                shard,
                epoch,
                "shard lost: a write was refused for a stale epoch"
            );
            self.drop_shard(shard).await;
        }
    }

    async fn write(&self, request: &Request) -> Result<Outcome, String> {
        Ok(self.client.write(request).await.map_err(store_err)?.outcome)
    }

    /// One round: leases run out by our own clock, presence, then shards.
    async fn reconcile(&mut self) {
        // A lease not renewed for a whole TTL (this process was paused, or
        // the store unreachable) is presumed lost before anything else runs:
        // its actors stop now, not when a write is refused. The store's
        // fence stays the guarantee; this only stops acting sooner.
        let expired: Vec<(u32, u64)> = self
            .owned
            .iter()
            .filter(|(_, (_, renewed))| renewed.elapsed() >= self.config.lease_ttl)
            .map(|(s, (e, _))| (*s, *e))
            .collect();
        for (shard, epoch) in expired {
            tracing::warn!(
                shard,
                epoch,
                "shard lease not renewed for a whole TTL; presumed lost"
            );
            self.drop_shard(shard).await;
        }
        if let Err(e) = self.renew_presence().await {
            tracing::warn!(error = %e, "presence not renewed");
            return;
        }
        let controllers = match self.client.list(Table::NodeLeases, PRESENCE_PREFIX).await {
            Ok((rows, _)) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list controllers");
                return;
            }
        };
        // A presence lease past its expiry is dead even before the store's
        // leader removes it. Judged by this controller's clock, which only
        // decides when to try: the store, on the leader's clock, still
        // refuses a grant while the old lease is live.
        let now = tidal_store::service::now_ms();
        let mut addresses = BTreeMap::new();
        for (name, lease) in rows_as_leases(controllers) {
            if lease.expires_at_ms <= now {
                continue;
            }
            let id = name.trim_start_matches(PRESENCE_PREFIX).to_owned();
            addresses.insert(id, lease.holder);
        }
        if !addresses.contains_key(&self.config.id) {
            // Our presence was just renewed; the list may predate it.
            addresses.insert(self.config.id.clone(), self.config.advertise.clone());
        }
        let live: Vec<String> = addresses.keys().cloned().collect();
        let desired: BTreeSet<u32> = assignment(self.config.shards, &live)
            .into_iter()
            .filter(|(_, owner)| *owner == self.config.id)
            .map(|(shard, _)| shard)
            .collect();
        // Hand over what is no longer ours, keep what is, take what is free.
        let owned: Vec<(u32, u64, tokio::time::Instant)> = self
            .owned
            .iter()
            .map(|(s, (e, at))| (*s, *e, *at))
            .collect();
        let mut renew = Vec::new();
        let mut handed = Vec::new();
        for (shard, epoch, renewed) in owned {
            if !desired.contains(&shard) {
                if self.release_shard(shard, epoch).await {
                    handed.push(shard);
                }
            } else if renewed.elapsed() >= self.config.lease_ttl / 3 {
                renew.push((shard, epoch));
            }
        }
        if !handed.is_empty() {
            tracing::info!(count = handed.len(), shards = %ranges(&handed), "shards handed over");
        }
        self.renew_shards(renew).await;
        let missing: Vec<u32> = desired
            .into_iter()
            .filter(|shard| !self.owned.contains_key(shard))
            .collect();
        self.grant_shards(missing).await;
        self.refresh_directory(addresses).await;
        if let Some(&(epoch, _)) = self.owned.get(&PLACEMENT_SHARD) {
            self.place(epoch).await;
            self.sweep_inactive(epoch).await;
        }
    }

    /// Deactivates idle deployments, now and then (see [`crate::inactivity`]).
    async fn sweep_inactive(&mut self, epoch: u64) {
        let now = tokio::time::Instant::now();
        if self.next_sweep.is_some_and(|next| now < next) {
            return;
        }
        let limits = inactivity::limits(&self.client).await;
        self.next_sweep = Some(now + inactivity::sweep_every(limits));
        let fence = Fence {
            shard: PLACEMENT_SHARD,
            epoch,
        };
        let now_ms = tidal_store::service::now_ms();
        let (deactivated, _, stale) = inactivity::sweep(&self.client, fence, limits, now_ms).await;
        if deactivated > 0 {
            tracing::info!(deactivated, "deactivated idle deployments");
        }
        if stale {
            self.lost(SupervisorEvent::ShardLost {
                shard: PLACEMENT_SHARD,
                epoch,
            })
            .await;
        }
    }

    /// One placement round for the whole cluster (this controller holds
    /// [`PLACEMENT_SHARD`]).
    async fn place(&mut self, epoch: u64) {
        let now = tidal_store::service::now_ms();
        let observed = match placer::observe(&self.client, now).await {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!(error = %e, "placement: cannot read workers and replicas");
                return;
            }
        };
        // Nothing changed since the last round: the plan would be the same.
        let due = self.placement_due.is_some_and(|due| due <= now);
        if !self.placement_dirty && !due && self.placement_seen == Some(observed.fingerprint) {
            return;
        }
        self.placement_dirty = false;
        self.placement_seen = Some(observed.fingerprint);
        let deployments: BTreeMap<String, PlacementInput> = self
            .index
            .iter()
            .map(|(id, i)| (id.clone(), i.placement.clone()))
            .collect();
        let fence = Fence {
            shard: PLACEMENT_SHARD,
            epoch,
        };
        let report = placer::round(&self.client, fence, &deployments, observed, now).await;
        self.placement_due = report.next_due_ms;
        // The index learns of the status writes from the watch, later: note
        // them now so the next round does not say them again.
        for (id, reason) in &report.statuses {
            if let Some(entry) = self.index.get_mut(id) {
                entry.placement.status_reason.clone_from(reason);
            }
        }
        for (id, status) in &report.deployment_statuses {
            if let Some(entry) = self.index.get_mut(id) {
                entry.placement.status = *status;
            }
        }
        if report.placed + report.stopped + report.lost + report.deleted > 0 {
            tracing::info!(
                placed = report.placed,
                stopped = report.stopped,
                lost = report.lost,
                deleted = report.deleted,
                "placement round"
            );
            // What it wrote changes what the next round observes.
            self.placement_dirty = true;
        }
        if report.stale {
            self.lost(SupervisorEvent::ShardLost {
                shard: PLACEMENT_SHARD,
                epoch,
            })
            .await;
        }
    }

    /// Runs one lease command per shard, all at once (the store coalesces
    /// concurrent writes), and returns each shard's answer.
    async fn lease_commands(
        &self,
        requests: Vec<(u32, Request)>,
    ) -> Vec<(u32, Result<Outcome, String>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for (shard, request) in requests {
            let client = self.client.clone();
            tasks.spawn(async move {
                let outcome = client
                    .write(&request)
                    .await
                    .map(|w| w.outcome)
                    .map_err(store_err);
                (shard, outcome)
            });
        }
        let mut answers = Vec::new();
        while let Some(answer) = tasks.join_next().await {
            if let Ok(answer) = answer {
                answers.push(answer);
            }
        }
        answers.sort_by_key(|(shard, _)| *shard);
        answers
    }

    async fn renew_presence(&mut self) -> Result<(), String> {
        let name = format!("{PRESENCE_PREFIX}{}", self.config.id);
        let ttl = ttl_ms(self.config.lease_ttl);
        if let Some(epoch) = self.presence {
            let renew = Request::renew_lease(LeaseKind::Node, &name, &self.config.advertise, epoch);
            if let Outcome::LeaseRenewed { .. } = self.write(&renew).await? {
                return Ok(());
            }
        }
        let grant = Request::grant_lease(LeaseKind::Node, &name, &self.config.advertise, ttl);
        match self.write(&grant).await? {
            Outcome::LeaseGranted { epoch, .. } => {
                self.presence = Some(epoch);
                Ok(())
            }
            other => Err(format!("presence lease refused: {other:?}")),
        }
    }

    async fn grant_shards(&mut self, shards: Vec<u32>) {
        let ttl = ttl_ms(self.config.lease_ttl);
        let requests = shards
            .into_iter()
            .map(|shard| {
                let grant = Request::grant_lease(
                    LeaseKind::Shard,
                    LeaseKind::shard_name(shard),
                    &self.config.id,
                    ttl,
                );
                (shard, grant)
            })
            .collect();
        let mut acquired = Vec::new();
        for (shard, answer) in self.lease_commands(requests).await {
            match answer {
                Ok(Outcome::LeaseGranted { epoch, .. }) => {
                    tracing::debug!(shard, epoch, "shard acquired");
                    acquired.push(shard);
                    if shard == PLACEMENT_SHARD {
                        self.placement_dirty = true;
                    }
                    self.owned
                        .insert(shard, (epoch, tokio::time::Instant::now()));
                    self.metrics.set_shard(shard, true);
                    let fence = Fence { shard, epoch };
                    let deployments: Vec<String> = self
                        .index
                        .iter()
                        .filter(|(_, i)| i.shard == shard)
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in deployments {
                        self.start(&id, fence);
                    }
                }
                Ok(Outcome::Rejected(Rejection::LeaseHeld { holder, .. })) => {
                    tracing::debug!(shard, %holder, "shard still held; waiting for it");
                }
                Ok(other) => tracing::warn!(shard, ?other, "shard grant refused"),
                Err(e) => tracing::warn!(shard, error = %e, "shard grant failed"),
            }
        }
        if !acquired.is_empty() {
            tracing::info!(count = acquired.len(), shards = %ranges(&acquired), "shards acquired");
        }
    }

    async fn renew_shards(&mut self, shards: Vec<(u32, u64)>) {
        let requests = shards
            .iter()
            .map(|&(shard, epoch)| {
                let renew = Request::renew_lease(
                    LeaseKind::Shard,
                    LeaseKind::shard_name(shard),
                    &self.config.id,
                    epoch,
                );
                (shard, renew)
            })
            .collect();
        let sent = tokio::time::Instant::now();
        for (shard, answer) in self.lease_commands(requests).await {
            let Some(&(epoch, _)) = self.owned.get(&shard) else {
                continue;
            };
            match answer {
                Ok(Outcome::LeaseRenewed { .. }) => {
                    self.owned.insert(shard, (epoch, sent));
                }
                Ok(other) => {
                    tracing::warn!(
                        shard,
                        epoch,
                        ?other,
                        "shard lease lost; stopping its actors"
                    );
                    self.drop_shard(shard).await;
                }
                Err(e) => tracing::warn!(shard, error = %e, "shard renewal failed; retrying"),
            }
        }
    }

    /// Releases one shard (its actors stopped first); whether the store
    /// took the release.
    async fn release_shard(&mut self, shard: u32, epoch: u64) -> bool {
        // Actors first: the next owner must not race a write of ours.
        self.drop_shard(shard).await;
        let release = Request::release_lease(
            LeaseKind::Shard,
            LeaseKind::shard_name(shard),
            &self.config.id,
            epoch,
        );
        match self.write(&release).await {
            Ok(_) => {
                tracing::debug!(shard, epoch, "shard handed over");
                true
            }
            Err(e) => {
                tracing::warn!(shard, error = %e, "shard release failed; it will expire");
                false
            }
        }
    }

    async fn refresh_directory(&self, addresses: BTreeMap<String, String>) {
        let owners = match self.client.list(Table::ShardLeases, "").await {
            Ok((rows, _)) => rows_as_leases(rows)
                .filter_map(|(name, lease)| Some((name.parse::<u32>().ok()?, lease.holder)))
                .collect(),
            Err(_) => return,
        };
        if let Ok(mut directory) = self.directory.write() {
            *directory = Directory { owners, addresses };
        }
    }

    /// Graceful stop: every shard released (actors first), presence given up.
    async fn hand_over(&mut self) {
        let owned: Vec<(u32, u64)> = self.owned.iter().map(|(s, (e, _))| (*s, *e)).collect();
        let mut handed = Vec::new();
        for (shard, epoch) in owned {
            if self.release_shard(shard, epoch).await {
                handed.push(shard);
            }
        }
        if !handed.is_empty() {
            tracing::info!(count = handed.len(), shards = %ranges(&handed), "shards handed over");
        }
        if let Some(epoch) = self.presence.take() {
            let name = format!("{PRESENCE_PREFIX}{}", self.config.id);
            let release =
                Request::release_lease(LeaseKind::Node, name, &self.config.advertise, epoch);
            let _ = self.write(&release).await;
        }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Lease rows decoded (rows that do not decode are skipped).
fn rows_as_leases(
    rows: Vec<(String, tidal_store::app::KeyValueRecord)>,
) -> impl Iterator<Item = (String, Lease)> {
    use prost::Message;
    rows.into_iter().filter_map(|(name, kv)| {
        let lease = pb::Lease::decode(kv.value.as_slice()).ok()?;
        Some((name, Lease::from(lease)))
    })
}

/// Shard numbers as sorted ranges, for one log line: `0-5,9,12-13`.
fn ranges(shards: &[u32]) -> String {
    let mut sorted = shards.to_vec();
    sorted.sort_unstable();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_lists_read_as_ranges() {
        assert_eq!(ranges(&[3, 0, 1, 2, 9, 12, 13]), "0-3,9,12-13");
        assert_eq!(ranges(&[5]), "5");
        assert_eq!(ranges(&[]), "");
    }
}
