//! HTTPS: a certificate chain and its key, read once from PEM files, become a
//! rustls acceptor that offers HTTP/2 and HTTP/1.1 by ALPN. HTTP/2 is the
//! point: a browser opens at most six HTTP/1.1 connections to one origin, and
//! every lobby tab holds one of them open for its stream. Each connection's
//! handshake must finish within `--header-timeout`; hyper then serves it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

/// Why `--tls-cert` and `--tls-key` could not be used; each says which file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS {what} {}: {source}", .path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", .0.display())]
    NoCertificate(PathBuf),
    #[error(
        "{} holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC)",
        .0.display()
    )]
    NoKey(PathBuf),
    #[error("{} is not valid PEM: {source}", .path.display())]
    Pem { path: PathBuf, source: pem::Error },
    #[error("the key in {} is not the key of the certificate in {}", .key.display(), .cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate and key cannot serve HTTPS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads the chain in `cert` and the key in `key` (both PEM) into an
/// acceptor for HTTPS with HTTP/2 preferred and HTTP/1.1 for older clients.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs = CertificateDer::pem_slice_iter(&read("certificate", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = match PrivateKeyDer::from_pem_slice(&read("key", key)?) {
        Ok(key_der) => key_der,
        Err(pem::Error::NoItemsFound) => return Err(TlsError::NoKey(key.to_owned())),
        Err(source) => {
            return Err(TlsError::Pem {
                path: key.to_owned(),
                source,
            });
        }
    };
    // The provider is named rather than taken from the process default, which
    // is ambiguous whenever another crate in the build enables a second one.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert.to_owned(),
                key: key.to_owned(),
            },
            other => TlsError::Rustls(other),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One HTTPS connection: the handshake, then hyper with HTTP/2 or HTTP/1.1
/// as ALPN chose.
pub(super) async fn serve(socket: TcpStream, tls: TlsAcceptor, connection: super::Connection) {
    let timeout = connection.shared.settings.header_timeout;
    let stream = tokio::select! {
        handshake = tokio::time::timeout(timeout, tls.accept(socket)) => match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => {
                tracing::debug!("TLS handshake failed: {err}");
                return;
            }
            Err(_) => return,
        },
        () = connection.stop.cancelled() => return,
    };
    let protocol = if speaks_h2(&stream) {
        super::served::Protocol::Http2
    } else {
        super::served::Protocol::Http1
    };
    super::served::serve(stream, protocol, connection).await;
}

/// Whether ALPN chose HTTP/2 for `stream`.
pub(super) fn speaks_h2(stream: &TlsStream<TcpStream>) -> bool {
    stream.get_ref().1.alpn_protocol() == Some(b"h2")
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("lobby-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write a scratch file");
        path
    }

    #[test]
    fn a_missing_file_is_named_in_the_error() {
        let missing = Path::new("/nonexistent/lobby/cert.pem");
        let err = acceptor(missing, missing)
            .err()
            .expect("a missing file is refused")
            .to_string();
        assert!(
            err.starts_with("cannot read the TLS certificate /nonexistent/lobby/cert.pem: "),
            "{err}"
        );
    }

    #[test]
    fn a_file_with_no_certificate_in_it_says_so() {
        let empty = scratch("empty.pem", "not pem at all\n");
        let err = acceptor(&empty, &empty)
            .err()
            .expect("no certificate is refused")
            .to_string();
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let _ = std::fs::remove_file(empty);
    }
}
