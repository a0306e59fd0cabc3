//! Tests of [`super`].
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;

fn digest_of(body: &[u8]) -> String {
    to_hex(&Sha256::digest(body))
}

/// Writes `body` to `src/name` and returns a matching `file://` spec.
fn file_spec(src: &Path, name: &str, body: &[u8]) -> WeightSpec {
    let path = src.join(name);
    fs::write(&path, body).unwrap();
    WeightSpec {
        url: format!("file://{}", path.display()),
        size: u64::try_from(body.len()).unwrap(),
        sha256: digest_of(body),
    }
}

/// Names in `DIR/sha256`, sorted.
fn listing(cache_dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(cache_dir.join(DIGEST_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A one-route HTTP/1.1 server answering every request with `status` and
/// `body`; returns its address and a request counter.
async fn serve(status: &'static str, body: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    serve_with(None, status, body).await
}

/// Like [`serve`], over TLS when `tls` is given. A connection whose TLS
/// handshake fails is dropped without counting a request.
async fn serve_with(
    tls: Option<TlsAcceptor>,
    status: &'static str,
    body: Vec<u8>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (tls, body, counter) = (tls.clone(), body.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                match tls {
                    None => respond(stream, status, &body, &counter).await,
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            respond(stream, status, &body, &counter).await;
                        }
                    }
                }
            });
        }
    });
    (addr, count)
}

/// Reads one request head from `stream`, then answers it and closes.
async fn respond<S>(mut stream: S, status: &str, body: &[u8], counter: &AtomicUsize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    counter.fetch_add(1, Ordering::SeqCst);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

/// A TLS acceptor with a fresh self-signed certificate for `localhost`, and
/// that certificate in PEM (to trust it as a root).
fn localhost_tls() -> (TlsAcceptor, Vec<u8>) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key)
        .unwrap();
    (TlsAcceptor::from(Arc::new(config)), cert.pem().into_bytes())
}

/// A cache in `dir` trusting `root_pem` besides Mozilla's roots.
fn cache_trusting(dir: &Path, root_pem: &[u8]) -> WeightCache {
    let options = CacheOptions {
        extra_roots_pem: root_pem.to_vec(),
        ..CacheOptions::default()
    };
    WeightCache::open_with(dir, 1 << 20, options).unwrap()
}

#[tokio::test]
async fn file_fetch_verifies_and_caches() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let body = b"weights of a small model".to_vec();
    let spec = file_spec(src.path(), "model.bin", &body);
    let cache = WeightCache::open(dir.path(), 1000).unwrap();

    let path = cache.fetch(&spec).await.unwrap();
    assert_eq!(path, dir.path().join(DIGEST_DIR).join(&spec.sha256));
    assert_eq!(fs::read(&path).unwrap(), body);
    assert!(cache.contains(&spec.sha256));
    assert_eq!(cache.total_bytes(), spec.size);

    // A second fetch must not read the source.
    fs::remove_file(src.path().join("model.bin")).unwrap();
    assert_eq!(cache.clone().fetch(&spec).await.unwrap(), path);
    assert_eq!(listing(dir.path()), vec![spec.sha256.clone()]);
}

#[tokio::test]
async fn wrong_digest_is_refused_and_leaves_nothing() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut spec = file_spec(src.path(), "model.bin", b"tampered");
    let actual = spec.sha256.clone();
    spec.sha256 = digest_of(b"original");
    let cache = WeightCache::open(dir.path(), 1000).unwrap();

    let err = cache.fetch(&spec).await.unwrap_err();
    match &err {
        CacheError::DigestMismatch {
            url,
            expected,
            actual: got,
        } => {
            assert_eq!(url, &spec.url);
            assert_eq!(expected, &spec.sha256);
            assert_eq!(got, &actual);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&spec.url) && message.contains("refused"),
        "{message}"
    );
    assert!(listing(dir.path()).is_empty());
    assert!(!cache.contains(&spec.sha256));
    assert_eq!(cache.total_bytes(), 0);
}

#[tokio::test]
async fn wrong_size_is_refused_both_ways() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cache = WeightCache::open(dir.path(), 1000).unwrap();
    for declared in [9, 11] {
        let mut spec = file_spec(src.path(), "model.bin", b"ten bytes!");
        spec.size = declared;
        let err = cache.fetch(&spec).await.unwrap_err();
        assert!(
            matches!(err, CacheError::SizeMismatch { expected, .. } if expected == declared),
            "{err:?}"
        );
        assert!(listing(dir.path()).is_empty());
    }
    assert_eq!(cache.total_bytes(), 0);
}

