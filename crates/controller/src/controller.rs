//! A running controller: options → [`Controller::start`] → a handle.
//!
//! It connects to the store, starts the supervisor and the shard manager,
//! and serves the `tidal.v1.Controller` gRPC service with Prometheus
//! metrics at `GET /metrics` on the same port.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use tidal_proto::pb;
use tidal_store::client::Client;
use tidal_types::ClusterSettings;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::manager::{Directory, Manager, ManagerConfig, SharedDirectory};
use crate::metrics::Metrics;
use crate::port::{Clock, system_clock};
use crate::service::ControllerService;
use crate::shard::DEFAULT_SHARDS;
use crate::store_port::StorePort;
use crate::supervisor::{Routes, Supervisor, SupervisorArgs, SupervisorMsg};

/// How a controller runs.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Its id: the holder of its shard leases. Unique among controllers.
    pub id: String,
    /// Store endpoints (`host:port`), any members.
    pub store: Vec<String>,
    /// Where to serve (port 0 picks one).
    pub listen: SocketAddr,
    /// The address others use to reach it; the bound address if `None`.
    pub advertise: Option<String>,
    /// Shards in the cluster (every controller must agree): 64 by default.
    pub shards: u32,
    /// Presence and shard lease TTL: how long a dead controller's shards
    /// stay unowned. 10 s by default.
    pub lease_ttl: Duration,
    /// How often leases are renewed and shards rebalanced: 1 s by default.
    pub tick: Duration,
    /// The cluster's limits.
    pub cluster: ClusterSettings,
}

impl ControllerOptions {
    /// Defaults for everything but the id, store and address.
    pub fn new(id: impl Into<String>, store: Vec<String>, listen: SocketAddr) -> Self {
        Self {
            id: id.into(),
            store,
            listen,
            advertise: None,
            shards: DEFAULT_SHARDS,
            lease_ttl: Duration::from_secs(10),
            tick: Duration::from_secs(1),
            cluster: ClusterSettings::default(),
        }
    }
}

/// Why a controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Bad options.
    #[error("invalid controller options: {0}")]
    Options(String),
    /// The store client could not be built.
    #[error("store: {0}")]
    Store(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// An actor could not start.
    #[error("supervisor: {0}")]
    Actor(String),
}

/// A running controller. Stop it with [`Controller::shutdown`].
pub struct Controller {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    manager: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    supervisor: ActorRef<SupervisorMsg>,
    metrics: Metrics,
    routes: Routes,
    directory: SharedDirectory,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// Starts a controller with the system clock.
    pub async fn start(options: ControllerOptions) -> Result<Self, ControllerError> {
        Self::start_with_clock(options, system_clock()).await
    }

    /// Starts a controller whose actors read `clock`.
    pub async fn start_with_clock(
        options: ControllerOptions,
        clock: Clock,
    ) -> Result<Self, ControllerError> {
        if options.id.is_empty() || options.id.contains(':') {
            return Err(ControllerError::Options(format!(
                "the controller id must be non-empty and without ':'; got {:?}",
                options.id
            )));
        }
        if options.shards == 0 || options.lease_ttl < options.tick * 2 {
            return Err(ControllerError::Options(format!(
                "need shards ≥ 1 and a lease TTL at least two ticks; got {} shards, ttl {:?}, tick {:?}",
                options.shards, options.lease_ttl, options.tick
            )));
        }
        let client = Client::new(&options.store, Duration::from_secs(5))
            .map_err(|e| ControllerError::Store(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ControllerError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ControllerError::Listen {
                addr: options.listen,
                source,
            })?;
        let advertise = options
            .advertise
            .clone()
            .unwrap_or_else(|| addr.to_string());
        let metrics = Metrics::new();
        let routes: Routes = Arc::default();
        let directory: SharedDirectory = Arc::new(RwLock::new(Directory::default()));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (supervisor, _) = Actor::spawn(
            None,
            Supervisor,
            SupervisorArgs {
                store: Arc::new(StorePort::new(client.clone())),
                clock,
                cluster: options.cluster,
                metrics: metrics.clone(),
                routes: Arc::clone(&routes),
                events: events_tx,
                ticker: true,
            },
        )
        .await
        .map_err(|e| ControllerError::Actor(e.to_string()))?;
        let (stop, stop_rx) = watch::channel(false);
        let manager = Manager::new(
            ManagerConfig {
                id: options.id.clone(),
                advertise,
                shards: options.shards,
                lease_ttl: options.lease_ttl,
                tick: options.tick,
            },
            client,
            supervisor.clone(),
            Arc::clone(&routes),
            Arc::clone(&directory),
            metrics.clone(),
        );
        let manager = tokio::spawn(manager.run(events_rx, stop_rx.clone()));
        let service =
            ControllerService::new(Arc::clone(&routes), Arc::clone(&directory), options.shards);
        let grpc =
            tonic::service::Routes::new(pb::controller_server::ControllerServer::new(service));
        let scrape = metrics.clone();
        let app = grpc.into_axum_router().route(
            "/metrics",
            axum::routing::get(move || {
                let scrape = scrape.clone();
                async move { scrape.encode() }
            }),
        );
        let mut server_stop = stop_rx;
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = server_stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "controller server stopped");
            }
        });
        tracing::info!(id = %options.id, %addr, shards = options.shards, "controller running");
        Ok(Self {
            addr,
            stop,
            manager: Some(manager),
            server: Some(server),
            supervisor,
            metrics,
            routes,
            directory,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Deployments with a running actor.
    pub fn deployments(&self) -> Vec<String> {
        self.routes
            .read()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Who owns what, as last seen.
    pub fn directory(&self) -> Directory {
        self.directory.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// Stops at once without handing anything over, as a crash would: the
    /// leases stay until they expire. For tests and fault injection.
    pub fn abort(mut self) {
        if let Some(manager) = self.manager.take() {
            manager.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.supervisor.stop(None);
    }

    /// Hands every shard over (actors stopped, leases released), then stops.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(manager) = self.manager.take() {
            let _ = manager.await;
        }
        self.supervisor.stop(None);
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        }
    }
}
