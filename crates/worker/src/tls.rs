//! TLS for the weight cache's `https://` downloads: rustls with the *ring*
//! crypto provider (aws-lc would need cmake to build), TLS 1.2 and 1.3,
//! HTTP/1.1 by ALPN. Certificates are verified as usual against Mozilla's
//! roots (built in from `webpki-roots`, so a machine without system
//! certificates works) plus any extra roots the cache was opened with; there
//! is no way to skip verification.
//!
//! A submodule of [`super`] (the cache), sharing its [`CacheError`].

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::CacheError;

/// Builds the client configuration: Mozilla's roots plus every `CERTIFICATE`
/// block of `extra_roots_pem` (none if it is empty).
pub(super) fn client_config(extra_roots_pem: &[u8]) -> Result<Arc<ClientConfig>, CacheError> {
    let setup = |reason: String| CacheError::TlsSetup { reason };
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if !extra_roots_pem.is_empty() {
        let mut added = 0usize;
        for cert in CertificateDer::pem_slice_iter(extra_roots_pem) {
            let cert = cert.map_err(|err| setup(format!("cannot read the extra roots: {err}")))?;
            roots.add(cert).map_err(|err| {
                setup(format!(
                    "extra root certificate {} is not usable: {err}",
                    added + 1
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(setup(
                "the extra roots hold no PEM CERTIFICATE block".to_owned(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| setup(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Runs the TLS handshake over `tcp` with `host` as the server name (SNI and
/// the name the certificate must be valid for).
pub(super) async fn connect(
    config: &Arc<ClientConfig>,
    url: &str,
    host: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, CacheError> {
    let name = ServerName::try_from(host.to_owned()).map_err(|err| CacheError::InvalidUrl {
        url: url.to_owned(),
        reason: format!("{host:?} is not a valid TLS server name: {err}"),
    })?;
    TlsConnector::from(Arc::clone(config))
        .connect(name, tcp)
        .await
        .map_err(|err| handshake_error(url, err))
}

/// Tells an untrusted certificate apart from other handshake failures.
fn handshake_error(url: &str, err: io::Error) -> CacheError {
    let tls = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls {
        Some(source @ rustls::Error::InvalidCertificate(_)) => CacheError::UntrustedCertificate {
            url: url.to_owned(),
            source: source.clone(),
        },
        _ => CacheError::Tls {
            url: url.to_owned(),
            source: err,
        },
    }
}