#[tokio::test]
async fn http_fetch_works_and_reports_status() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).flat_map(u32::to_le_bytes).collect();
    let (addr, count) = serve("200 OK", body.clone()).await;
    let cache = WeightCache::open(dir.path(), 1 << 20).unwrap();
    let spec = WeightSpec {
        url: format!("http://{addr}/models/m.bin?rev=1"),
        size: u64::try_from(body.len()).unwrap(),
        sha256: digest_of(&body),
    };
    let path = cache.fetch(&spec).await.unwrap();
    assert_eq!(fs::read(path).unwrap(), body);
    assert_eq!(count.load(Ordering::SeqCst), 1);

    let (addr, _) = serve("404 Not Found", b"no such model".to_vec()).await;
    let missing = WeightSpec {
        url: format!("http://{addr}/missing.bin"),
        ..file_spec(dir.path(), "other", b"other")
    };
    let err = cache.fetch(&missing).await.unwrap_err();
    assert!(
        matches!(err, CacheError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(&missing.url));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_fetches_of_one_digest_download_once() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![7u8; 256 * 1024];
    let (addr, count) = serve("200 OK", body.clone()).await;
    let cache = WeightCache::open(dir.path(), 1 << 20).unwrap();
    let spec = WeightSpec {
        url: format!("http://{addr}/m.bin"),
        size: u64::try_from(body.len()).unwrap(),
        sha256: digest_of(&body),
    };
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (cache, spec) = (cache.clone(), spec.clone());
            tokio::spawn(async move { cache.fetch(&spec).await })
        })
        .collect();
    for task in tasks {
        let path = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(fs::read(path).unwrap(), body);
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(listing(dir.path()), vec![spec.sha256.clone()]);
}

#[tokio::test]
async fn bad_specs_are_refused_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    let cache = WeightCache::open(dir.path(), 10).unwrap();
    let ok_digest = digest_of(b"x");
    let spec = |url: &str, size: u64, sha256: &str| WeightSpec {
        url: url.to_owned(),
        size,
        sha256: sha256.to_owned(),
    };
    let err = cache
        .fetch(&spec("ftp://example.com/m.bin", 1, &ok_digest))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::Unsupported { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("only https://, http:// and file:// are supported")
    );
    let err = cache
        .fetch(&spec("https:///m.bin", 1, &ok_digest))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::InvalidUrl { .. }), "{err:?}");
    let err = cache
        .fetch(&spec("file:///m.bin", 1, &ok_digest.to_uppercase()))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::InvalidDigest { .. }), "{err:?}");
    let err = cache
        .fetch(&spec("file://relative/m.bin", 1, &ok_digest))
        .await
        .unwrap_err();
    assert!(matches!(err, CacheError::InvalidUrl { .. }), "{err:?}");
    let err = cache
        .fetch(&spec("file:///m.bin", 11, &ok_digest))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CacheError::TooLarge {
                size: 11,
                limit: 10,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        cache.pin("not-a-digest"),
        Err(CacheError::InvalidDigest { .. })
    ));
}

#[tokio::test]
async fn evicts_least_recently_used_first() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [a, b, c] =
        [b'a', b'b', b'c'].map(|x| file_spec(src.path(), &char::from(x).to_string(), &[x; 10]));
    let cache = WeightCache::open(dir.path(), 25).unwrap();
    cache.fetch(&a).await.unwrap();
    cache.fetch(&b).await.unwrap();
    cache.fetch(&a).await.unwrap(); // a is now more recent than b
    cache.fetch(&c).await.unwrap();

    assert!(cache.contains(&a.sha256) && cache.contains(&c.sha256));
    assert!(!cache.contains(&b.sha256));
    assert!(!dir.path().join(DIGEST_DIR).join(&b.sha256).exists());
    assert_eq!(cache.total_bytes(), 20);
}

