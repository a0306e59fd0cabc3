//! Talking to the controllers: where each deployment's owner is, the
//! per-second metric reports, and wake pokes.
//!
//! The gateway does not compute shard ownership. It sends a deployment's
//! samples to the controller it last heard owns it, or to any live
//! controller (their presence leases, `controller:<id>` in NODE_LEASES, hold
//! their addresses); a controller answers each report with the owner of
//! every deployment it does not own, and those samples are sent again, once,
//! to that owner. Wakes follow the same redirects.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prost::Message;
use tidal_proto::pb;
use tidal_proto::pb::controller_client::ControllerClient;
use tidal_store::app::Table;
use tidal_store::client::Client;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// NODE_LEASES names of controllers' presence leases.
const PRESENCE_PREFIX: &str = "controller:";
/// How often the list of live controllers is refreshed.
const REFRESH: Duration = Duration::from_secs(5);
/// The longest a wake may take.
const WAKE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct State {
    /// Live controllers' addresses.
    live: Vec<String>,
    /// Deployment → its owner's address, as last told.
    owners: HashMap<String, String>,
    /// Open report streams by address.
    streams: HashMap<String, mpsc::Sender<Outgoing>>,
    /// Round-robin position over `live` for deployments with no known owner.
    next: usize,
}

/// A report and whether its samples were already redirected once.
#[derive(Debug)]
struct Outgoing {
    report: pb::MetricReport,
    redirected: bool,
}

/// The gateway's view of the controllers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Controllers {
    gateway_id: String,
    store: Client,
    state: Arc<Mutex<State>>,
    /// Samples to send again to their owner (after a redirect).
    resend: mpsc::UnboundedSender<Vec<pb::DeploymentMetrics>>,
}

impl Controllers {
    /// Starts refreshing the controller list; `resend` must be drained by
    /// [`Controllers::report`]'s caller (the reporter loop).
    pub fn new(
        gateway_id: String,
        store: Client,
    ) -> (Self, mpsc::UnboundedReceiver<Vec<pb::DeploymentMetrics>>) {
        let (resend, resent) = mpsc::unbounded_channel();
        let this = Self {
            gateway_id,
            store,
            state: Arc::default(),
            resend,
        };
        (this, resent)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-reads the live controllers' addresses from their presence leases.
    pub async fn refresh(&self) {
        match self.store.list(Table::NodeLeases, PRESENCE_PREFIX).await {
            Ok((rows, _)) => {
                let now = tidal_store::service::now_ms();
                let live: Vec<String> = rows
                    .into_iter()
                    .filter_map(|(_, kv)| pb::Lease::decode(kv.value.as_slice()).ok())
                    .filter(|l| l.expires_at_ms > now && !l.holder.is_empty())
                    .map(|l| l.holder)
                    .collect();
                self.lock().live = live;
            }
            Err(e) => tracing::debug!(error = %e, "cannot list controllers"),
        }
    }

    /// Keeps the controller list fresh until `stop`.
    pub async fn refresh_loop(self, mut stop: watch::Receiver<bool>) {
        loop {
            self.refresh().await;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                () = tokio::time::sleep(REFRESH) => {}
            }
        }
    }

    /// Where `deployment`'s reports and wakes go now.
    fn address_for(&self, deployment: &str) -> Option<String> {
        let mut state = self.lock();
        if let Some(owner) = state.owners.get(deployment)
            && state.live.contains(owner)
        {
            return Some(owner.clone());
        }
        if state.live.is_empty() {
            return None;
        }
        state.next = state.next.wrapping_add(1);
        let pick = state.live[state.next % state.live.len()].clone();
        Some(pick)
    }

    fn learn(&self, deployment: &str, owner: &str) {
        let mut state = self.lock();
        if owner.is_empty() {
            state.owners.remove(deployment);
        } else {
            state.owners.insert(deployment.to_owned(), owner.to_owned());
            if !state.live.iter().any(|a| a == owner) {
                state.live.push(owner.to_owned());
            }
        }
    }

    /// Sends samples to their deployments' owners (best effort: a sample
    /// that cannot be sent is dropped; the controller counts the gap).
    pub fn report(&self, samples: Vec<pb::DeploymentMetrics>, redirected: bool) {
        let mut by_address: HashMap<String, Vec<pb::DeploymentMetrics>> = HashMap::new();
        for sample in samples {
            match self.address_for(&sample.deployment_id) {
                Some(address) => by_address.entry(address).or_default().push(sample),
                None => {
                    tracing::debug!(deployment = %sample.deployment_id, "no controller to report to")
                }
            }
        }
        for (address, metrics) in by_address {
            let report = pb::MetricReport {
                gateway_id: self.gateway_id.clone(),
                metrics,
            };
            let sender = self.stream_to(&address);
            if sender.try_send(Outgoing { report, redirected }).is_err() {
                tracing::debug!(%address, "report stream full or closed; samples dropped");
                self.lock().streams.remove(&address);
            }
        }
    }

