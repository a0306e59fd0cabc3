//! `Gateway::start`: the routing table from the store, the reporter, and
//! the HTTP server.

use std::net::SocketAddr;
use std::time::Duration;

use tidal_store::client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::activator::{Activator, ActivatorOptions};
use crate::controllers::Controllers;
use crate::meter::{Meters, unix_now};
use crate::metrics::Metrics;
use crate::routes::Routes;
use crate::server::Shared;
use crate::threads::Threads;

/// How a gateway runs.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Its id (in reports).
    pub id: String,
    /// Store endpoints.
    pub store: Vec<String>,
    /// Where to serve HTTP (port 0 picks one).
    pub listen: SocketAddr,
    /// The activator's queue size and timeout.
    pub activator: ActivatorOptions,
    /// The largest request body accepted (64 MiB).
    pub max_body_bytes: usize,
    /// Require an API key with the `inference` scope on every request
    /// (`Authorization: Bearer …` or `Api-Key …`). On by default.
    pub require_key: bool,
    /// Serving threads, each a single-threaded runtime owning its
    /// connections; 0 (the default) is one per core.
    pub threads: usize,
}

impl GatewayOptions {
    /// Defaults: 127.0.0.1, any port; the activator's defaults; 64 MiB bodies.
    pub fn new(id: impl Into<String>, store: Vec<String>) -> Self {
        Self {
            id: id.into(),
            store,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            activator: ActivatorOptions::default(),
            max_body_bytes: 64 << 20,
            require_key: true,
            threads: 0,
        }
    }
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store client could not be built.
    #[error("store: {0}")]
    Store(String),
    /// The serving threads could not be started.
    #[error("cannot start the serving threads: {0}")]
    Threads(std::io::Error),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    threads: Option<Threads>,
    routes: Routes,
}

impl Gateway {
    /// Starts following the store, reporting, and serving.
    pub async fn start(options: GatewayOptions) -> Result<Gateway, GatewayError> {
        let client = Client::new(&options.store, Duration::from_secs(5))
            .map_err(|e| GatewayError::Store(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| GatewayError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| GatewayError::Listen {
                addr: options.listen,
                source,
            })?;
        let (stop, stop_rx) = watch::channel(false);
        let routes = Routes::new();
        let meters = Meters::default();
        let (controllers, resent) = Controllers::new(options.id.clone(), client.clone());
        controllers.refresh().await;
        let activator = Activator::new(
            options.activator,
            routes.clone(),
            controllers.clone(),
            meters.clone(),
        );
        let keys = options
            .require_key
            .then(|| tidal_auth::KeyRing::start(client.clone()));
        let shared = Shared {
            keys,
            routes: routes.clone(),
            meters: meters.clone(),
            activator,
            client: crate::proxy::client(),
            metrics: Metrics::default(),
            max_body_bytes: options.max_body_bytes,
        };
        let threads = crate::threads::count(options.threads);
        let threads = Threads::start(listener, &shared, threads).map_err(GatewayError::Threads)?;
        let tasks = vec![
            tokio::spawn(crate::sync::follow(
                client.clone(),
                routes.clone(),
                stop_rx.clone(),
            )),
            tokio::spawn(controllers.clone().refresh_loop(stop_rx.clone())),
            tokio::spawn(report_loop(
                controllers,
                meters,
                crate::activity::Activity::new(client.clone()),
                resent,
                stop_rx,
            )),
        ];
        tracing::info!(%addr, "gateway serving");
        Ok(Gateway {
            addr,
            stop,
            tasks,
            threads: Some(threads),
            routes,
        })
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its routing table (tests).
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Stops serving (in-flight requests finish first, up to 10 s).
    pub async fn shutdown(mut self) {
        if let Some(threads) = self.threads.take() {
            threads.shutdown().await;
        }
        let _ = self.stop.send(true);
        for task in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Every second: closed samples to their controllers; redirected ones again.
async fn report_loop(
    controllers: Controllers,
    meters: Meters,
    activity: crate::activity::Activity,
    mut resent: tokio::sync::mpsc::UnboundedReceiver<Vec<tidal_proto::pb::DeploymentMetrics>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {
                let samples = meters.take(unix_now());
                for s in samples.iter().filter(|s| s.requests > 0) {
                    activity.saw(&s.deployment_id, (s.second + 1).saturating_mul(1000));
                }
                if !samples.is_empty() {
                    controllers.report(samples, false);
                }
            }
            Some(again) = resent.recv() => controllers.report(again, true),
        }
    }
}
