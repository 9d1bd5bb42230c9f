//! One named test per xDS protocol rule Keelson follows (issue 4, item 2;
//! PROTOCOL.md §1). Streams run the production machines in-process.

mod support;

use std::time::Duration;

use keelson_hub::SyncStatus;
use keelson_sinks::xds::XdsConfig;
use support::*;

const QUIET: Duration = Duration::from_millis(200);

#[tokio::test]
async fn first_wildcard_request_is_answered_at_once_even_if_empty() {
    let (mut cfg, rx) = Config::new();
    cfg.publish(); // nothing configured
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(CDS, &[], "", "");
    let r = s.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.type_url, CDS);
    assert!(!r.nonce.is_empty());
}

/// Issue 9, item 8: a client that half-closes right after its first request
/// still gets the answer, then the stream ends with OK. The request and the
/// end of the request stream arrive together here, every time.
#[tokio::test]
async fn a_half_closed_stream_gets_its_answer_then_ends() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    for i in 0..50 {
        let mut s = Sotw::open(&server, node(&format!("p{i}"), "c"));
        s.request(CDS, &[], "", "");
        s.half_close();
        assert_eq!(names(&s.recv().await), ["a"], "iteration {i}");
        s.recv_end().await;
    }
    // Half-closed before the first snapshot: that snapshot answers it.
    let (mut cfg, rx) = Config::new();
    let (late, _, _) = support::server(rx, XdsConfig::default());
    let mut s = Sotw::open(&late, node("early", "c"));
    s.request(CDS, &[], "", "");
    s.half_close();
    cfg.upsert(cluster("b"));
    cfg.publish();
    assert_eq!(names(&s.recv().await), ["b"]);
    s.recv_end().await;
}

#[tokio::test]
async fn first_request_of_a_type_is_a_new_subscription_whatever_its_nonce() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    // A reconnecting Envoy sends the nonce and version of its old stream.
    s.request(CDS, &[], "17", "old-stream-nonce-42");
    assert_eq!(names(&s.recv().await), ["a"]);
}

#[tokio::test]
async fn stale_nonce_is_ignored() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(endpoints("a", 1)).upsert(endpoints("b", 2));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["a"], "", "");
    let first = s.recv().await;
    s.ack(&first, &["a"]);
    cfg.upsert(endpoints("a", 9));
    cfg.publish();
    let second = s.recv().await;
    // A request answering the first response, sent before the second
    // arrived: it must not trigger anything.
    s.request(EDS, &["a", "b"], &first.version_info, &first.nonce);
    s.silent(QUIET).await;
    // The same change with the current nonce is answered.
    s.request(EDS, &["a", "b"], &second.version_info, &second.nonce);
    assert_eq!(names(&s.recv().await), ["a", "b"]);
}

#[tokio::test]
async fn wildcard_by_star_and_by_legacy_empty_list() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(cluster("b"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    for names_asked in [&[][..], &["*"][..]] {
        let mut s = Sotw::open(&server, node("p", "c"));
        s.request(CDS, names_asked, "", "");
        assert_eq!(names(&s.recv().await), ["a", "b"], "asked {names_asked:?}");
    }
}

#[tokio::test]
async fn empty_list_after_names_means_unsubscribe_all() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(endpoints("b", 2));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["a"], "", "");
    let r = s.recv().await;
    assert_eq!(names(&r), ["a"]);
    s.ack(&r, &[]);
    let r = s.recv().await;
    assert!(r.resources.is_empty(), "once names were set, an empty list is not a wildcard: {:?}", names(&r));
}

#[tokio::test]
async fn lds_and_cds_responses_hold_full_state() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(cluster("b"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(CDS, &[], "", "");
    let r = s.recv().await;
    s.ack(&r, &[]);
    cfg.upsert(cluster("c"));
    cfg.publish();
    // One new cluster, and the response still carries all three.
    assert_eq!(names(&s.recv().await), ["a", "b", "c"]);
}

#[tokio::test]
async fn rds_and_eds_responses_hold_only_the_subscribed_names() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(endpoints("b", 2)).upsert(route("r2", "b"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["b"], "", "");
    assert_eq!(names(&s.recv().await), ["b"]);
    s.request(RDS, &["r"], "", "");
    assert_eq!(names(&s.recv().await), ["r"]);
}

#[tokio::test]
async fn missing_names_are_remembered_and_pushed_when_they_appear() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["a", "later"], "", "");
    let r = s.recv().await;
    assert_eq!(names(&r), ["a"]);
    s.ack(&r, &["a", "later"]);
    cfg.upsert(endpoints("later", 7));
    cfg.publish();
    // EDS is not full-state: the push holds what changed since the ACK,
    // and the client keeps `a` (istiod's incremental EDS).
    assert_eq!(names(&s.recv().await), ["later"]);
}