    /// The report stream to `address`, opened on first use.
    fn stream_to(&self, address: &str) -> mpsc::Sender<Outgoing> {
        if let Some(sender) = self.lock().streams.get(address)
            && !sender.is_closed()
        {
            return sender.clone();
        }
        let (tx, rx) = mpsc::channel::<Outgoing>(64);
        self.lock().streams.insert(address.to_owned(), tx.clone());
        tokio::spawn(self.clone().run_stream(address.to_owned(), rx));
        tx
    }

    /// One report stream: sends what arrives on `rx`, pairs each ack with
    /// its report (acks come in order), and redirects what the ack names.
    async fn run_stream(self, address: String, mut rx: mpsc::Receiver<Outgoing>) {
        let client = match ControllerClient::connect(format!("http://{address}")).await {
            Ok(client) => client,
            Err(e) => {
                tracing::debug!(%address, error = %e, "cannot reach controller");
                self.forget_stream(&address);
                return;
            }
        };
        let (out_tx, out_rx) = mpsc::channel::<pb::MetricReport>(64);
        let mut client = client;
        let sent: Arc<Mutex<VecDeque<Outgoing>>> = Arc::default();
        let acks = {
            let request = ReceiverStream::new(out_rx);
            match client.report(request).await {
                Ok(response) => response.into_inner(),
                Err(e) => {
                    tracing::debug!(%address, error = %e, "report stream refused");
                    self.forget_stream(&address);
                    return;
                }
            }
        };
        let reader = {
            let this = self.clone();
            let sent = Arc::clone(&sent);
            let mut acks = acks;
            tokio::spawn(async move {
                while let Ok(Some(ack)) = acks.message().await {
                    let Some(done) = sent
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .pop_front()
                    else {
                        continue;
                    };
                    this.redirected(done, ack);
                }
            })
        };
        while let Some(outgoing) = rx.recv().await {
            let report = outgoing.report.clone();
            sent.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_back(outgoing);
            if out_tx.send(report).await.is_err() || reader.is_finished() {
                break;
            }
        }
        reader.abort();
        self.forget_stream(&address);
    }

    /// A stream that ended is forgotten, so the next report reopens it.
    fn forget_stream(&self, address: &str) {
        self.lock().streams.remove(address);
    }

    fn redirected(&self, done: Outgoing, ack: pb::ReportAck) {
        if ack.redirects.is_empty() {
            return;
        }
        let mut again = Vec::new();
        for redirect in &ack.redirects {
            self.learn(&redirect.deployment_id, &redirect.owner_address);
        }
        if done.redirected {
            return;
        }
        for sample in done.report.metrics {
            if ack
                .redirects
                .iter()
                .any(|r| r.deployment_id == sample.deployment_id && !r.owner_address.is_empty())
            {
                again.push(sample);
            }
        }
        if !again.is_empty() {
            let _ = self.resend.send(again);
        }
    }

    /// Asks `deployment`'s owner to scale it up from zero for `pending`
    /// requests; the desired replicas after the wake, if a controller took it.
    pub async fn wake(&self, deployment: &str, pending: u32) -> Option<u32> {
        // No controller known yet (this gateway or the controllers just
        // started): read their presence leases again, for up to 3 s.
        let mut address = self.address_for(deployment);
        for _ in 0..10 {
            if address.is_some() {
                break;
            }
            self.refresh().await;
            address = self.address_for(deployment);
            if address.is_none() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        let mut address = address?;
        for _ in 0..5 {
            let request = pb::WakeRequest {
                deployment_id: deployment.to_owned(),
                pending,
            };
            let call = async {
                let mut client = ControllerClient::connect(format!("http://{address}"))
                    .await
                    .ok()?;
                client
                    .wake(request)
                    .await
                    .ok()
                    .map(tonic::Response::into_inner)
            };
            let answer = tokio::time::timeout(WAKE_TIMEOUT, call)
                .await
                .ok()
                .flatten()?;
            if answer.accepted {
                self.learn(deployment, &address);
                return Some(answer.desired_replicas);
            }
            // Not the owner (yet: a new deployment's actor may be starting).
            self.learn(deployment, &answer.owner_address);
            if !answer.owner_address.is_empty() {
                address = answer.owner_address;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }
}
