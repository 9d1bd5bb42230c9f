//! Shared by the translation tests (translate_envoy.rs, translate_proxyless.rs):
//! Kubernetes and Istio objects as a cluster would hold them, written one per
//! file into a `file:` source directory (so an edit touches exactly one
//! object), a keep-alive HTTP/1.1 client that sends a Host header, and a
//! backend that fails every other request.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::real::{PROC_SECS, WAIT, clients_dir, grpc_python};
use super::{Proc, Serve, keelson};

pub const NS: &str = "default";

/// The host translation derives for a Service `svc` in [`NS`] (istiod's
/// `<name>.<ns>.svc.<domain>`, `ConvertService`).
pub fn fqdn(svc: &str) -> String {
    format!("{svc}.{NS}.svc.cluster.local")
}

/// istiod's `BuildSubsetKey`: `outbound|<port>|<subset>|<host>`.
pub fn cluster_name(port: u16, subset: &str, svc: &str) -> String {
    format!("outbound|{port}|{subset}|{}", fqdn(svc))
}

/// One workload of a service: a Pod labelled `app: <svc>, version: <version>`
/// and an EndpointSlice of its own (a slice's port number applies to all its
/// endpoints, and every backend here has its own port on 127.0.0.1).
pub struct Workload<'a> {
    pub pod: &'a str,
    pub version: &'a str,
    pub port: u16,
    pub zone: &'a str,
}

/// A config directory `dir` (created) of one service: `service.yaml` and,
/// per workload, `pod-<pod>.yaml` and `slice-<pod>.yaml`.
pub fn write_service(dir: &Path, svc: &str, port_name: &str, port: u16, workloads: &[Workload]) {
    std::fs::create_dir_all(dir).unwrap();
    write(dir, "service.yaml", &service(svc, port_name, port));
    write_workloads(dir, svc, port_name, workloads);
}

/// Pods and EndpointSlices only (a second source holding more endpoints of a
/// Service another source defines).
pub fn write_workloads(dir: &Path, svc: &str, port_name: &str, workloads: &[Workload]) {
    std::fs::create_dir_all(dir).unwrap();
    for w in workloads {
        write(dir, &format!("pod-{}.yaml", w.pod), &pod(svc, w));
        write(dir, &format!("slice-{}.yaml", w.pod), &slice(svc, port_name, w));
    }
}

pub fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap();
}

/// `edit` (support/real.rs) done atomically: the new text goes to a hidden
/// file (the file source skips those) renamed over the old one, so a rescan
/// never reads a half-written file.
pub fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}:\n{text}", path.display());
    let tmp = path.with_file_name(format!(".{}.tmp", path.file_name().unwrap().to_string_lossy()));
    std::fs::write(&tmp, text.replace(from, to)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A Service as kube-apiserver stores it (ClusterIP type; the clusterIP is
/// left out: translation binds the service port on 127.0.0.1 instead).
pub fn service(svc: &str, port_name: &str, port: u16) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {svc}, namespace: {NS}, labels: {{app: {svc}}}}}
spec:
  type: ClusterIP
  selector: {{app: {svc}}}
  ports:
  - {{name: {port_name}, port: {port}, targetPort: {port_name}, protocol: TCP}}
"#
    )
}

/// A running, ready Pod of `svc` (its labels select it into subsets).
pub fn pod(svc: &str, w: &Workload) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {pod}
  namespace: {NS}
  labels: {{app: {svc}, version: {version}}}
spec:
  containers: [{{name: app, image: "example.com/{svc}:{version}"}}]
status:
  phase: Running
  podIP: 127.0.0.1
  podIPs: [{{ip: 127.0.0.1}}]
  conditions: [{{type: Ready, status: "True"}}]
"#,
        pod = w.pod,
        version = w.version
    )
}