#[tokio::test]
async fn partial_eds_answers_hold_everything_changed_since_the_last_ack() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(endpoints("b", 2));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["a", "b"], "", "");
    let first = s.recv().await;
    assert_eq!(names(&first), ["a", "b"], "the first answer is whole");
    s.ack(&first, &["a", "b"]);
    cfg.upsert(endpoints("a", 3));
    cfg.publish();
    let second = s.recv().await;
    assert_eq!(names(&second), ["a"]);
    s.nack(&second, &["a", "b"], &first.version_info, "rejected");
    cfg.upsert(endpoints("b", 4));
    cfg.publish();
    // Since the last ACK both changed: the rejected `a` comes again with `b`.
    let third = s.recv().await;
    assert_eq!(names(&third), ["a", "b"]);
    s.ack(&third, &["a", "b"]);
    // A subscription change is answered whole.
    s.request(EDS, &["a"], &third.version_info, &third.nonce);
    s.silent(QUIET).await;
    s.request(EDS, &["a", "b", "c"], &third.version_info, &third.nonce);
    assert_eq!(names(&s.recv().await), ["a", "b"]);
}

#[tokio::test]
async fn new_names_are_answered_even_if_nothing_changed() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(endpoints("b", 2));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["a"], "", "");
    let r = s.recv().await;
    s.ack(&r, &["a", "b"]);
    assert_eq!(names(&s.recv().await), ["a", "b"]);
    // An ACK alone is never a reason to send.
    s.silent(QUIET).await;
}

#[tokio::test]
async fn cds_push_resends_eds_even_if_endpoints_are_unchanged() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(CDS, &[], "", "");
    let cds = s.recv().await;
    s.ack(&cds, &[]);
    s.request(EDS, &["a"], "", "");
    let eds = s.recv().await;
    s.ack(&eds, &["a"]);
    s.silent(QUIET).await;
    // The cluster changes, its endpoints do not.
    let mut changed = cluster("a");
    changed["spec"]["connect_timeout"] = serde_json::json!("2s");
    cfg.upsert(changed);
    cfg.publish();
    let cds2 = s.recv().await;
    assert_eq!(cds2.type_url, CDS);
    let eds2 = s.recv().await;
    assert_eq!(eds2.type_url, EDS, "Envoy warms the cluster until a new EDS response arrives");
    assert_eq!(names(&eds2), ["a"]);
    assert_eq!(eds2.resources, eds.resources);
}

#[tokio::test]
async fn pushes_go_cds_eds_lds_rds_and_removals_last() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    for (t, n) in [(CDS, &[][..]), (EDS, &["a"][..]), (LDS, &[][..]), (RDS, &["r"][..])] {
        s.request(t, n, "", "");
        let r = s.recv().await;
        s.ack(&r, n);
    }
    // Cluster a is replaced by b, and the route moves to b, in one snapshot.
    cfg.delete("Cluster", "a").upsert(cluster("b")).upsert(endpoints("b", 2)).upsert(route("r", "b"));
    cfg.upsert(listener("l", "r"));
    cfg.publish();
    // Envoy-like: ACK each response, subscribing EDS to every cluster it knows.
    let mut seen: Vec<(String, Vec<String>)> = Vec::new();
    while !seen.last().is_some_and(|(t, n)| t == CDS && n == &["b"]) {
        assert!(seen.len() < 8, "no final CDS push: {seen:?}");
        let r = s.recv().await;
        seen.push((r.type_url.clone(), names(&r)));
        let n: &[&str] = match r.type_url.as_str() {
            EDS | CDS => &["a", "b"],
            RDS => &["r"],
            _ => &[],
        };
        s.ack(&r, if r.type_url == CDS { &[] } else { n });
    }
    let mut order: Vec<&str> = seen.iter().map(|(t, _)| support_short(t)).collect();
    order.dedup();
    assert_eq!(order, ["CDS", "EDS", "RDS", "CDS"], "{seen:?}");
    // Make-before-break: a stays until the route no longer points at it.
    assert_eq!(seen[0].1, ["b", "a"], "first CDS keeps the removed cluster");
}

