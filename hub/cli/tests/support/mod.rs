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
    pub log: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `keelson serve` with `args` and waits for its "serving" line.
    pub fn start(data_dir: &Path, args: &[&str]) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keelson"))
            .args(["serve", "--data-dir", data_dir.to_str().unwrap(), "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env("KEELSON_LOG", "info")
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
                    let _ = tx.send(rest.split_whitespace().next().map(str::to_string));
                }
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let admin = match rx.recv_timeout(DEADLINE) {
            Ok(Some(addr)) => format!("http://{addr}"),
            _ => {
                let _ = child.kill(); // never leave a hub behind
                let _ = child.wait();
                panic!("keelson serve did not start; log:\n{}", log.lock().unwrap())
            }
        };
        Serve { child, admin, log }
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
