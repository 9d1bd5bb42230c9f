//! A `keelson serve` process for tests: started on loopback with an
//! OS-chosen admin port, stopped by its PID, polled with deadlines.

#![allow(dead_code)] // each test binary uses a different part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct Serve {
    pub child: Child,
    pub admin: String,
    /// The xDS gRPC address (`127.0.0.1:PORT`).
    pub grpc: String,
    pub log: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `keelson serve` with `args` and waits for its "serving" line.
    pub fn start(data_dir: &Path, args: &[&str]) -> Serve {
        Self::start_env(data_dir, args, &[])
    }

    /// [`Serve::start`] with extra environment variables.
    pub fn start_env(data_dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(["serve", "--data-dir", data_dir.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"])
            .args(["--grpc-listen", "127.0.0.1:0"])
            .args(args)
            .env("KEELSON_LOG", "info")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // Only the startup line names the admin address; other lines
                // (a source "serving the last good config") may say "serving" too.
                if let Some(rest) = line.split(" admin=").nth(1) {
                    let admin = rest.split_whitespace().next().map(str::to_string);
                    let grpc =
                        line.split(" grpc=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string);
                    let _ = tx.send(admin.zip(grpc));
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let (admin, grpc) = match rx.recv_timeout(DEADLINE) {
            Ok(Some((admin, grpc))) => (format!("http://{admin}"), grpc),
            _ => {
                let _ = child.kill(); // never leave a hub behind
                let _ = child.wait();
                panic!("keelson serve did not start; log:\n{}", log.lock().unwrap())
            }
        };
        Serve { child, admin, grpc, log }
    }

    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http_get(&self.admin, path)
    }

    pub fn put(&self, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
        http_request(&self.admin, "PUT", path, Some(token), body)
    }

    /// Polls `path` until `ok` holds for its JSON, or panics at the deadline.
    pub fn wait_for(&self, path: &str, what: &str, ok: impl Fn(u16, &serde_json::Value) -> bool) -> serde_json::Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let (status, v) = self.get(path);
            if ok(status, &v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "timed out waiting for {what}: last {status} {v}\nlog:\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn version(&self) -> u64 {
        self.get("/debug/snapshot").1["version"].as_u64().unwrap_or(0)
    }

    pub fn sigterm(mut self) -> String {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
        let status = self.child.wait().unwrap();
        let log = self.log.lock().unwrap().clone();
        assert!(status.success(), "exit {status}; log:\n{log}");
        log
    }

    /// Sends SIGTERM and polls for the exit until `deadline`: the status, or
    /// `None` if it is still running (dropping it then kills it).
    pub fn sigterm_within(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok);
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(base: &str, path: &str) -> (u16, serde_json::Value) {
    http_request(base, "GET", path, None, "")
}

pub fn http_text(base: &str, path: &str) -> String {
    raw_request(base, "GET", path, None, "").1
}

/// One HTTP/1.1 request over a fresh connection; JSON (or `null`) back.
pub fn http_request(base: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let (status, body) = raw_request(base, method, path, token, body);
    (status, serde_json::from_str(&body).unwrap_or(serde_json::Value::Null))
}

fn raw_request(base: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let authority = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

pub fn keelson(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_keelson")).args(args).output().unwrap()
}

/// A copy of examples/quickstart in a temp dir.
pub fn quickstart(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/quickstart");
    let dst = dir.join("config");
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

/// Ops of the log, in seq order, through the CLI.
pub fn log_ops(data_dir: &Path) -> Vec<serde_json::Value> {
    let out = keelson(&["log", "--data-dir", data_dir.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

// ---- Real peers (Envoy, gRPC clients): processes, polling, plain HTTP ----

/// Polls `f` every 50 ms until it returns `Some`, or panics at `deadline`
/// saying what was awaited and what `f` last reported through `last`.
pub fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut(&mut String) -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?} waiting for {what}; last: {last}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: for configs that must
/// name a port before the peer that binds it starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The workspace root (where `target/test-deps` and `scripts/` live).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A test dependency installed by scripts/install-test-deps; panics (the
/// test fails, it is not skipped) when it is missing.
pub fn test_dep(rel: &str) -> PathBuf {
    let p = workspace_root().join(rel);
    assert!(p.exists(), "{} is missing: run scripts/install-test-deps", p.display());
    p
}

/// A client or proxy process run under `timeout SECS`, its stdout and stderr
/// collected. Dropping it stops it by PID: SIGTERM to `timeout` (which passes
/// it on to its child), then SIGKILL to the process group `timeout` leads.
pub struct Proc {
    pub name: String,
    pid: u32,
    /// The child and, once it has exited, its status (behind a lock so that
    /// polling needs only `&self`, e.g. inside a diagnostics closure).
    state: Mutex<(Child, Option<std::process::ExitStatus>)>,
    stdin: Mutex<Option<std::process::ChildStdin>>,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Proc {
    /// Starts `program args` under `timeout --kill-after=5 SECS`; stdin is a
    /// pipe (see `close_stdin`).
    pub fn start(name: &str, secs: u64, program: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proc {
        let mut child = Command::new("timeout")
            .args(["--kill-after=5", &secs.to_string()])
            .arg(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", program.display()));
        let collect = |r: Box<dyn Read + Send>, sink: Arc<Mutex<String>>| {
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push_str(&(line + "\n"));
                }
            })
        };
        let (out, err) = (Arc::new(Mutex::new(String::new())), Arc::new(Mutex::new(String::new())));
        let readers = vec![
            collect(Box::new(child.stdout.take().unwrap()), out.clone()),
            collect(Box::new(child.stderr.take().unwrap()), err.clone()),
        ];
        let stdin = child.stdin.take();
        let pid = child.id();
        Proc {
            name: name.to_string(),
            pid,
            state: Mutex::new((child, None)),
            stdin: Mutex::new(stdin),
            out,
            err,
            readers: Mutex::new(readers),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Both streams, for failure messages.
    pub fn output(&self) -> String {
        format!("--- {} stdout:\n{}--- {} stderr:\n{}", self.name, self.stdout(), self.name, self.stderr())
    }

    pub fn close_stdin(&self) {
        self.stdin.lock().unwrap().take();
    }

    /// The exit status if it has exited.
    pub fn try_status(&self) -> Option<std::process::ExitStatus> {
        let mut state = self.state.lock().unwrap();
        if state.1.is_none() {
            state.1 = state.0.try_wait().unwrap();
            if state.1.is_some() {
                // Exited: the pipes close and the readers finish with all the
                // output (bounded, in case a descendant still holds a pipe).
                let mut readers = self.readers.lock().unwrap();
                let end = Instant::now() + Duration::from_secs(5);
                while Instant::now() < end && !readers.iter().all(|r| r.is_finished()) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                readers.clear();
            }
        }
        state.1
    }

    /// Waits for it to exit (its `timeout` bounds this too); panics at `deadline`.
    pub fn wait_exit(&self, deadline: Duration) -> std::process::ExitStatus {
        let name = self.name.clone();
        wait_until(&format!("{name} to exit"), deadline, |_| self.try_status())
    }

    /// Polls its stdout for a line holding `needle`; the line, or a panic at
    /// `deadline` or when it exits first.
    pub fn wait_stdout_line(&self, needle: &str, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        loop {
            if let Some(l) = self.stdout().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            if let Some(st) = self.try_status() {
                panic!("{} exited ({st}) before printing {needle:?}\n{}", self.name, self.output());
            }
            assert!(
                Instant::now() < end,
                "{} did not print {needle:?} within {deadline:?}\n{}",
                self.name,
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, args: &[&str]) {
        let _ = Command::new("kill").args(args).stderr(Stdio::null()).status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let pid = self.pid().to_string();
        self.signal(&["-TERM", &pid]);
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if self.try_status().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // `timeout` made itself the leader of a process group with its child.
        self.signal(&["-KILL", "--", &format!("-{pid}")]);
        let _ = self.state.lock().unwrap().0.wait();
    }
}

/// One HTTP/1.1 request (`Connection: close`) to `addr` (`HOST:PORT`, or a
/// base URL); status and body, with chunked bodies decoded. Errors instead of
/// panicking, for polling a peer that is not up yet.
pub fn try_http(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Error, ErrorKind};
    let authority = addr.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(authority)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let bad = |m: &str| Error::new(ErrorKind::InvalidData, format!("{m}: {:?}", String::from_utf8_lossy(&raw)));
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut body = raw[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad("no status"))?;
    if head.lines().any(|l| l.to_ascii_lowercase().replace(' ', "") == "transfer-encoding:chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| bad("bad chunk"))?;
            let size_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size + 2 {
                return Err(bad("short chunk"));
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = out;
    }
    Ok((status, String::from_utf8_lossy(&body).to_string()))
}

/// A tiny HTTP/1.1 backend on 127.0.0.1 (OS-chosen port) answering every
/// request 200 with `body`, keep-alive, one thread per connection. Stops
/// accepting when dropped.
pub struct Backend {
    pub port: u16,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Backend {
    pub fn start(body: &str) -> Backend {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, body) = (stop.clone(), body.to_string());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (flag, body) = (flag.clone(), body.clone());
                        std::thread::spawn(move || serve_http(conn, &body, &flag));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Backend { port, stop }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_http(mut conn: TcpStream, body: &str, stop: &std::sync::atomic::AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Answer every complete request head in the buffer (GETs: no body).
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() < end + 4 + len {
                break;
            }
            buf.drain(..end + 4 + len);
            let close = head.lines().any(|l| l.replace(' ', "") == "connection:close");
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
                body.len(),
                if close { "Connection: close\r\n" } else { "" }
            );
            if conn.write_all(reply.as_bytes()).is_err() || close {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return,
        }
    }
}

pub mod envoy;
pub mod real;
pub mod translate;
