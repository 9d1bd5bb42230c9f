//! Changes go in through the hub's push API (`PUT /v1/resources/...`), whose
//! answer carries the seq the change was durably appended at: that seq is
//! the version every proxy must reach. In peer mode a change is triggered by
//! a POST to a URL of the other server's harness instead.
//!
//! A minimal HTTP/1.1 client (one request per connection): the loadtest
//! talks to loopback admin ports, and a full client would be weight.

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}: only http:// URLs are supported")]
    Scheme(String),
    #[error("{url}: {source}")]
    Io { url: String, source: std::io::Error },
    #[error("{url}: timed out")]
    Timeout { url: String },
    #[error("{url}: malformed HTTP response")]
    Malformed { url: String },
    #[error("{url}: HTTP {status}: {body}")]
    Status { url: String, status: u16, body: String },
}

/// Sends one request; returns the JSON body of a 2xx answer (`null` if empty).
pub async fn request(method: &str, url: &str, token: Option<&str>, body: &str) -> Result<Value, ApiError> {
    let text = request_text(method, url, token, body).await?;
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sends one request; returns the body of a 2xx answer.
pub async fn request_text(method: &str, url: &str, token: Option<&str>, body: &str) -> Result<String, ApiError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| ApiError::Scheme(url.into()))?;
    let (authority, path) = rest.split_once('/').map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let io = |source| ApiError::Io { url: url.into(), source };
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(authority).await.map_err(io)?;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(io)?;
        s.write_all(body.as_bytes()).await.map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(io)?;
        Ok::<_, ApiError>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| ApiError::Timeout { url: url.into() })??;
    let malformed = || ApiError::Malformed { url: url.into() };
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(malformed)?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(malformed)?;
    let body = String::from_utf8_lossy(&raw[split + 4..]).to_string();
    if !(200..300).contains(&status) {
        return Err(ApiError::Status { url: url.into(), status, body });
    }
    Ok(body)
}

/// PUTs an object through the push API; returns the seq it was appended at
/// (`None` when it changed nothing).
pub async fn put(admin: &str, token: &str, object: &Value) -> Result<Option<u64>, ApiError> {
    let url = format!("{}/v1/resources/{}", admin.trim_end_matches('/'), object_path(object));
    let v = request("PUT", &url, Some(token), &object.to_string()).await?;
    Ok(v["seq"].as_u64())
}

/// DELETEs an object through the push API; returns the seq (`None` if absent).
pub async fn delete(admin: &str, token: &str, object: &Value) -> Result<Option<u64>, ApiError> {
    let url = format!("{}/v1/resources/{}", admin.trim_end_matches('/'), object_path(object));
    match request("DELETE", &url, Some(token), "").await {
        Ok(v) => Ok(v["seq"].as_u64()),
        Err(ApiError::Status { status: 404, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `group/kind/namespace/name` of a Kubernetes-style object (`-` = no namespace).
fn object_path(o: &Value) -> String {
    let api = o["apiVersion"].as_str().unwrap_or_default();
    let group = api.rsplit_once('/').map_or("core", |(g, _)| g);
    let ns = o["metadata"]["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or("-");
    format!(
        "{group}/{}/{ns}/{}",
        o["kind"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default()
    )
}