/// The EndpointSlice the endpointslice controller would write for one ready
/// endpoint of `w`. Readiness is the line `ready: true` (tests edit it).
pub fn slice(svc: &str, port_name: &str, w: &Workload) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {svc}-{pod}
  namespace: {NS}
  labels:
    kubernetes.io/service-name: {svc}
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
addressType: IPv4
ports:
- {{name: {port_name}, port: {port}, protocol: TCP}}
endpoints:
- addresses: [127.0.0.1]
  conditions:
    ready: true
    serving: true
    terminating: false
  targetRef: {{kind: Pod, name: {pod}, namespace: {NS}}}
  zone: {zone}
"#,
        pod = w.pod,
        port = w.port,
        zone = w.zone
    )
}

/// A DestinationRule for `host` with one subset per version (`version: X`).
pub fn destination_rule(svc: &str, host: &str, versions: &[&str]) -> String {
    let subsets: String = versions.iter().map(|v| format!("  - name: {v}\n    labels: {{version: {v}}}\n")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {svc}, namespace: {NS}}}\nspec:\n  host: {host}\n  subsets:\n{subsets}"
    )
}

/// A VirtualService for `host` whose `http:` list is `http` (YAML, indented
/// by two spaces).
pub fn virtual_service(svc: &str, host: &str, http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {svc}, namespace: {NS}}}\nspec:\n  hosts: [{host}]\n  http:\n{http}"
    )
}

/// Runs `keelson validate` on `dirs` (which hold `files` config files in
/// all): it must pass with no warning, since a translation warning means
/// part of an object would be ignored.
pub fn assert_validates(dirs: &[&Path], files: usize) {
    let mut args = vec!["validate"];
    args.extend(dirs.iter().map(|d| d.to_str().unwrap()));
    let out = keelson(&args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.trim() == format!("OK: {files} file(s) valid"),
        "keelson validate {dirs:?}: {}\n{text}",
        out.status
    );
}

/// `keelson serve` with one `file:` source per dir, a short snapshot quiet
/// period and rescan so edits land quickly (the defaults are 100 ms / 10 s).
pub fn serve_files(work: &Path, dirs: &[&Path]) -> Serve {
    let toml = work.join("keelson.toml");
    std::fs::write(&toml, "[snapshot]\nquiet = \"20ms\"\n[file]\nrescan = \"500ms\"\n").unwrap();
    let sources: Vec<String> = dirs.iter().map(|d| format!("file:{}", d.display())).collect();
    let mut args = vec!["--config", toml.to_str().unwrap()];
    for s in &sources {
        args.extend(["--source", s.as_str()]);
    }
    let serve = Serve::start(&work.join("data"), &args);
    serve.wait_for("/readyz", "a first snapshot", |status, _| status == 200);
    serve
}

// ------------------------------------------------------------ HTTP client

/// A keep-alive HTTP/1.1 client of one address (reconnects when the peer
/// closes). Bodies with Content-Length or chunked encoding.
pub struct HttpClient {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl HttpClient {
    pub fn new(addr: &str) -> HttpClient {
        HttpClient { addr: addr.to_string(), conn: None }
    }

    /// `GET /` with `Host: host` and `headers`: status and body.
    pub fn get(&mut self, host: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
        let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n");
        // A reused connection the peer closed while idle fails before any
        // response byte; one retry on a fresh connection covers that.
        let reused = self.conn.is_some();
        match self.exchange(&req) {
            Err(Exchange::BeforeResponse(_)) if reused => self.exchange(&req),
            r => r,
        }
        .map_err(|e| {
            self.conn = None;
            match e {
                Exchange::BeforeResponse(e) | Exchange::During(e) => e,
            }
        })
    }