#[tokio::test]
async fn pinned_files_are_never_evicted() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let specs =
        [b'a', b'b', b'c'].map(|x| file_spec(src.path(), &char::from(x).to_string(), &[x; 10]));
    let [a, b, c] = &specs;
    let cache = WeightCache::open(dir.path(), 25).unwrap();
    cache.pin(&a.sha256).unwrap();
    for spec in &specs {
        cache.fetch(spec).await.unwrap();
    }
    // a is least recently used but pinned, so b goes.
    assert!(cache.contains(&a.sha256) && cache.contains(&c.sha256));
    assert!(!cache.contains(&b.sha256));

    // Pinned files alone over the limit: kept, and the fetch succeeds.
    cache.pin(&c.sha256).unwrap();
    cache.pin(&b.sha256).unwrap();
    let path = cache.fetch(b).await.unwrap();
    assert!(path.exists());
    assert_eq!(cache.total_bytes(), 30);

    // Once unpinned, the least recently used goes.
    cache.unpin(&a.sha256);
    assert!(!cache.contains(&a.sha256));
    assert_eq!(cache.total_bytes(), 20);
    // Counted pins: two pins need two unpins.
    cache.pin(&c.sha256).unwrap();
    cache.unpin(&c.sha256);
    assert!(cache.contains(&c.sha256));
}

#[tokio::test]
async fn reopen_adopts_files_and_removes_partials() {
    let (src, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let [a, b, c] =
        [b'a', b'b', b'c'].map(|x| file_spec(src.path(), &char::from(x).to_string(), &[x; 10]));
    {
        let cache = WeightCache::open(dir.path(), 100).unwrap();
        for spec in [&a, &b, &c] {
            cache.fetch(spec).await.unwrap();
        }
    }
    let digests = dir.path().join(DIGEST_DIR);
    fs::write(
        digests.join(format!("{}{PARTIAL_SUFFIX}", digest_of(b"d"))),
        b"half",
    )
    .unwrap();
    // Last use from mtime: b oldest, then c, then a.
    let base = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (spec, secs) in [(&b, 0), (&c, 60), (&a, 120)] {
        fs::File::options()
            .write(true)
            .open(digests.join(&spec.sha256))
            .unwrap()
            .set_modified(base + Duration::from_secs(secs))
            .unwrap();
    }

    let cache = WeightCache::open(dir.path(), 100).unwrap();
    assert_eq!(cache.total_bytes(), 30);
    assert!([&a, &b, &c].iter().all(|s| cache.contains(&s.sha256)));
    assert_eq!(listing(dir.path()).len(), 3, "the partial is removed");
    drop(cache);

    // A smaller limit on open evicts by mtime order: b first.
    let cache = WeightCache::open(dir.path(), 20).unwrap();
    assert!(!cache.contains(&b.sha256));
    assert!(cache.contains(&a.sha256) && cache.contains(&c.sha256));
    // Adopted files are served without the source.
    fs::remove_dir_all(src.path()).unwrap();
    assert!(cache.fetch(&a).await.is_ok());
}

#[tokio::test]
async fn https_fetch_verifies_against_an_extra_root() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, root_pem) = localhost_tls();
    let body: Vec<u8> = (0..50_000u32).flat_map(u32::to_le_bytes).collect();
    let (addr, count) = serve_with(Some(acceptor), "200 OK", body.clone()).await;
    let cache = cache_trusting(dir.path(), &root_pem);
    let spec = WeightSpec {
        url: format!("https://localhost:{}/w", addr.port()),
        size: u64::try_from(body.len()).unwrap(),
        sha256: digest_of(&body),
    };

    let path = cache.fetch(&spec).await.unwrap();
    assert_eq!(path, dir.path().join(DIGEST_DIR).join(&spec.sha256));
    assert_eq!(digest_of(&fs::read(&path).unwrap()), spec.sha256);
    assert!(cache.contains(&spec.sha256));
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(listing(dir.path()), vec![spec.sha256.clone()]);
}