fn support_short(t: &str) -> &'static str {
    match t {
        CDS => "CDS",
        EDS => "EDS",
        LDS => "LDS",
        RDS => "RDS",
        _ => "?",
    }
}

#[tokio::test]
async fn nacked_version_is_not_resent_and_the_next_version_is() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.publish();
    let (server, ledger, mut nacks) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("envoy-1", "c"));
    s.request(CDS, &[], "", "");
    let good = s.recv().await;
    s.ack(&good, &[]);
    cfg.upsert(cluster("bad"));
    cfg.publish();
    let bad = s.recv().await;
    s.nack(&bad, &[], &good.version_info, "cluster bad: rejected");
    let record = tokio::time::timeout(WAIT, nacks.recv()).await.unwrap().unwrap();
    assert_eq!((record.node.as_str(), record.version.as_str()), ("envoy-1", bad.version_info.as_str()));
    assert_eq!(record.error, "cluster bad: rejected");
    let status = || ledger.records()[0].types[CDS].clone();
    assert_eq!(status().status(), SyncStatus::Nacked);
    assert_eq!(status().acked_version.map(|v| v.to_string()), Some(good.version_info.clone()));
    // Other kinds change: CDS content is what was rejected, so nothing is sent.
    cfg.upsert(endpoints("a", 5));
    cfg.publish();
    s.silent(QUIET).await;
    // The fix is a new version, and it goes out.
    cfg.delete("Cluster", "bad");
    cfg.publish();
    let fixed = s.recv().await;
    assert_eq!(names(&fixed), ["a"]);
    s.ack(&fixed, &[]);
    wait_synced(&ledger, CDS).await;
}

