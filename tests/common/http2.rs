//! One HTTP/2 connection over TLS, made with hyper's client connection rather
//! than a pooled client, so that a test can see how the server ends it: a
//! pooled client hides a closed connection by opening another.

use std::sync::Arc;

use hyper::StatusCode;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::{PATIENCE, TestCert};

/// An HTTP/2 connection to a lobby serving HTTPS.
pub struct Http2Connection {
    base: String,
    send: SendRequest<String>,
    /// hyper's connection task: `Ok` once the server has closed the connection
    /// cleanly (GOAWAY, then TLS close_notify), the error if it was cut.
    ended: JoinHandle<hyper::Result<()>>,
}

impl Http2Connection {
    /// Connects to `base` (`https://127.0.0.1:PORT`), trusting `cert` alone,
    /// and offers HTTP/2 and nothing else.
    pub async fn open(cert: &TestCert, base: &str) -> Http2Connection {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(cert.pem.as_bytes()).expect("a PEM certificate"))
            .expect("a trusted root");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let addr = base.trim_start_matches("https://");
        let host = addr.rsplit_once(':').expect("HOST:PORT").0.to_owned();
        let socket = TcpStream::connect(addr).await.expect("connect");
        let stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(host).expect("a host name"), socket)
            .await
            .expect("a TLS handshake");
        let (send, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("an HTTP/2 handshake");
        Http2Connection {
            base: base.to_owned(),
            send,
            ended: tokio::spawn(connection),
        }
    }

    /// GET `path` on this connection; the response's status (its body is dropped).
    pub async fn get(&mut self, path: &str) -> StatusCode {
        let request = hyper::Request::get(format!("{}{path}", self.base))
            .body(String::new())
            .expect("a request");
        let response = tokio::time::timeout(PATIENCE, self.send.send_request(request))
            .await
            .expect("an answer within the patience")
            .expect("an answer");
        response.status()
    }

    /// Waits for the server to close the connection and says how it did;
    /// panics if it is still open after `PATIENCE`.
    pub async fn closed(self) -> hyper::Result<()> {
        // Kept until the end: with no sender left, hyper would close the
        // connection itself, and the server's close would go unseen.
        let Http2Connection { send, ended, .. } = self;
        let ended = tokio::time::timeout(PATIENCE, ended)
            .await
            .expect("the server closes the connection within the patience")
            .expect("hyper's connection task does not panic");
        drop(send);
        ended
    }
}