    fn exchange(&mut self, req: &str) -> Result<(u16, String), Exchange> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr).map_err(|e| Exchange::BeforeResponse(format!("connect: {e}")))?;
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            self.conn = Some(BufReader::new(s));
        }
        let conn = self.conn.as_mut().unwrap();
        let before = |e: std::io::Error| Exchange::BeforeResponse(e.to_string());
        let during = |e: String| Exchange::During(e);
        conn.get_mut().write_all(req.as_bytes()).map_err(before)?;
        let mut line = String::new();
        if conn.read_line(&mut line).map_err(before)? == 0 {
            return Err(Exchange::BeforeResponse("closed".into()));
        }
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
        let status: u16 = status.ok_or_else(|| during(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            conn.read_line(&mut line).map_err(|e| during(e.to_string()))?;
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((&l, ""));
            match (k.trim(), v.trim()) {
                ("content-length", v) => length = v.parse::<usize>().ok(),
                ("transfer-encoding", v) => chunked = v.contains("chunked"),
                ("connection", v) => close = v.contains("close"),
                _ => {}
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).map_err(|e| during(e.to_string()))?;
                let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .map_err(|_| during(format!("bad chunk size {line:?}")))?;
                let mut chunk = vec![0; size + 2];
                conn.read_exact(&mut chunk).map_err(|e| during(e.to_string()))?;
                if size == 0 {
                    break; // (no trailers from Envoy or the backends)
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body).map_err(|e| during(e.to_string()))?;
        } else {
            conn.read_to_end(&mut body).map_err(|e| during(e.to_string()))?;
            close = true;
        }
        if close {
            self.conn = None;
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }

    /// `n` requests; how many got each answer: the body of a 200, else
    /// `"<status>"`, or `"error: ..."`.
    pub fn tally(&mut self, n: usize, host: &str, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for _ in 0..n {
            let key = match self.get(host, headers) {
                Ok((200, body)) => body,
                Ok((status, _)) => status.to_string(),
                Err(e) => format!("error: {e}"),
            };
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }
}

enum Exchange {
    BeforeResponse(String),
    During(String),
}

// ------------------------------------------------------- a flaky backend

/// An HTTP/1.1 backend on 127.0.0.1 that answers its 1st, 3rd, 5th, ...
/// request `500` and the others `200 <body>` (keep-alive, one thread per
/// connection). A 500 is what Envoy retries under `retryOn: 5xx` and not
/// under istiod's default policy (which retries 503 only, route/retry).
pub struct FlakyBackend {
    pub port: u16,
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl FlakyBackend {
    pub fn start(body: &str) -> FlakyBackend {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (requests, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (count, flag, body) = (requests.clone(), stop.clone(), body.to_string());
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (count, flag, body) = (count.clone(), flag.clone(), body.clone());
                        std::thread::spawn(move || flaky_conn(conn, &body, &count, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FlakyBackend { port, requests, stop }
    }

    /// Requests answered so far (half of them, rounded up, with 500).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

impl Drop for FlakyBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn flaky_conn(conn: TcpStream, body: &str, count: &AtomicU64, stop: &AtomicBool) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        // One request head (GETs from Envoy: no body). A read timeout may
        // leave part of a line in `line`: it is kept until the line ends.
        let mut len = 0usize;
        loop {
            match r.read_line(&mut line) {
                Ok(0) => return,
                Ok(_) if !line.ends_with('\n') => continue,
                Ok(_) => {
                    let l = line.trim_end().to_ascii_lowercase();
                    line.clear();
                    if l.is_empty() {
                        break;
                    }
                    if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        let mut skip = vec![0; len];
        if r.read_exact(&mut skip).is_err() {
            return;
        }
        let n = count.fetch_add(1, Ordering::Relaxed);
        let (status, text) = if n.is_multiple_of(2) { ("500 Internal Server Error", "fail") } else { ("200 OK", body) };
        let reply =
            format!("HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}", text.len());
        if r.get_mut().write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A who server (clients/grpc_who_server.py) answering `name`; (process, port).
pub fn who_server(name: &str) -> (Proc, u16) {
    let script = clients_dir().join("grpc_who_server.py");
    let p = Proc::start(
        &format!("who server {name}"),
        PROC_SECS,
        &grpc_python(),
        &[script.to_str().unwrap(), "--name", name],
        &[],
    );
    let line = p.wait_stdout_line("listening 127.0.0.1:", WAIT);
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    (p, port)
}
