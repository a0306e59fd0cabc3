//! The serving threads: like nginx's workers, each is a single-threaded
//! tokio runtime that owns its connections from start to end, both the
//! client's and the pooled ones to replicas, so a request never crosses
//! threads (no work stealing, no cross-thread wake-ups). One acceptor hands
//! accepted connections out round-robin.
//!
//! Stopping: the acceptor stops accepting, then every thread lets its
//! connections finish the request in progress (idle ones close at once)
//! for up to [`GRACE`], then drops its runtime, which ends what is left.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

use crate::server::Shared;

/// How long in-flight requests get to finish after a stop.
pub const GRACE: Duration = Duration::from_secs(10);

/// Where the gateway is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Serving.
    Running,
    /// Finish in-flight requests, then stop.
    Graceful,
    /// Stop now (the gateway was dropped).
    Now,
}

/// The serving threads.
#[derive(Debug)]
pub struct Threads {
    stop: watch::Sender<Stop>,
    done: Vec<oneshot::Receiver<()>>,
}

/// How many serving threads `requested` means (0: one per core).
pub fn count(requested: usize) -> usize {
    if requested > 0 {
        return requested;
    }
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

impl Threads {
    /// Starts `threads` serving threads, each with its own copy of `shared`
    /// and a replica pool of its own, and the acceptor on the caller's
    /// runtime.
    pub fn start(
        listener: TcpListener,
        shared: &Shared,
        threads: usize,
    ) -> std::io::Result<Threads> {
        let (stop, stop_rx) = watch::channel(Stop::Running);
        let mut senders = Vec::with_capacity(threads);
        let mut done = Vec::with_capacity(threads);
        for n in 0..threads {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel();
            let shared = Arc::new(Shared {
                client: crate::proxy::client(),
                ..shared.clone()
            });
            let stop = stop_rx.clone();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(format!("tidal-gateway-{n}"))
                .build()?;
            std::thread::Builder::new()
                .name(format!("tidal-gateway-{n}"))
                .spawn(move || {
                    runtime.block_on(serve_thread(shared, rx, stop));
                    drop(runtime);
                    let _ = done_tx.send(());
                })?;
            senders.push(tx);
            done.push(done_rx);
        }
        tokio::spawn(accept(listener, senders, stop_rx));
        Ok(Threads { stop, done })
    }

    /// Stops accepting and waits for the threads (in-flight requests finish
    /// first, up to [`GRACE`]).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(Stop::Graceful);
        for done in self.done.drain(..) {
            let _ = tokio::time::timeout(GRACE + Duration::from_secs(1), done).await;
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        if !self.done.is_empty() {
            let _ = self.stop.send(Stop::Now);
        }
    }
}

/// Accepts connections and hands them out round-robin until stopped.
async fn accept(
    listener: TcpListener,
    threads: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    mut stop: watch::Receiver<Stop>,
) {
    let mut next = 0;
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s != Stop::Running) => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "gateway cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Answers go out at once, not after Nagle's delay.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "cannot hand a connection to a serving thread");
                continue;
            }
        };
        if threads[next % threads.len()].send(tcp).is_err() {
            return;
        }
        next = next.wrapping_add(1);
    }
}

/// One serving thread: serves the connections it is handed until stopped.
async fn serve_thread(
    shared: Arc<Shared>,
    mut connections: mpsc::UnboundedReceiver<std::net::TcpStream>,
    mut stop: watch::Receiver<Stop>,
) {
    // Idle connections to replicas close after their idle time.
    tokio::spawn(shared.client.clone().sweep());
    // Every connection task holds a sender; all are gone when they end.
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    loop {
        let tcp = tokio::select! {
            _ = stop.wait_for(|s| *s != Stop::Running) => break,
            tcp = connections.recv() => tcp,
        };
        let Some(tcp) = tcp else { break };
        let tcp = match tokio::net::TcpStream::from_std(tcp) {
            Ok(tcp) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serve a connection");
                continue;
            }
        };
        tokio::spawn(serve_connection(
            Arc::clone(&shared),
            tcp,
            stop.clone(),
            open.clone(),
        ));
    }
    drop(open);
    if *stop.borrow() == Stop::Now {
        return;
    }
    tokio::select! {
        _ = all_closed.recv() => {}
        _ = stop.wait_for(|s| *s == Stop::Now) => {}
        () = tokio::time::sleep(GRACE) => {
            tracing::warn!("gateway connections still open {GRACE:?} after the stop; closing them");
        }
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    tcp: tokio::net::TcpStream,
    stop: watch::Receiver<Stop>,
    _open: mpsc::Sender<()>,
) {
    crate::conn::serve(&shared, tcp, &stop).await;
}
