//! The node's weight cache: fetch weight files by URL, verify their size and
//! sha256, reuse them across replicas and restarts, and evict the least
//! recently used files that no running replica uses.
//!
//! # On-disk layout
//!
//! ```text
//! DIR/
//!   sha256/
//!     <hex>            a complete, verified file named by its sha256 (64 lowercase hex)
//!     <hex>.partial    a download in progress; removed on failure and on open
//! ```
//!
//! A file appears under its final name only after its byte count and digest
//! were checked and it was fsynced, so a complete name always means a verified
//! file. On [`WeightCache::open`] complete files are adopted without re-hashing
//! (their size comes from metadata), leftover `*.partial` files are removed, and
//! the last-use order starts from each file's mtime (a cache hit also sets the
//! mtime, so the order survives a restart).
//!
//! # Eviction rule
//!
//! After a file is added (and after an unpin, and on open) the cache removes
//! **unpinned** files, least recently used first, until the total size is at
//! most the limit. A pinned file (see [`WeightCache::pin`]: a running replica
//! uses it) is never evicted, nor is the file whose fetch triggered the
//! eviction. If the files that may not be evicted alone exceed the limit, they
//! are kept and a warning is logged; the fetch still succeeds.
//!
//! **Invariant:** one [`WeightCache`] per directory. Clones share state; two
//! caches opened on one directory would race on `*.partial` files.
//!
//! # Supported URLs
//!
//! - `file:///absolute/path` (no percent-decoding);
//! - `http://host[:port]/path` (a plain HTTP/1.1 GET, port 80 by default);
//! - `https://host[:port]/path` (the same over TLS, port 443 by default): the
//!   server's certificate must be valid for `host` and chain to Mozilla's
//!   roots (built in, so no system certificates are needed) or to an extra root
//!   given in [`CacheOptions`]; an untrusted certificate fails the fetch with
//!   [`CacheError::UntrustedCertificate`]. There is no way to skip verification.
//!
//! Redirects are not followed: anything but `200 OK` fails the fetch. Host
//! names are resolved by the system resolver.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

#[path = "tls.rs"]
mod tls;

/// Name of the subdirectory holding files by digest.
const DIGEST_DIR: &str = "sha256";
/// Suffix of a download in progress.
const PARTIAL_SUFFIX: &str = ".partial";
/// Read buffer for `file://` sources.
const READ_CHUNK: usize = 1 << 20;

/// One weight file a deployment needs: where to get it and what it must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightSpec {
    /// `https://…`, `http://…` or `file:///…` URL of the file.
    pub url: String,
    /// Exact size in bytes.
    pub size: u64,
    /// Expected sha256 of the content: 64 lowercase hex characters.
    pub sha256: String,
}

