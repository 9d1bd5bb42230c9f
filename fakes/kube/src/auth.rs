//! Authentication as the apiserver's union authenticator does it: a request is let in
//! when any configured method accepts it (x509 client certificate signed by the CA, or
//! a static bearer token), else it gets the bare 401 "Unauthorized" Status.

use axum::http::{HeaderMap, header};

use crate::status::ApiError;
use crate::tls::{Peer, TlsState};

/// Which credentials the fake accepts. `Auth::default()` accepts everyone (anonymous).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auth {
    /// `Authorization: Bearer <token>` (the apiserver's `--token-auth-file`).
    pub token: Option<String>,
    /// Client certificates signed by the fake's CA (`--client-ca-file`); needs TLS.
    pub client_certs: bool,
}

impl Auth {
    pub fn none() -> Self {
        Auth::default()
    }

    pub fn token(token: impl Into<String>) -> Self {
        Auth { token: Some(token.into()), client_certs: false }
    }

    pub fn client_certs() -> Self {
        Auth { token: None, client_certs: true }
    }

    /// Also accept client certificates.
    pub fn with_client_certs(mut self) -> Self {
        self.client_certs = true;
        self
    }

    pub fn is_open(&self) -> bool {
        self.token.is_none() && !self.client_certs
    }
}

/// Paths the apiserver's `system:public-info-viewer` role opens to everyone.
pub(crate) fn is_public(path: &str) -> bool {
    matches!(path.trim_end_matches('/'), "/healthz" | "/readyz" | "/livez" | "/version")
}

pub(crate) fn authenticate(
    auth: &Auth,
    tls: Option<&TlsState>,
    headers: &HeaderMap,
    peer: Option<&Peer>,
) -> Result<(), ApiError> {
    if auth.is_open() {
        return Ok(());
    }
    if auth.client_certs
        && let (Some(tls), Some(cert)) = (tls, peer.and_then(|p| p.client_cert.as_ref()))
        && tls.verify_client(cert)
    {
        return Ok(());
    }
    if let Some(want) = &auth.token {
        let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        // The scheme is case-insensitive (`bearertoken.go` uses strings.EqualFold).
        let token = given.and_then(|g| g.split_once(' ')).filter(|(s, _)| s.eq_ignore_ascii_case("bearer"));
        if token.is_some_and(|(_, t)| t.trim() == want) {
            return Ok(());
        }
    }
    Err(ApiError::unauthorized())
}
