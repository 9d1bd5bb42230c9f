//! kubeconfig credentials against a TLS API server that authenticates like
//! kube-apiserver (bearer tokens, client certificates; 401 otherwise):
//! `certificate-authority-data` + `token`, `tokenFile`, client certificate
//! data, and a wrong token, which leaves the source down with the API's message.

use keelson_fake_kube::{Auth, Credentials, FakeConfig, FakeKube, KubeconfigSpec};
use keelson_sources::kubernetes::{Connection, KubernetesConfig};

use crate::harness::*;

async fn tls_fake() -> FakeKube {
    let config = FakeConfig {
        tls: Some(Default::default()),
        auth: Auth::token("s3cret").with_client_certs(),
        ..FakeConfig::default()
    };
    FakeKube::start(config).await.unwrap()
}

fn config_for(fake: &FakeKube, dir: &std::path::Path, file: &str, credentials: Credentials) -> KubernetesConfig {
    let path = dir.join(file);
    fake.write_kubeconfig(&path, &KubeconfigSpec::new("east", credentials)).unwrap();
    KubernetesConfig::new("east", Connection::Kubeconfig { path: Some(path), context: None })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_token_files_and_client_certificates_all_reach_a_tls_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tls_fake().await;
    assert!(fake.url().starts_with("https://"));
    fake.store().upsert(vs("default", "reviews", "reviews")).unwrap();
    let cert = fake.issue_client_cert("keelson").unwrap();
    for (i, credentials) in
        [Credentials::Token("s3cret".into()), Credentials::TokenFile("s3cret".into()), Credentials::ClientCert(cert)]
            .into_iter()
            .enumerate()
    {
        let config = config_for(&fake, dir.path(), &format!("kubeconfig-{i}"), credentials.clone());
        let running = Running::start(&dir.path().join(format!("data-{i}")), vec![config]).await;
        eventually("the listing over TLS", || running.health("k8s/east").synced).await;
        assert_eq!(running.keys(), ["networking.istio.io/VirtualService/default/reviews"], "{credentials:?}");
        running.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_is_reported_with_the_api_servers_message() {
    let dir = tempfile::tempdir().unwrap();
    let fake = tls_fake().await;
    let config = config_for(&fake, dir.path(), "kubeconfig", Credentials::Token("wrong".into()));
    let running = Running::start(&dir.path().join("data"), vec![config]).await;
    eventually("the 401", || {
        running.health("k8s/east").last_error.is_some_and(|e| e.contains("401") && e.contains("Unauthorized"))
    })
    .await;
    // Every kind has failed by now; a 401 is the cluster's, not a kind's:
    // the listing waits (a cold hub stays unready) rather than closing empty.
    eventually("every kind to fail", || running.health("k8s/east").errors.len() >= 18).await;
    let health = running.health("k8s/east");
    assert!(!health.up && !health.synced, "{health:?}");
    assert!(running.handle().current().is_none(), "not ready on a cluster it cannot read");
    running.stop().await;
}