/// Errors of the weight cache. Each names the URL or digest involved.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The sha256 is not 64 lowercase hex characters.
    #[error("sha256 must be 64 lowercase hex characters; got {digest:?}")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// The URL could not be understood.
    #[error("invalid weight URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The URL scheme is not supported.
    #[error("unsupported weight URL {url:?}: only https://, http:// and file:// are supported")]
    Unsupported {
        /// The URL as given.
        url: String,
    },
    /// The file could never fit in the cache.
    #[error(
        "weight file {url} is {size} bytes, larger than the cache limit of {limit} bytes; \
         raise the cache limit"
    )]
    TooLarge {
        /// The URL of the file.
        url: String,
        /// Its declared size.
        size: u64,
        /// The cache limit.
        limit: u64,
    },
    /// The content's sha256 differs from the declared one; the file was refused.
    #[error(
        "weight file {url} has sha256 {actual} but the deployment declares {expected}; \
         the file was refused (fix the sha256 in the deployment or the file at the URL)"
    )]
    DigestMismatch {
        /// The URL of the file.
        url: String,
        /// The declared digest.
        expected: String,
        /// The digest of what was received.
        actual: String,
    },
    /// The content's size differs from the declared one; the file was refused.
    #[error(
        "weight file {url} is {actual} bytes but the deployment declares {expected}; \
         the file was refused"
    )]
    SizeMismatch {
        /// The URL of the file.
        url: String,
        /// The declared size.
        expected: u64,
        /// The size received (so far, if it was cut short for being too long).
        actual: u64,
    },
    /// The `https://` server's certificate was not trusted: not issued by a
    /// trusted root, not valid for the URL's host, expired, …
    #[error(
        "fetching weight file {url} failed: the server's TLS certificate was not trusted \
         ({source}); the server needs a certificate for that host issued by a CA in \
         Mozilla's root list (or by a root given in CacheOptions::extra_roots_pem)"
    )]
    UntrustedCertificate {
        /// The URL of the file.
        url: String,
        /// What rustls found wrong with the certificate.
        #[source]
        source: rustls::Error,
    },
    /// The TLS handshake with the `https://` server failed for another reason
    /// than its certificate (no common protocol version, connection closed, …).
    #[error("fetching weight file {url} failed: TLS handshake failed: {source}")]
    Tls {
        /// The URL of the file.
        url: String,
        /// The underlying error (often wrapping a `rustls::Error`).
        #[source]
        source: io::Error,
    },
    /// TLS for `https://` could not be set up, e.g. the extra trusted roots in
    /// [`CacheOptions`] are not PEM certificates.
    #[error("weight cache: cannot set up TLS for https:// downloads: {reason}")]
    TlsSetup {
        /// What is wrong.
        reason: String,
    },
    /// The download made no progress for the stall timeout.
    #[error(
        "fetching weight file {url} stalled: nothing arrived for {waited:?} \
         (after {received} bytes of the body); the download was abandoned"
    )]
    Stalled {
        /// The URL of the file.
        url: String,
        /// How long nothing arrived.
        waited: Duration,
        /// Body bytes received before the stall.
        received: u64,
    },
    /// The HTTP server answered with a status other than 200.
    #[error("fetching weight file {url} failed: HTTP status {status}")]
    HttpStatus {
        /// The URL of the file.
        url: String,
        /// The status received.
        status: u16,
    },
    /// The HTTP exchange failed.
    #[error("fetching weight file {url} failed: {source}")]
    Http {
        /// The URL of the file.
        url: String,
        /// The underlying error.
        #[source]
        source: hyper::Error,
    },
    /// Reading the source (a local file or a TCP connection) failed.
    #[error("reading weight file {url} failed: {source}")]
    Source {
        /// The URL of the file.
        url: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A cache directory operation failed.
    #[error("weight cache: cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Options of a [`WeightCache`] beyond its directory and size limit.
/// The default is what [`WeightCache::open`] uses.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// PEM `CERTIFICATE` blocks of extra root certificates trusted for
    /// `https://` downloads, on top of Mozilla's built-in roots (e.g. a
    /// private CA, or a test server's self-signed certificate). Empty: none.
    pub extra_roots_pem: Vec<u8>,
    /// An HTTP(S) download fails with [`CacheError::Stalled`] when the
    /// connection, the TLS handshake, the response head or the next piece
    /// of the body takes longer than this. 60 s by default.
    pub stall_timeout: Duration,
}

impl Default for CacheOptions {
    fn default() -> Self {
        Self {
            extra_roots_pem: Vec::new(),
            stall_timeout: Duration::from_secs(60),
        }
    }
}

/// A node's weight cache. Cheap to clone; clones share one cache.
#[derive(Debug, Clone)]
pub struct WeightCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `DIR/sha256`.
    dir: PathBuf,
    limit: u64,
    /// TLS client configuration for `https://` downloads.
    tls: Arc<rustls::ClientConfig>,
    /// See [`CacheOptions::stall_timeout`].
    stall: Duration,
    state: Mutex<State>,
    /// One lock per digest being fetched, so one digest is downloaded once.
    fetch_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    pins: HashMap<String, u32>,
    total: u64,
    /// Logical clock for last-use order.
    clock: u64,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    last_use: u64,
}

impl WeightCache {
    /// Opens (creating if needed) the cache in `dir` with a size limit and
    /// default [`CacheOptions`].
    ///
    /// Adopts complete files, removes `*.partial` leftovers, orders last use
    /// by mtime, and evicts down to the limit.
    pub fn open(dir: &Path, limit_bytes: u64) -> Result<Self, CacheError> {
        Self::open_with(dir, limit_bytes, CacheOptions::default())
    }

