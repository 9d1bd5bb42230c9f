//! HTTPS for the raw-socket helpers: a rustls client (ring provider) trusting the
//! fake's CA, optionally presenting a client certificate.

use std::net::SocketAddr;
use std::sync::Arc;

use keelson_fake_kube::ClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::Value;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{ChunkedLines, Head, read_body, send_on};

pub fn connector(ca_pem: &str, client: Option<&ClientCert>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(c) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    TlsConnector::from(Arc::new(config))
}

/// A TLS connection verifying the server certificate for `server_name`.
pub async fn connect(connector: &TlsConnector, addr: SocketAddr, server_name: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

/// One HTTPS request to 127.0.0.1 with extra headers: status, headers, JSON body.
pub async fn request(
    connector: &TlsConnector,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Head, Value) {
    let tls = connect(connector, addr, "127.0.0.1").await;
    let (head, reader) = send_on(tls, &addr.to_string(), method, path, headers, body).await;
    read_body(head, reader).await
}

/// A watch over HTTPS; asserts the 200 + chunked answer.
pub async fn watch(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> ChunkedLines<TlsStream<TcpStream>> {
    let tls = connect(connector, addr, "127.0.0.1").await;
    let (head, reader): (Head, BufReader<_>) = send_on(tls, &addr.to_string(), "GET", path, headers, "").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    ChunkedLines::new(reader)
}