async fn wait_synced(ledger: &keelson_hub::AckLedger, type_url: &str) {
    tokio::time::timeout(WAIT, async {
        while ledger.records()[0].types[type_url].status() != SyncStatus::Synced {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("SYNCED within the deadline");
}

#[tokio::test]
async fn delta_first_wildcard_request_is_answered_even_if_empty() {
    let (mut cfg, rx) = Config::new();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut d = Delta::open(&server);
    d.subscribe(CDS, &[], "");
    let r = d.recv().await;
    assert!(r.resources.is_empty() && r.removed_resources.is_empty());
    assert!(!r.nonce.is_empty());
}

#[tokio::test]
async fn delta_sends_changes_only_and_absent_names_as_removed() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(cluster("b"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut d = Delta::open(&server);
    d.subscribe(CDS, &["*"], "");
    let r = d.recv().await;
    let got: Vec<&str> = r.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(got, ["a", "b"]);
    d.subscribe(CDS, &[], &r.nonce); // ACK
    cfg.upsert(cluster("c"));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["c"], "only the change");
    d.subscribe(CDS, &[], &r.nonce);
    cfg.delete("Cluster", "b");
    cfg.publish();
    let r = d.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["b"]);
    // A subscribed name that does not exist is reported absent at once.
    d.subscribe(EDS, &["nope", "a"], "");
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(r.removed_resources, ["nope"]);
}

#[tokio::test]
async fn delta_reconnect_with_initial_resource_versions_sends_only_differences() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(cluster("b"));
    let snap = cfg.publish();
    let version_of =
        |name: &str| snap.get(keelson_hub::kinds::ENVOY_GROUP, "Cluster", "", name).unwrap().version.to_string();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut d = Delta::open(&server);
    d.send(keelson_proto::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest {
        node: node("delta-1", "test"),
        type_url: CDS.into(),
        resource_names_subscribe: vec!["*".into()],
        // Holds a current, b at an old version, and z which no longer exists.
        initial_resource_versions: [
            ("a".to_string(), version_of("a")),
            ("b".into(), "1".into()),
            ("z".into(), "3".into()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(r.resources[0].version, version_of("b"));
    assert_eq!(r.removed_resources, ["z"]);
}

#[tokio::test]
async fn ttl_wrapper_only_for_clients_that_advertise_it() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(with_meta(cluster("a"), "annotations", "keelson.dev/ttl", "30s"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut plain = Sotw::open(&server, node("old", "c"));
    plain.request(CDS, &[], "", "");
    let r = plain.recv().await;
    assert_eq!(r.resources[0].type_url, CDS, "no wrapper for a client that did not ask");
    let mut n = node("grpc", "c").unwrap();
    n.client_features = vec!["xds.config.resource-in-sotw".into()];
    let mut modern = Sotw::open(&server, Some(n));
    modern.request(CDS, &[], "", "");
    let r = modern.recv().await;
    assert_eq!(r.resources[0].type_url, keelson_sinks::xds::wire::RESOURCE_WRAPPER);
    let res = <keelson_proto::envoy::pb::envoy::service::discovery::v3::Resource as prost::Message>::decode(
        r.resources[0].value.as_slice(),
    )
    .unwrap();
    assert_eq!(res.ttl.map(|d| d.seconds), Some(30));
    assert_eq!(res.resource.unwrap().type_url, CDS);
}

#[tokio::test]
async fn proxy_groups_scope_resources_and_ungrouped_go_to_all() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("shared")).upsert(with_meta(cluster("only-blue"), "labels", "keelson.dev/proxy-group", "blue"));
    cfg.publish();
    let (server, ledger, _) = server(rx, XdsConfig::default());
    let mut blue = Sotw::open(&server, node("b1", "blue"));
    blue.request(CDS, &[], "", "");
    assert_eq!(names(&blue.recv().await), ["only-blue", "shared"]);
    let mut green = Sotw::open(&server, node("g1", "green"));
    green.request(CDS, &[], "", "");
    assert_eq!(names(&green.recv().await), ["shared"]);
    // Grouping never merges per-proxy status.
    assert_eq!(ledger.records().len(), 2);
}

#[tokio::test]
async fn a_request_without_node_or_type_ends_the_stream_with_invalid_argument() {
    let (mut cfg, rx) = Config::new();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, None);
    s.request(CDS, &[], "", "");
    assert_eq!(s.recv_err().await.code(), tonic::Code::InvalidArgument);
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request("", &[], "", "");
    assert_eq!(s.recv_err().await.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn unknown_types_are_answered_empty() {
    let (mut cfg, rx) = Config::new();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request("type.googleapis.com/envoy.service.runtime.v3.Runtime", &["rtds"], "", "");
    let r = s.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.type_url, "type.googleapis.com/envoy.service.runtime.v3.Runtime");
    // Counted under "other": client-chosen type URLs never become label values.
    let other = keelson_sinks::xds::metrics::TypeLabel { r#type: "other" };
    assert_eq!(server.shared().metrics.pushes.get_or_create(&other).get(), 1);
}

#[tokio::test]
async fn a_stuck_client_gets_only_the_newest_version() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.publish();
    let (server, ledger, _) = server(rx, XdsConfig::default());
    let mut s = Sotw::open(&server, node("p", "c"));
    s.request(EDS, &["a"], "", "");
    let r = s.recv().await;
    s.ack(&r, &["a"]);
    wait_synced(&ledger, EDS).await; // the ACK lands before the burst
    // 50 versions while the client reads nothing.
    for port in 2..52 {
        cfg.upsert(endpoints("a", port));
        cfg.publish();
    }
    let newest = cfg.version().to_string();
    let mut got = Vec::new();
    loop {
        let r = s.recv().await;
        got.push(r.version_info.clone());
        if r.version_info == newest {
            break;
        }
        s.ack(&r, &["a"]);
        assert!(got.len() <= 3, "old versions were queued: {got:?}");
    }
}

fn quickstart_rx() -> (Config, tokio::sync::watch::Receiver<Option<std::sync::Arc<keelson_hub::Snapshot>>>) {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(cluster("a")).upsert(endpoints("a", 1)).upsert(listener("l", "r")).upsert(route("r", "a"));
    (cfg, rx)
}

#[tokio::test]
async fn delta_removals_wait_until_every_upsert_is_out() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut d = Delta::open(&server);
    d.subscribe(CDS, &["*"], "");
    let r = d.recv().await;
    d.subscribe(CDS, &[], &r.nonce);
    d.subscribe(RDS, &["r"], "");
    let r = d.recv().await;
    d.subscribe(RDS, &[], &r.nonce);
    // Cluster a is replaced by b, and the route moves to b, in one snapshot.
    cfg.delete("Cluster", "a").upsert(cluster("b")).upsert(route("r", "b"));
    cfg.publish();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = d.recv().await;
        let upserts: Vec<String> = r.resources.iter().map(|x| x.name.clone()).collect();
        seen.push((support_short(&r.type_url), upserts, r.removed_resources.clone()));
        d.subscribe(&r.type_url, &[], &r.nonce);
    }
    let b = || vec!["b".to_string()];
    let r = || vec!["r".to_string()];
    let a = || vec!["a".to_string()];
    assert_eq!(seen, [("CDS", b(), vec![]), ("RDS", r(), vec![]), ("CDS", vec![], a())]);
}

#[tokio::test]
async fn delta_wildcard_diffs_change_sets_and_recovers_from_skipped_snapshots() {
    let (mut cfg, rx) = quickstart_rx();
    cfg.upsert(cluster("b"));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut d = Delta::open(&server);
    d.subscribe(CDS, &["*"], "");
    let r = d.recv().await;
    d.subscribe(CDS, &[], &r.nonce);
    // One snapshot at a time: each response is that change set.
    cfg.upsert(cluster("c"));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["c"]);
    d.subscribe(CDS, &[], &r.nonce);
    // A label moves b out of this proxy's group: a removal, from the change set.
    cfg.upsert(with_meta(cluster("b"), "labels", "keelson.dev/proxy-group", "other"));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.removed_resources, ["b"]);
    d.subscribe(CDS, &[], &r.nonce);
    let metrics = &server.shared().metrics;
    assert_eq!(metrics.delta_change_set_diffs.get(), 2, "the two single-snapshot steps used their change sets");
    assert_eq!(metrics.delta_full_diffs.get(), 1, "only the first answer diffed the whole kind");
    // Three snapshots in a row while the stream is busy elsewhere: it may see
    // only the last, whose change set starts after one it never saw, and the
    // full diff it falls back to must still be exact.
    cfg.upsert(cluster("d"));
    cfg.publish();
    cfg.delete("Cluster", "c");
    cfg.publish();
    cfg.upsert(cluster("b")); // back in every group
    cfg.publish();
    let mut upserts = std::collections::BTreeSet::new();
    let mut removed = std::collections::BTreeSet::new();
    while !(upserts.contains("d") && upserts.contains("b") && removed.contains("c")) {
        let r = d.recv().await;
        upserts.extend(r.resources.iter().map(|x| x.name.clone()));
        removed.extend(r.removed_resources.iter().cloned());
        d.subscribe(CDS, &[], &r.nonce);
    }
    assert!(!upserts.contains("a"), "a never changed: {upserts:?}");
    d.silent(QUIET).await;
}