    /// Like [`Self::open`], with options: extra trusted roots for `https://`.
    /// Fails with [`CacheError::TlsSetup`] if those roots are not usable.
    pub fn open_with(
        dir: &Path,
        limit_bytes: u64,
        options: CacheOptions,
    ) -> Result<Self, CacheError> {
        let tls = tls::client_config(&options.extra_roots_pem)?;
        let dir = dir.join(DIGEST_DIR);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let mut found = Vec::new();
        for item in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let item = item.map_err(io_err("read", &dir))?;
            let path = item.path();
            let name = item.file_name().to_string_lossy().into_owned();
            if name.ends_with(PARTIAL_SUFFIX) {
                fs::remove_file(&path).map_err(io_err("remove", &path))?;
                debug!(path = %path.display(), "removed leftover partial download");
                continue;
            }
            let meta = item.metadata().map_err(io_err("stat", &path))?;
            if !meta.is_file() || !is_digest(&name) {
                warn!(path = %path.display(), "ignoring unexpected entry in the weight cache");
                continue;
            }
            let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((mtime, name, meta.len()));
        }
        found.sort();
        let mut state = State::default();
        for (_, digest, size) in found {
            state.clock += 1;
            state.total += size;
            let last_use = state.clock;
            state.entries.insert(digest, Entry { size, last_use });
        }
        let inner = Inner {
            dir,
            limit: limit_bytes,
            tls,
            stall: options.stall_timeout,
            state: Mutex::new(state),
            fetch_locks: Mutex::new(HashMap::new()),
        };
        inner.evict(&mut inner.lock_state(), None);
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Returns the path of the verified file for `spec`, downloading it first
    /// unless it is cached. Concurrent fetches of one digest download once.
    ///
    /// The returned file may be evicted once no pin holds it: pin the digest
    /// (see [`Self::pin`]) before fetching to keep it for a replica.
    pub async fn fetch(&self, spec: &WeightSpec) -> Result<PathBuf, CacheError> {
        let source = Source::parse(spec)?;
        if spec.size > self.inner.limit {
            return Err(CacheError::TooLarge {
                url: spec.url.clone(),
                size: spec.size,
                limit: self.inner.limit,
            });
        }
        if let Some(path) = self.inner.hit(&spec.sha256) {
            return Ok(path);
        }
        let lock = self.inner.fetch_lock(&spec.sha256);
        let result = {
            let _guard = lock.lock().await;
            // Another fetch may have finished while this one waited.
            match self.inner.hit(&spec.sha256) {
                Some(path) => Ok(path),
                None => self.inner.download(spec, &source).await,
            }
        };
        self.inner.release_fetch_lock(&spec.sha256, lock);
        result
    }

    /// Marks the file `sha256` as used by one more running replica: it will not
    /// be evicted until a matching [`Self::unpin`]. The digest need not be cached
    /// yet, so a replica can pin before it fetches.
    pub fn pin(&self, sha256: &str) -> Result<(), CacheError> {
        check_digest(sha256)?;
        *self
            .inner
            .lock_state()
            .pins
            .entry(sha256.to_owned())
            .or_insert(0) += 1;
        Ok(())
    }

    /// Releases one pin of `sha256`, then evicts if the cache is over its limit.
    /// Unpinning a digest that is not pinned logs a warning and does nothing.
    pub fn unpin(&self, sha256: &str) {
        let mut state = self.inner.lock_state();
        match state.pins.get_mut(sha256) {
            Some(count) if *count > 1 => *count -= 1,
            Some(_) => {
                state.pins.remove(sha256);
            }
            None => {
                warn!(digest = sha256, "unpin of a weight file that is not pinned");
                return;
            }
        }
        self.inner.evict(&mut state, None);
    }

    /// Total size in bytes of the complete files in the cache.
    pub fn total_bytes(&self) -> u64 {
        self.inner.lock_state().total
    }

    /// Whether a verified file with this sha256 is in the cache.
    pub fn contains(&self, sha256: &str) -> bool {
        self.inner.lock_state().entries.contains_key(sha256)
    }
}

impl Inner {
    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn path_of(&self, digest: &str) -> PathBuf {
        self.dir.join(digest)
    }

