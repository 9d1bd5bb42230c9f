//! A minimal HTTP/1.1 client for a running hub's admin API (`--admin URL`).
//! The admin API is plain HTTP on loopback; a full client library would be
//! weight without benefit for a few requests of JSON.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// GETs `path` (with query) from `base` (`http://host:port`) and parses the JSON body.
pub fn get_json(base: &str, path_and_query: &str) -> Result<serde_json::Value> {
    request_json("GET", base, path_and_query, None)
}

/// Sends a body-less request, with a bearer token when given, and parses the JSON answer.
pub fn request_json(method: &str, base: &str, path_and_query: &str, token: Option<&str>) -> Result<serde_json::Value> {
    let authority =
        base.strip_prefix("http://").with_context(|| format!("{base}: only http:// admin URLs are supported"))?;
    let authority = authority.trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).with_context(|| format!("cannot reach the admin API at {base}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path_and_query} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n{auth}Content-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status")?;
    let value: serde_json::Value = serde_json::from_slice(&body).with_context(|| {
        let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        format!("{base}{path_and_query}: HTTP {status}, not JSON: {}", keelson_hub::names::escaped(&text))
    })?;
    if status != 200 {
        bail!("{base}{path_and_query}: HTTP {status}: {}", value["error"].as_str().unwrap_or(&value.to_string()));
    }
    Ok(value)
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").context("bad chunk")?;
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end])?.trim(), 16)?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).context("short chunk")?);
        body = body.get(size + 2..).context("short chunk")?;
    }
}

/// Percent-encodes a query value.
pub fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
