//! Test helpers: a minimal HTTP/1.1 client over a raw socket (so the tests see the
//! exact status line, headers and chunking) and a chunked-body line reader for watches.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub mod https;

async fn send(addr: SocketAddr, method: &str, path: &str, body: &str) -> (Head, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).await.unwrap();
    send_on(stream, &addr.to_string(), method, path, &[], body).await
}

/// One request on an open stream (plain or TLS), with extra headers.
pub async fn send_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (Head, BufReader<S>) {
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).await.unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    (Head { status, headers }, reader)
}

/// A whole response: status, headers and the body parsed as JSON.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (Head, Value) {
    let (head, reader) = send(addr, method, path, body).await;
    read_body(head, reader).await
}

/// Reads the rest of a response (chunked or not) and parses it as JSON.
pub async fn read_body<S: AsyncRead + Unpin>(head: Head, mut reader: BufReader<S>) -> (Head, Value) {
    let mut raw = Vec::new();
    if head.header("transfer-encoding") == Some("chunked") {
        let mut body = ChunkedLines { reader, buf: Vec::new(), done: false };
        while let Some(line) = body.next_line().await {
            raw.extend_from_slice(line.as_bytes());
        }
    } else {
        reader.read_to_end(&mut raw).await.unwrap();
    }
    (head, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let (head, body) = request(addr, "GET", path, "").await;
    (head.status, body)
}

/// Decodes a chunked body and yields it line by line (a watch event per line).
pub struct ChunkedLines<S = TcpStream> {
    reader: BufReader<S>,
    buf: Vec<u8>,
    done: bool,
}

impl<S: AsyncRead + Unpin> ChunkedLines<S> {
    pub fn new(reader: BufReader<S>) -> Self {
        ChunkedLines { reader, buf: Vec::new(), done: false }
    }

    /// The next newline-terminated line, or `None` at the end of the stream.
    pub async fn next_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                return Some(String::from_utf8(line).unwrap().trim_end().to_owned());
            }
            if self.done {
                return None;
            }
            let mut size_line = String::new();
            if self.reader.read_line(&mut size_line).await.unwrap_or(0) == 0 {
                self.done = true;
                continue;
            }
            let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
            if size == 0 {
                self.done = true;
                continue;
            }
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk).await.unwrap();
            chunk.truncate(size);
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event, failing the test if none comes within the deadline.
    pub async fn event(&mut self) -> Option<Value> {
        let line = timeout(DEADLINE, self.next_line()).await.expect("no watch event before the deadline")?;
        Some(serde_json::from_str(&line).unwrap())
    }
}

/// Opens a watch; asserts the real server's 200 + chunked answer.
pub async fn watch(addr: SocketAddr, path: &str) -> ChunkedLines {
    let (head, reader) = send(addr, "GET", path, "").await;
    assert_eq!(head.status, 200, "a watch is always answered 200");
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    ChunkedLines { reader, buf: Vec::new(), done: false }
}