    /// On a hit, marks the file used and returns its path.
    fn hit(&self, digest: &str) -> Option<PathBuf> {
        let mut state = self.lock_state();
        state.clock += 1;
        let now = state.clock;
        let entry = state.entries.get_mut(digest)?;
        entry.last_use = now;
        let path = self.path_of(digest);
        // Best effort: keep the order across restarts.
        if let Err(err) = fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()))
        {
            debug!(path = %path.display(), %err, "could not update the mtime of a cached weight file");
        }
        Some(path)
    }

    fn fetch_lock(&self, digest: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .fetch_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(locks.entry(digest.to_owned()).or_default())
    }

    fn release_fetch_lock(&self, digest: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self
            .fetch_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map and this caller hold it: nobody else waits on it.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(digest);
        }
    }

    /// Downloads `spec` to `<hex>.partial`, verifies it, moves it into place,
    /// records it and evicts. Removes the partial file on any failure.
    async fn download(&self, spec: &WeightSpec, source: &Source) -> Result<PathBuf, CacheError> {
        let partial = self.dir.join(format!("{}{PARTIAL_SUFFIX}", spec.sha256));
        let result = self.download_to(spec, source, &partial).await;
        if result.is_err() {
            match tokio::fs::remove_file(&partial).await {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => {
                    warn!(path = %partial.display(), %err, "could not remove a failed download")
                }
            }
        }
        let path = result?;
        let mut state = self.lock_state();
        state.clock += 1;
        let last_use = state.clock;
        let previous = state.entries.insert(
            spec.sha256.clone(),
            Entry {
                size: spec.size,
                last_use,
            },
        );
        if let Some(previous) = previous {
            state.total -= previous.size;
        }
        state.total += spec.size;
        self.evict(&mut state, Some(&spec.sha256));
        Ok(path)
    }

    async fn download_to(
        &self,
        spec: &WeightSpec,
        source: &Source,
        partial: &Path,
    ) -> Result<PathBuf, CacheError> {
        let file = tokio::fs::File::create(partial)
            .await
            .map_err(io_err("create", partial))?;
        let mut sink = Sink {
            file,
            hasher: Sha256::new(),
            written: 0,
            spec,
            partial,
        };
        match source {
            Source::File(path) => read_file(path, &mut sink).await?,
            Source::Http { uri, tls } => {
                let tls = tls.then_some(&self.tls);
                read_http(uri, tls, self.stall, &mut sink).await?;
            }
        }
        let Sink {
            mut file,
            hasher,
            written,
            ..
        } = sink;
        if written != spec.size {
            return Err(CacheError::SizeMismatch {
                url: spec.url.clone(),
                expected: spec.size,
                actual: written,
            });
        }
        let actual = to_hex(&hasher.finalize());
        if actual != spec.sha256 {
            return Err(CacheError::DigestMismatch {
                url: spec.url.clone(),
                expected: spec.sha256.clone(),
                actual,
            });
        }
        file.flush().await.map_err(io_err("write", partial))?;
        file.sync_all().await.map_err(io_err("fsync", partial))?;
        drop(file);
        let path = self.path_of(&spec.sha256);
        tokio::fs::rename(partial, &path)
            .await
            .map_err(io_err("rename into place", partial))?;
        // Make the rename durable; best effort where directories cannot be opened.
        if let Err(err) = fs::File::open(&self.dir).and_then(|d| d.sync_all()) {
            debug!(dir = %self.dir.display(), %err, "could not fsync the cache directory");
        }
        Ok(path)
    }

    /// Removes least recently used unpinned files (never `protect`) until the
    /// total is at most the limit.
    fn evict(&self, state: &mut State, protect: Option<&str>) {
        while state.total > self.limit {
            let victim = state
                .entries
                .iter()
                .filter(|(digest, _)| {
                    !state.pins.contains_key(*digest) && Some(digest.as_str()) != protect
                })
                .min_by_key(|(_, entry)| entry.last_use)
                .map(|(digest, _)| digest.clone());
            let Some(victim) = victim else {
                warn!(
                    total = state.total,
                    limit = self.limit,
                    "weight cache over its limit, but every remaining file is in use"
                );
                return;
            };
            let path = self.path_of(&victim);
            match fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "evicted weight file"),
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                // Forget it anyway so eviction cannot loop; a restart adopts it again.
                Err(err) => warn!(path = %path.display(), %err, "could not evict weight file"),
            }
            if let Some(entry) = state.entries.remove(&victim) {
                state.total -= entry.size;
            }
        }
    }
}

/// Where a validated spec's bytes come from.
enum Source {
    File(PathBuf),
    /// `http://` or, with `tls`, `https://`.
    Http {
        uri: Uri,
        tls: bool,
    },
}

impl Source {
    /// Validates the spec's digest and URL.
    fn parse(spec: &WeightSpec) -> Result<Self, CacheError> {
        check_digest(&spec.sha256)?;
        let url = &spec.url;
        let invalid = |reason: &str| CacheError::InvalidUrl {
            url: url.clone(),
            reason: reason.to_owned(),
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid("expected https://…, http://… or file:///…"));
        };
        let scheme = scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid(
                        "a file:// URL needs an absolute path: file:///path",
                    ));
                }
                Ok(Self::File(PathBuf::from(rest)))
            }
            "http" | "https" => {
                let uri: Uri = url
                    .parse()
                    .map_err(|err: hyper::http::uri::InvalidUri| invalid(&err.to_string()))?;
                if uri.host().is_none_or(str::is_empty) {
                    return Err(invalid(&format!("an {scheme}:// URL needs a host")));
                }
                let tls = scheme == "https";
                Ok(Self::Http { uri, tls })
            }
            _ => Err(CacheError::Unsupported { url: url.clone() }),
        }
    }
}

