//! `Api::start`: the store client, the key ring, and the HTTP server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tidal_auth::KeyRing;
use tidal_store::client::Client;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::ClusterConfig;
use crate::server::{Ctx, router};
use crate::store::Store;

/// How the API runs.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    /// Store endpoints (`host:port`), any members.
    pub store: Vec<String>,
    /// Where to serve HTTP (port 0 picks one).
    pub listen: SocketAddr,
    /// The cluster's settings while the store holds none (and for any
    /// field it leaves at 0).
    pub cluster: ClusterConfig,
}

impl ApiOptions {
    /// 127.0.0.1 on any port, Baseten's default cluster settings.
    pub fn new(store: Vec<String>) -> Self {
        Self {
            store,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster: ClusterConfig::default(),
        }
    }
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The store client could not be built.
    #[error("store: {0}")]
    Store(String),
    /// The defaults are out of range.
    #[error("cluster settings: {0}")]
    Settings(String),
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running management API.
#[derive(Debug)]
pub struct Api {
    addr: SocketAddr,
    ring: KeyRing,
    stop: watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
}

impl Api {
    /// Connects to the store, starts following its API keys, and serves.
    pub async fn start(options: ApiOptions) -> Result<Api, ApiError> {
        options
            .cluster
            .validate()
            .map_err(|e| ApiError::Settings(e.message))?;
        let client = Client::new(&options.store, Duration::from_secs(5))
            .map_err(|e| ApiError::Store(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(options.listen)
            .await
            .map_err(|source| ApiError::Listen {
                addr: options.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ApiError::Listen {
            addr: options.listen,
            source,
        })?;
        let ring = KeyRing::start(client.clone());
        let ctx = Arc::new(Ctx {
            store: Store { client },
            ring: ring.clone(),
            defaults: options.cluster,
        });
        let (stop, mut stop_rx) = watch::channel(false);
        let app = router(ctx);
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "api server stopped");
            }
        });
        tracing::info!(%addr, "management api serving");
        Ok(Api {
            addr,
            ring,
            stop,
            server: Some(server),
        })
    }

    /// Where it serves.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its key ring (tests wait on it for a key's creation or revocation).
    pub fn key_ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Stops serving (in-flight requests finish first, up to 10 s).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(server) = self.server.take()
            && tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .is_err()
        {
            tracing::warn!("api server did not stop within 10 s");
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}