/// Named Delta subscriptions (Envoy's EDS: 1,500 names at 1,000 services)
/// diff only the snapshot's change set, as wildcard ones do: a change to a
/// subscribed name is pushed alone, one to an unsubscribed name is not
/// pushed at all, a deleted one is removed, and new names get a whole diff.
#[tokio::test]
async fn delta_named_subscriptions_diff_change_sets() {
    let (mut cfg, rx) = Config::new();
    cfg.upsert(endpoints("a", 1)).upsert(endpoints("b", 2)).upsert(endpoints("c", 3));
    cfg.publish();
    let (server, _, _) = server(rx, XdsConfig::default());
    let mut d = Delta::open(&server);
    d.subscribe(EDS, &["a", "b"], "");
    let r = d.recv().await;
    let mut names: Vec<&str> = r.resources.iter().map(|x| x.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    d.subscribe(EDS, &[], &r.nonce);
    let metrics = &server.shared().metrics;
    let (sets0, full0) = (metrics.delta_change_set_diffs.get(), metrics.delta_full_diffs.get());
    cfg.upsert(endpoints("c", 30));
    cfg.publish();
    d.silent(std::time::Duration::from_millis(200)).await;
    cfg.upsert(endpoints("a", 10));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["a"]);
    d.subscribe(EDS, &[], &r.nonce);
    cfg.delete_key(keelson_hub::ResourceKey::new("xds.keelson.dev", "ClusterLoadAssignment", "", "b"));
    cfg.publish();
    let r = d.recv().await;
    assert_eq!((r.resources.len(), r.removed_resources.clone()), (0, vec!["b".to_string()]));
    d.subscribe(EDS, &[], &r.nonce);
    assert_eq!(metrics.delta_full_diffs.get(), full0, "no whole diff for those three snapshots");
    assert!(metrics.delta_change_set_diffs.get() >= sets0 + 2, "they used their change sets");
    // A newly subscribed name is answered from a whole diff.
    d.subscribe(EDS, &["c"], "");
    let r = d.recv().await;
    assert_eq!(r.resources.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["c"]);
    assert_eq!(metrics.delta_full_diffs.get(), full0 + 1);
}
