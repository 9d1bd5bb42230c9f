//! HTTPS and authentication as a kube-apiserver does them, over raw TLS connections.

mod support;

use base64::Engine;
use keelson_fake_kube::{Auth, Credentials, FakeConfig, FakeKube, KubeconfigSpec, TlsConfig};
use serde_json::{Value, json};
use support::DEADLINE;
use support::https::{self, connector};
use tokio::net::TcpStream;
use tokio::time::timeout;

const TOKEN: &str = "s3cret-token";

fn unauthorized() -> Value {
    json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})
}

async fn fake(auth: Auth) -> FakeKube {
    FakeKube::start(FakeConfig { tls: Some(TlsConfig::default()), auth, ..FakeConfig::default() }).await.unwrap()
}

fn svc(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": {}})
}

#[tokio::test]
async fn bearer_token_over_tls_else_the_401_status() {
    let f = fake(Auth::token(TOKEN)).await;
    assert!(f.url().starts_with("https://127.0.0.1:"), "{}", f.url());
    let tls = connector(f.ca_pem().unwrap(), None);
    let good = format!("Bearer {TOKEN}");
    f.store().upsert(svc("a")).unwrap();

    let (head, body) = https::request(&tls, f.addr(), "GET", "/api/v1/services", &[], "").await;
    assert_eq!((head.status, body), (401, unauthorized()));
    assert_eq!(head.header("content-type"), Some("application/json"));
    let wrong = [("Authorization", "Bearer nope")];
    let (head, body) = https::request(&tls, f.addr(), "GET", "/api/v1/services", &wrong, "").await;
    assert_eq!((head.status, body), (401, unauthorized()));
    // Discovery is behind authentication too (kubectl's first request).
    assert_eq!(https::request(&tls, f.addr(), "GET", "/api", &[], "").await.0.status, 401);

    let ok = [("Authorization", good.as_str())];
    let (head, list) = https::request(&tls, f.addr(), "GET", "/api/v1/services", &ok, "").await;
    assert_eq!((head.status, list["kind"].as_str()), (200, Some("ServiceList")));
    assert_eq!(list["items"][0]["metadata"]["name"], "a");
    // Health stays public; the control API stays open so tests can drive the fake.
    assert_eq!(https::request(&tls, f.addr(), "GET", "/healthz", &[], "").await.0.status, 200);
    let (head, _) = https::request(&tls, f.addr(), "POST", "/_fake/objects", &[], &svc("b").to_string()).await;
    assert_eq!(head.status, 200);

    // A watch streams over TLS like over plain HTTP.
    let mut w = https::watch(&tls, f.addr(), "/api/v1/namespaces/default/services?watch=true", &ok).await;
    let first = w.event().await.unwrap();
    assert_eq!((first["type"].as_str(), first["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("a")));
    let second = w.event().await.unwrap();
    assert_eq!(second["object"]["metadata"]["name"], "b");
    f.store().upsert(svc("c")).unwrap();
    assert_eq!(w.event().await.unwrap()["object"]["metadata"]["name"], "c");
}

#[tokio::test]
async fn the_serving_certificate_names_localhost_too() {
    let f = fake(Auth::none()).await;
    let tls = connector(f.ca_pem().unwrap(), None);
    let stream = https::connect(&tls, f.addr(), "localhost").await;
    let (head, reader) = support::send_on(stream, "localhost", "GET", "/version", &[], "").await;
    let (head, body) = support::read_body(head, reader).await;
    assert_eq!((head.status, body["major"].as_str()), (200, Some("1")));
}

#[tokio::test]
async fn client_certificates_signed_by_the_ca_else_401() {
    let f = fake(Auth::client_certs()).await;
    let ca = f.ca_pem().unwrap();
    let cert = f.issue_client_cert("alice").unwrap();
    assert!(cert.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let with_cert = connector(ca, Some(&cert));
    let (head, list) = https::request(&with_cert, f.addr(), "GET", "/api/v1/pods", &[], "").await;
    assert_eq!((head.status, list["kind"].as_str()), (200, Some("PodList")));

    let (head, body) = https::request(&connector(ca, None), f.addr(), "GET", "/api/v1/pods", &[], "").await;
    assert_eq!((head.status, body), (401, unauthorized()));
    // A certificate from another CA is not a handshake failure but the authenticator's 401.
    let other = fake(Auth::client_certs()).await;
    let foreign = other.issue_client_cert("mallory").unwrap();
    let (head, body) = https::request(&connector(ca, Some(&foreign)), f.addr(), "GET", "/api/v1/pods", &[], "").await;
    assert_eq!((head.status, body), (401, unauthorized()));
    // Without TLS there is no CA to check client certificates against.
    let plain = FakeKube::start(FakeConfig { auth: Auth::client_certs(), ..FakeConfig::default() }).await;
    assert!(plain.is_err());
}

#[tokio::test]
async fn refused_tls_connections_come_back_on_the_same_address() {
    let f = fake(Auth::token(TOKEN)).await;
    let tls = connector(f.ca_pem().unwrap(), None);
    let auth = format!("Bearer {TOKEN}");
    let ok = [("Authorization", auth.as_str())];
    assert_eq!(https::request(&tls, f.addr(), "GET", "/api/v1/pods", &ok, "").await.0.status, 200);
    f.refuse_connections();
    timeout(DEADLINE, async {
        while TcpStream::connect(f.addr()).await.is_ok() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("connections still accepted");
    f.accept_connections().await.unwrap();
    assert_eq!(https::request(&tls, f.addr(), "GET", "/api/v1/pods", &ok, "").await.0.status, 200);
}

fn yaml(path: &std::path::Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[tokio::test]
async fn kubeconfig_and_service_account_files() {
    let f = fake(Auth::token(TOKEN).with_client_certs()).await;
    let dir = tempfile::tempdir().unwrap();
    let b64 = |s: &Value| {
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap()).unwrap()
    };

    let path = dir.path().join("kc-file");
    let spec = KubeconfigSpec {
        namespace: Some("shop".into()),
        ..KubeconfigSpec::new("east", Credentials::TokenFile(TOKEN.into()))
    };
    f.write_kubeconfig(&path, &spec).unwrap();
    let kc = yaml(&path);
    assert_eq!((kc["apiVersion"].as_str(), kc["kind"].as_str()), (Some("v1"), Some("Config")));
    assert_eq!(kc["current-context"], "east");
    assert_eq!(kc["clusters"][0]["name"], "east");
    assert_eq!(kc["clusters"][0]["cluster"]["server"], f.url());
    assert_eq!(b64(&kc["clusters"][0]["cluster"]["certificate-authority-data"]), f.ca_pem().unwrap());
    assert_eq!(kc["contexts"][0]["context"], json!({"cluster": "east", "user": "east", "namespace": "shop"}));
    let token_file = kc["users"][0]["user"]["tokenFile"].as_str().unwrap();
    assert_eq!(std::fs::read_to_string(token_file).unwrap(), TOKEN);
    assert_eq!(std::path::Path::new(token_file), dir.path().join("kc-file.token"));

    let cert = f.issue_client_cert("bob").unwrap();
    let path = dir.path().join("kc-cert");
    f.write_kubeconfig(&path, &KubeconfigSpec::new("c", Credentials::ClientCert(cert.clone()))).unwrap();
    let user = &yaml(&path)["users"][0]["user"];
    assert_eq!((b64(&user["client-certificate-data"]), b64(&user["client-key-data"])), (cert.cert_pem, cert.key_pem));

    let sa = f.write_service_account(&dir.path().join("sa"), "keelson", None).unwrap();
    assert_eq!((sa.host.as_str(), sa.port.clone()), ("127.0.0.1", f.addr().port().to_string()));
    let read = |name: &str| std::fs::read_to_string(sa.dir.join(name)).unwrap();
    assert_eq!(
        (read("token"), read("ca.crt"), read("namespace")),
        (TOKEN.into(), f.ca_pem().unwrap().into(), "keelson".into())
    );
}