#[tokio::test]
async fn https_untrusted_certificate_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, root_pem) = localhost_tls();
    let body = b"weights behind a self-signed certificate".to_vec();
    let (addr, count) = serve_with(Some(acceptor), "200 OK", body.clone()).await;
    let spec = WeightSpec {
        url: format!("https://localhost:{}/w", addr.port()),
        size: u64::try_from(body.len()).unwrap(),
        sha256: digest_of(&body),
    };

    // Only Mozilla's roots: the self-signed certificate is not trusted.
    let cache = WeightCache::open(dir.path(), 1 << 20).unwrap();
    let err = cache.fetch(&spec).await.unwrap_err();
    match &err {
        CacheError::UntrustedCertificate { url, source } => {
            assert_eq!(url, &spec.url);
            assert!(
                matches!(
                    source,
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
                ),
                "{source:?}"
            );
        }
        other => panic!("expected UntrustedCertificate, got {other:?}"),
    }
    let message = err.to_string();
    assert!(
        message.contains(&spec.url) && message.contains("certificate was not trusted"),
        "{message}"
    );
    assert!(listing(dir.path()).is_empty(), "no file and no partial");
    assert!(!cache.contains(&spec.sha256));
    drop(cache);

    // Trusted, but asked for by a name the certificate is not for.
    let cache = cache_trusting(dir.path(), &root_pem);
    let by_ip = WeightSpec {
        url: format!("https://{addr}/w"),
        ..spec.clone()
    };
    let err = cache.fetch(&by_ip).await.unwrap_err();
    assert!(
        matches!(
            &err,
            CacheError::UntrustedCertificate {
                source: rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. }
                ),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(listing(dir.path()).is_empty());
    assert_eq!(count.load(Ordering::SeqCst), 0, "no request was sent");
}

#[tokio::test]
async fn https_digest_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (acceptor, root_pem) = localhost_tls();
    let body = b"tampered weights".to_vec();
    let (addr, _) = serve_with(Some(acceptor), "200 OK", body.clone()).await;
    let cache = cache_trusting(dir.path(), &root_pem);
    let spec = WeightSpec {
        url: format!("https://localhost:{}/w", addr.port()),
        size: u64::try_from(body.len()).unwrap(),
        sha256: digest_of(b"original weights"),
    };

    let err = cache.fetch(&spec).await.unwrap_err();
    match &err {
        CacheError::DigestMismatch {
            url,
            expected,
            actual,
        } => {
            assert_eq!(url, &spec.url);
            assert_eq!(expected, &spec.sha256);
            assert_eq!(actual, &digest_of(&body));
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(listing(dir.path()).is_empty());
    assert_eq!(cache.total_bytes(), 0);
}

#[tokio::test]
async fn https_to_a_server_without_tls_is_a_handshake_error() {
    let dir = tempfile::tempdir().unwrap();
    // Answers in plain HTTP at once, whatever the client sends, and closes.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = stream.shutdown().await;
        }
    });
    let cache = WeightCache::open(dir.path(), 1 << 20).unwrap();
    let spec = WeightSpec {
        url: format!("https://localhost:{port}/w"),
        size: 1,
        sha256: digest_of(b"x"),
    };
    let err = tokio::time::timeout(Duration::from_secs(30), cache.fetch(&spec))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, CacheError::Tls { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains(&spec.url) && message.contains("TLS handshake failed"),
        "{message}"
    );
    assert!(listing(dir.path()).is_empty());
}

#[test]
fn unusable_extra_roots_are_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    for pem in [
        &b"not a certificate"[..],
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ] {
        let options = CacheOptions {
            extra_roots_pem: pem.to_vec(),
            ..CacheOptions::default()
        };
        let err = WeightCache::open_with(dir.path(), 10, options).unwrap_err();
        assert!(matches!(err, CacheError::TlsSetup { .. }), "{err:?}");
    }
}

#[tokio::test]
async fn a_stalled_download_is_abandoned_and_leaves_nothing() {
    // Sends the head and half the body, then nothing (the connection stays open).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut buf = [0; 1024];
        let _ = stream.read(&mut buf).await;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nhalf")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let dir = tempfile::tempdir().unwrap();
    let options = CacheOptions {
        stall_timeout: Duration::from_millis(300),
        ..CacheOptions::default()
    };
    let cache = WeightCache::open_with(dir.path(), 1 << 20, options).unwrap();
    let spec = WeightSpec {
        url: format!("http://{addr}/w"),
        size: 8,
        sha256: "0".repeat(64),
    };
    let err = cache.fetch(&spec).await.unwrap_err();
    assert!(
        matches!(err, CacheError::Stalled { received: 4, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("stalled"), "{err}");
    assert_eq!(cache.total_bytes(), 0);
    let left: Vec<_> = fs::read_dir(dir.path().join("sha256")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    server.abort();
}