/// The `.partial` file being written, hashed as it goes.
struct Sink<'a> {
    file: tokio::fs::File,
    hasher: Sha256,
    written: u64,
    spec: &'a WeightSpec,
    partial: &'a Path,
}

impl Sink<'_> {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), CacheError> {
        let len = u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        self.written = self.written.saturating_add(len);
        if self.written > self.spec.size {
            // Stop reading a source longer than declared.
            return Err(CacheError::SizeMismatch {
                url: self.spec.url.clone(),
                expected: self.spec.size,
                actual: self.written,
            });
        }
        self.hasher.update(chunk);
        self.file
            .write_all(chunk)
            .await
            .map_err(io_err("write", self.partial))
    }
}

async fn read_file(path: &Path, sink: &mut Sink<'_>) -> Result<(), CacheError> {
    let source_err = |source| CacheError::Source {
        url: sink.spec.url.clone(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(source_err)?;
    let mut buf = vec![0; READ_CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|source| CacheError::Source {
                url: sink.spec.url.clone(),
                source,
            })?;
        if n == 0 {
            return Ok(());
        }
        sink.write(&buf[..n]).await?;
    }
}

/// GETs `uri` over a new connection, through TLS when `tls` is given, into
/// `sink`.
async fn read_http(
    uri: &Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    stall: Duration,
    sink: &mut Sink<'_>,
) -> Result<(), CacheError> {
    // `Source::parse` checked there is a host.
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let url = sink.spec.url.clone();
    let stream = within(stall, &url, 0, TcpStream::connect((host, port)))
        .await?
        .map_err(|source| CacheError::Source {
            url: url.clone(),
            source,
        })?;
    match tls {
        None => get(TokioIo::new(stream), uri, host, stall, sink).await,
        Some(config) => {
            let connect = tls::connect(config, &url, host, stream);
            let stream = within(stall, &url, 0, connect).await??;
            get(TokioIo::new(stream), uri, host, stall, sink).await
        }
    }
}

/// `step`, or [`CacheError::Stalled`] if it takes longer than `stall`.
async fn within<T>(
    stall: Duration,
    url: &str,
    received: u64,
    step: impl Future<Output = T>,
) -> Result<T, CacheError> {
    tokio::time::timeout(stall, step)
        .await
        .map_err(|_| CacheError::Stalled {
            url: url.to_owned(),
            waited: stall,
            received,
        })
}

/// One HTTP/1.1 GET of `uri` over `io`, whose 200 body goes to `sink`.
async fn get<T>(
    io: T,
    uri: &Uri,
    host: &str,
    stall: Duration,
    sink: &mut Sink<'_>,
) -> Result<(), CacheError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let url = sink.spec.url.clone();
    let http_err = |source| CacheError::Http {
        url: url.clone(),
        source,
    };
    let (mut sender, conn) = within(stall, &url, 0, hyper::client::conn::http1::handshake(io))
        .await?
        .map_err(http_err)?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            debug!(%err, "weight download connection ended with an error");
        }
    });
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .body(Empty::<Bytes>::new())
        .map_err(|err| CacheError::InvalidUrl {
            url: url.clone(),
            reason: err.to_string(),
        })?;
    let response = within(stall, &url, 0, sender.send_request(request))
        .await?
        .map_err(http_err)?;
    if response.status() != StatusCode::OK {
        return Err(CacheError::HttpStatus {
            url,
            status: response.status().as_u16(),
        });
    }
    let declared = response
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|&d| d != sink.spec.size) {
        return Err(CacheError::SizeMismatch {
            url,
            expected: sink.spec.size,
            actual: declared,
        });
    }
    let mut body = response.into_body();
    while let Some(frame) = within(stall, &url, sink.written, body.frame()).await? {
        if let Ok(data) = frame.map_err(http_err)?.into_data() {
            sink.write(&data).await?;
        }
    }
    Ok(())
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_digest(s: &str) -> Result<(), CacheError> {
    if is_digest(s) {
        Ok(())
    } else {
        Err(CacheError::InvalidDigest {
            digest: s.to_owned(),
        })
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CacheError {
    let path = path.to_owned();
    move |source| CacheError::Io { op, path, source }
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod tests;
