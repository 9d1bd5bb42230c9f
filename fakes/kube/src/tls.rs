//! HTTPS like a kube-apiserver: a CA made at start, a serving certificate for
//! `127.0.0.1`, `localhost` and the in-cluster names, client certificates issued by
//! the same CA, and an accept loop that hands TLS connections to axum.
//!
//! rustls runs on the ring provider only (DEPENDENCIES.md: no aws-lc-rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::DistinguishedName;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::SignatureScheme;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// TLS settings of a fake; the certificates themselves are made at start.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// Subject alternative names of the serving certificate (IPs become IP SANs).
    pub server_names: Vec<String>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        // The names a kube-apiserver certificate carries for in-cluster clients, plus loopback.
        let names = ["127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"];
        TlsConfig { server_names: names.iter().map(|n| (*n).to_owned()).collect() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS is not enabled on this fake")]
    NotEnabled,
    #[error("certificate generation: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// A client certificate and its key, PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The fake's CA and serving state.
pub(crate) struct TlsState {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    pub acceptor: TlsAcceptor,
    /// Verifies client certificates against the CA; the TLS layer itself accepts any,
    /// so that a bad one gets the apiserver's HTTP 401 rather than a failed handshake.
    pub client_verifier: Arc<dyn ClientCertVerifier>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsState {
    pub fn new(config: &TlsConfig) -> Result<Self, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.distinguished_name.push(DnType::CommonName, "keelson-fake-kube-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut server_params = CertificateParams::new(config.server_names.clone())?;
        server_params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &issuer)?;

        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(Arc::new(RequestClientCert(client_verifier.clone())))
            .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)?;
        // axum serves HTTP/1.1 only here; clients (kubectl, kube-rs, Python) all speak it.
        server.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsState { ca_pem: ca_cert.pem(), issuer, acceptor: TlsAcceptor::from(Arc::new(server)), client_verifier })
    }

    /// A client certificate for user `common_name` (groups from `organizations`, as the
    /// apiserver's x509 authenticator reads CN and O).
    pub fn issue_client_cert(&self, common_name: &str, organizations: &[&str]) -> Result<ClientCert, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        for o in organizations {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ClientCert { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// Whether `cert` chains to the fake's CA (and is valid now, for client auth).
    pub fn verify_client(&self, cert: &CertificateDer<'static>) -> bool {
        self.client_verifier.verify_client_cert(cert, &[], UnixTime::now()).is_ok()
    }
}

/// Go's `tls.RequestClientCert`, which the apiserver uses: ask for a certificate, take
/// whatever comes (its possession is still proven by the handshake signature), and leave
/// the verdict to the authenticator.
#[derive(Debug)]
struct RequestClientCert(Arc<dyn ClientCertVerifier>);

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Who is on the other end of a connection: the handlers' `ConnectInfo`.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The client's leaf certificate, unverified (TLS only).
    pub client_cert: Option<CertificateDer<'static>>,
}

impl Connected<IncomingStream<'_, TcpListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        Peer { addr: *stream.remote_addr(), client_cert: None }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TLS listener for `axum::serve`. Handshakes run in their own tasks, so one slow
/// client does not hold up the others; dropping the listener (when the serving task is
/// aborted) stops the accept loop and closes the socket.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    _accept: AbortOnDrop,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, addr)) = listener.accept().await else {
                    // Out of file descriptors and the like: back off as axum's own loop does.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    if let Ok(Ok(tls)) = handshake {
                        let cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).cloned();
                        let _ = tx.send((tls, Peer { addr, client_cert: cert.map(|c| c.into_owned()) })).await;
                    }
                });
            }
        });
        Ok(TlsListener { ready, local, _accept: AbortOnDrop(task) })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer { addr: self.local, client_cert: None })
    }
}
