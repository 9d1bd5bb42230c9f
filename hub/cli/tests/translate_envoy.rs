//! Translation (issue 12) with a real Envoy 1.40 sidecar: Kubernetes
//! Services, Pods and EndpointSlices plus Istio DestinationRules and
//! VirtualServices from `file:` sources become the listeners, routes,
//! clusters and endpoints istiod would build (translate-spec), and real HTTP
//! requests through Envoy follow them: header routing, an 80/20 split, fault
//! injection, retries, endpoint readiness, and endpoints of two sources with
//! their localities.
//!
//! Envoy comes from `scripts/install-test-deps` (target/test-deps); without it
//! these tests fail and say so. Every process binds 127.0.0.1 only, runs
//! under `timeout`, and is stopped by PID when its guard drops; every wait
//! polls with a deadline.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Instant;

use support::envoy::{Envoy, Locality, localities};
use support::real::*;
use support::translate::*;
use support::{Backend, Serve, free_port};

/// An Istio sidecar's node id (`type~ip~pod.ns~ns.svc.<domain>`), as the spec asks.
const NODE: &str = "sidecar~127.0.0.1~envoy-1.default~default.svc.cluster.local";
const SVC: &str = "reviews";

// ---------------------------------------------------------------- the mesh

/// A hub serving config directories to one Envoy sidecar, and a keep-alive
/// client of the listener Envoy opens on the Service port.
struct Mesh {
    // Dropped in this order: the client, Envoy, the hub, then the files.
    http: HttpClient,
    envoy: Envoy,
    serve: Serve,
    svc_port: u16,
    /// The ADS stream kind as syncz names it: `sotw` or `delta`.
    stream: &'static str,
    _work: tempfile::TempDir,
}

impl Mesh {
    /// `files`: how many config files `dirs` hold (checked by `keelson
    /// validate`); `delta`: Delta xDS instead of SotW.
    fn start(work: tempfile::TempDir, svc_port: u16, dirs: &[&Path], files: usize, delta: bool) -> Mesh {
        assert_validates(dirs, files);
        let serve = serve_files(work.path(), dirs);
        let (api_type, stream) = if delta { ("DELTA_GRPC", "delta") } else { ("GRPC", "sotw") };
        let envoy = Envoy::start(work.path(), &serve.grpc, NODE, api_type);
        let http = HttpClient::new(&format!("127.0.0.1:{svc_port}"));
        Mesh { http, envoy, serve, svc_port, stream, _work: work }
    }

    fn diag(&self) -> String {
        format!(
            "--- Envoy config: {}{}\n{}\n--- syncz: {}",
            self.envoy.summary(),
            self.envoy.proc.output(),
            serve_log(&self.serve),
            syncz(&self.serve)
        )
    }

    /// `n` requests to the Service port with `Host: <fqdn>` and `headers`.
    fn tally(&mut self, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
        self.http.tally(n, &fqdn(SVC), headers)
    }

    /// Polls until a request with `headers` is answered `want` (a 200's body
    /// or a status).
    fn wait_answer(&mut self, what: &str, headers: &[(&str, &str)], want: &str) {
        self.wait_answer_from(&fqdn(SVC), what, headers, want)
    }

    /// [`Mesh::wait_answer`] with `Host: host`.
    fn wait_answer_from(&mut self, host: &str, what: &str, headers: &[(&str, &str)], want: &str) {
        let end = Instant::now() + WAIT;
        let mut last = BTreeMap::new();
        while Instant::now() < end {
            last = self.http.tally(1, host, headers);
            if last.contains_key(want) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("timed out after {WAIT:?} waiting for {what} ({want}); last {last:?}\n{}", self.diag());
    }

    fn assert_synced(&self) {
        let d = || self.diag();
        poll("syncz: the sidecar SYNCED for CDS, EDS, LDS, RDS (no NACK)", WAIT, &d, |last| {
            let z = syncz(&self.serve);
            *last = z.to_string();
            all_synced(&z, NODE, self.stream, &[CDS, EDS, LDS, RDS]).then_some(())
        });
    }
}

fn workload<'a>(pod: &'a str, version: &'a str, port: u16, zone: &'a str) -> Workload<'a> {
    Workload { pod, version, port, zone }
}

/// The bookinfo routes of istio.io's request-routing, traffic-shifting and
/// fault-injection tasks (short host names, resolved in the object's
/// namespace as istiod does), plus two routes to a backend that fails every
/// other request: one with `retries`, one without.
const ROUTES: &str = r#"  - name: retried
    match: [{headers: {x-test: {exact: retry}}}]
    route: [{destination: {host: reviews, subset: v3}}]
    retries: {attempts: 3, retryOn: 5xx}
  - name: not-retried
    match: [{headers: {x-test: {exact: no-retry}}}]
    route: [{destination: {host: reviews, subset: v3}}]
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: split
    route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"#;

const FAULT_ROUTE: &str = r#"  - name: faulty
    match: [{headers: {x-fault: {exact: "yes"}}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
"#;

#[test]
fn envoy_sidecar_routes_by_header_and_weight_injects_faults_and_retries() {
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    let (v1, v2, v3) = (Backend::start("v1"), Backend::start("v2"), FlakyBackend::start("v3"));
    let svc_port = free_port();
    let workloads = [
        workload("reviews-v1", "v1", v1.port, "z1"),
        workload("reviews-v2", "v2", v2.port, "z1"),
        workload("reviews-v3", "v3", v3.port, "z1"),
    ];
    write_service(&config, SVC, "http", svc_port, &workloads);
    write(&config, "destination-rule.yaml", &destination_rule(SVC, SVC, &["v1", "v2", "v3"]));
    write(&config, "virtual-service.yaml", &virtual_service(SVC, SVC, ROUTES));
    let mut m = Mesh::start(work, svc_port, &[&config], 9, false);

    // (a) The header route always reaches v2; the rest split 80/20.
    let jason = [("end-user", "jason")];
    m.wait_answer("Envoy to route end-user: jason", &jason, "v2");
    let counts = m.tally(50, &jason);
    assert_eq!(counts, BTreeMap::from([("v2".to_string(), 50)]), "end-user: jason\n{}", m.diag());
    let counts = m.tally(1000, &[]);
    let (a, b) = (counts.get("v1").copied().unwrap_or(0), counts.get("v2").copied().unwrap_or(0));
    // 80 % of 1,000 has a standard deviation of 1.3 %: 75-85 % is ±4 σ.
    assert!(a + b == 1000 && (750..=850).contains(&a), "80/20 split over 1000 requests: {counts:?}\n{}", m.diag());
    eprintln!("split: {counts:?} after {:?}", t0.elapsed());

    // istiod's names: one listener on the service port (never the
    // proxyless `<host>:<port>` one in a wildcard answer), routes named by
    // the port, a cluster per port and per subset.
    let [clusters, listeners, routes] = m.envoy.names();
    assert_eq!(listeners, BTreeSet::from([format!("127.0.0.1_{svc_port}")]), "\n{}", m.diag());
    assert_eq!(routes, BTreeSet::from([svc_port.to_string()]), "\n{}", m.diag());
    for subset in ["", "v1", "v2", "v3"] {
        let name = cluster_name(svc_port, subset, SVC);
        assert!(clusters.contains(&name), "no cluster {name} in {clusters:?}\n{}", m.diag());
    }

    // (c) retries: 5xx makes Envoy retry the 500 of the flaky backend, so
    // every request succeeds; without it, half of them fail (istiod's
    // default policy retries 503 only).
    let before = v3.requests();
    let counts = m.tally(20, &[("x-test", "retry")]);
    assert_eq!(counts, BTreeMap::from([("v3".to_string(), 20)]), "retried route\n{}", m.diag());
    let attempts = v3.requests() - before;
    assert!(attempts >= 40, "20 requests, each a 500 then a 200, took {attempts} attempts");
    let retried = m.envoy.stat(&format!("cluster.{}.upstream_rq_retry", cluster_name(svc_port, "v3", SVC)));
    assert!(retried.is_some_and(|n| n >= 20), "upstream_rq_retry {retried:?}\n{}", m.diag());
    let counts = m.tally(20, &[("x-test", "no-retry")]);
    assert!(
        counts.get("500").is_some_and(|&n| n > 0) && counts.get("v3").is_some_and(|&n| n > 0),
        "the route without retries passes the backend's 500s on: {counts:?}\n{}",
        m.diag()
    );

    // The virtual host answers every name istiod's generateVirtualHostDomains
    // gives a Service in the client's namespace (no other namespace has a
    // `reviews`, so the bare name too); another host has no virtual host.
    let hosts = [
        fqdn(SVC),
        format!("{}:{svc_port}", fqdn(SVC)),
        format!("{SVC}.{NS}"),
        format!("{SVC}.{NS}:{svc_port}"),
        format!("{SVC}.{NS}.svc"),
        format!("{SVC}.{NS}.svc:{svc_port}"),
        SVC.to_string(),
        format!("{SVC}:{svc_port}"),
    ];
    for host in &hosts {
        let counts = m.http.tally(3, host, &jason);
        assert_eq!(counts, BTreeMap::from([("v2".to_string(), 3)]), "Host: {host}\n{}", m.diag());
    }
    let counts = m.http.tally(3, &fqdn("ratings"), &jason);
    assert_eq!(counts, BTreeMap::from([("404".to_string(), 3)]), "Host: {}\n{}", fqdn("ratings"), m.diag());

    // (b) fault: an added route aborts every matching request with 503.
    replace_in(&config.join("virtual-service.yaml"), "  - name: jason\n", &format!("{FAULT_ROUTE}  - name: jason\n"));
    let fault = [("x-fault", "yes")];
    m.wait_answer("the fault route to abort", &fault, "503");
    let counts = m.tally(20, &fault);
    assert_eq!(counts, BTreeMap::from([("503".to_string(), 20)]), "x-fault: yes\n{}", m.diag());
    let counts = m.tally(20, &jason);
    assert_eq!(counts, BTreeMap::from([("v2".to_string(), 20)]), "end-user: jason after the edit\n{}", m.diag());
    m.assert_synced();
    eprintln!("routing, split, retries, fault: passed in {:?}", t0.elapsed());
}

/// Over Delta xDS (the other test uses SotW): endpoint changes and removals
/// arrive as Delta updates and removals.
#[test]
fn envoy_sidecar_follows_endpoint_slices_of_two_sources() {
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let (east, west) = (work.path().join("east"), work.path().join("west"));
    let (v1, v2, v1b) = (Backend::start("v1"), Backend::start("v2"), Backend::start("v1b"));
    let svc_port = free_port();
    // No DestinationRule, no VirtualService: the default route to
    // outbound|port||host, round robin over every endpoint.
    let here = [workload("reviews-v1", "v1", v1.port, "z1"), workload("reviews-v2", "v2", v2.port, "z1")];
    write_service(&east, SVC, "http", svc_port, &here);
    // A second source holds more endpoints of the same Service (another
    // slice name, another zone), as a second cluster's EndpointSlices would.
    write_workloads(&west, SVC, "http", &[workload("reviews-v1b", "v1", v1b.port, "z2")]);
    let mut m = Mesh::start(work, svc_port, &[&east, &west], 7, true);
    let cluster = cluster_name(m.svc_port, "", SVC);

    // (e) one cluster, both sources' endpoints, one locality per zone
    // weighted by its number of endpoints.
    let mut here_ports = vec![v1.port as u64, v2.port as u64];
    here_ports.sort();
    let want: Vec<Locality> = vec![("z1".into(), 2, here_ports), ("z2".into(), 1, vec![v1b.port as u64])];
    let d = || m.diag();
    poll(&format!("Envoy's endpoints of {cluster} to be {want:?}"), WAIT, &d, |last| {
        let cla = m.envoy.endpoints(&cluster)?;
        *last = cla.to_string();
        (localities(&cla) == want).then_some(())
    });
    let mut seen = BTreeSet::new();
    for _ in 0..60 {
        seen.extend(m.tally(1, &[]).into_keys());
        if seen.len() >= 3 {
            break;
        }
    }
    let all: BTreeSet<String> = ["v1", "v1b", "v2"].map(String::from).into();
    assert_eq!(seen, all, "60 requests round robin over three endpoints\n{}", m.diag());
    m.assert_synced();

    // (d) an endpoint that is no longer ready gets no traffic, and only
    // endpoints are pushed for it: incremental EDS, seen in the hub's push
    // counters (keelson_xds_pushes_total per type).
    let before = pushes(&m.serve);
    replace_in(&east.join("slice-reviews-v1.yaml"), "ready: true", "ready: false");
    let end = Instant::now() + WAIT;
    let mut run = 0;
    let mut last = BTreeMap::new();
    while run < 30 {
        assert!(Instant::now() < end, "no 30 requests in a row avoided the unready v1; last {last:?}\n{}", m.diag());
        last = m.tally(1, &[]);
        run = if last.contains_key("v2") || last.contains_key("v1b") { run + 1 } else { 0 };
    }
    let counts = m.tally(100, &[]);
    assert!(
        counts.keys().all(|k| k == "v2" || k == "v1b") && counts.len() == 2,
        "after v1 went unready: {counts:?}\n{}",
        m.diag()
    );
    let cla = m.envoy.endpoints(&cluster).unwrap_or_default();
    let served: Vec<u64> = localities(&cla).into_iter().flat_map(|l| l.2).collect();
    assert!(!served.contains(&(v1.port as u64)), "the unready endpoint is still served: {cla}\n{}", m.diag());
    m.assert_synced();
    let after = pushes(&m.serve);
    for ty in ["CDS", "LDS", "RDS"] {
        assert_eq!(after.get(ty), before.get(ty), "an endpoint-only change pushed {ty}: {before:?} → {after:?}");
    }
    assert!(after.get("EDS") > before.get("EDS"), "the endpoint change was pushed: {before:?} → {after:?}");

    // Deleting the Service takes its listener, routes and clusters away
    // (its slices stay, as they may in Kubernetes until garbage collection).
    std::fs::remove_file(east.join("service.yaml")).unwrap();
    let d = || m.diag();
    poll("Envoy to drop the Service's listener, route and clusters", WAIT, &d, |last| {
        let names = m.envoy.names();
        *last = format!("{names:?}");
        names.iter().all(|n| n.is_empty()).then_some(())
    });
    // Over Delta every type ends SYNCED. (Over SotW the hub's syncz keeps
    // EDS at sent N / acked N-1 here: Envoy drops its EDS watches with the
    // clusters and takes the hub's empty EDS answer without a request,
    // GrpcMuxImpl's "no watches and no resources" case.)
    m.assert_synced();
    eprintln!("two sources, localities, readiness: passed in {:?}", t0.elapsed());
}

/// A ServiceEntry (STATIC) selecting WorkloadEntries, as istio.io's
/// "WorkloadEntry" examples register VMs, with a DestinationRule and a
/// header route; another (DNS) whose endpoint is a name Envoy resolves.
fn write_entries(dir: &Path, pay_port: u16, dns_port: u16, v1: u16, v2: u16, dns: u16) {
    std::fs::create_dir_all(dir).unwrap();
    write(
        dir,
        "service-entry-pay.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: pay, namespace: {NS}}}\n\
             spec:\n  hosts: [{PAY}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
             \x20 ports: [{{number: {pay_port}, name: http, protocol: HTTP}}]\n\
             \x20 workloadSelector: {{labels: {{app: pay}}}}\n"
        ),
    );
    for (name, version, port) in [("pay-v1", "v1", v1), ("pay-v2", "v2", v2)] {
        write(dir, &format!("workload-entry-{name}.yaml"), &workload_entry(name, version, port));
    }
    write(dir, "destination-rule.yaml", &destination_rule("pay", PAY, &["v1", "v2"]));
    let http = "  - match: [{headers: {x-pay: {exact: v2}}}]\n    route: [{destination: {host: pay.example.com, subset: v2}}]\n\
                \x20 - route: [{destination: {host: pay.example.com, subset: v1}}]\n";
    write(dir, "virtual-service.yaml", &virtual_service("pay", PAY, http));
    write(
        dir,
        "service-entry-dns.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: dns, namespace: {NS}}}\n\
             spec:\n  hosts: [dns.example.com]\n  resolution: DNS\n\
             \x20 ports: [{{number: {dns_port}, name: http, protocol: HTTP}}]\n\
             \x20 endpoints: [{{address: localhost, ports: {{http: {dns}}}}}]\n"
        ),
    );
}

const PAY: &str = "pay.example.com";

fn workload_entry(name: &str, version: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec: {{address: 127.0.0.1, labels: {{app: pay, version: {version}}}, ports: {{http: {port}}}, locality: r1/z1}}\n"
    )
}

#[test]
fn envoy_sidecar_reaches_service_entry_hosts_follows_workload_entries_and_its_sidecar_scope() {
    let t0 = Instant::now();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("entries");
    let (v1, v2, v1b, dns) = (Backend::start("v1"), Backend::start("v2"), Backend::start("v1b"), Backend::start("dns"));
    let (pay_port, dns_port) = (free_port(), free_port());
    write_entries(&config, pay_port, dns_port, v1.port, v2.port, dns.port);
    let mut m = Mesh::start(work, pay_port, &[&config], 6, false);

    // STATIC: routed to the selected WorkloadEntries by subset.
    m.wait_answer_from(PAY, "Envoy to route the ServiceEntry host", &[], "v1");
    assert_eq!(m.http.tally(20, PAY, &[]), BTreeMap::from([("v1".to_string(), 20)]), "\n{}", m.diag());
    let v2_header = [("x-pay", "v2")];
    assert_eq!(m.http.tally(20, PAY, &v2_header), BTreeMap::from([("v2".to_string(), 20)]), "\n{}", m.diag());
    // Only the host's own names: no Kubernetes short forms.
    assert_eq!(m.http.tally(2, "pay", &[]), BTreeMap::from([("404".to_string(), 2)]), "\n{}", m.diag());
    // DNS: a STRICT_DNS cluster; Envoy resolves `localhost` itself.
    let mut dns_client = HttpClient::new(&format!("127.0.0.1:{dns_port}"));
    let d = || m.diag();
    poll("Envoy to reach the DNS ServiceEntry's endpoint", WAIT, &d, |last| {
        let counts = dns_client.tally(1, "dns.example.com", &[]);
        *last = format!("{counts:?}");
        counts.contains_key("dns").then_some(())
    });
    let dns_cluster = format!("outbound|{dns_port}||dns.example.com");
    let [clusters, _, _] = m.envoy.names();
    assert!(clusters.contains(&dns_cluster), "{clusters:?}");
    let snapshot = m.serve.get("/debug/snapshot?resources=1").1;
    let keys: Vec<&str> = snapshot["resources"].as_array().unwrap().iter().filter_map(|r| r["key"].as_str()).collect();
    assert!(keys.contains(&format!("xds.keelson.dev/Cluster//{dns_cluster}").as_str()), "{keys:?}");
    let eds = format!("xds.keelson.dev/ClusterLoadAssignment//{dns_cluster}");
    assert!(!keys.contains(&eds.as_str()), "a DNS cluster has its endpoints inline, no EDS resource: {keys:?}");
    m.assert_synced();

    // A new WorkloadEntry joins the selector: an endpoint change, so only
    // EDS is pushed; traffic reaches it.
    let before = pushes(&m.serve);
    write(&config, "workload-entry-pay-v1b.yaml", &workload_entry("pay-v1b", "v1", v1b.port));
    let mut seen = BTreeSet::new();
    let end = Instant::now() + WAIT;
    while seen.len() < 2 {
        assert!(Instant::now() < end, "v1b never answered; saw {seen:?}\n{}", m.diag());
        seen.extend(m.http.tally(1, PAY, &[]).into_keys());
    }
    assert_eq!(seen, BTreeSet::from(["v1".to_string(), "v1b".to_string()]), "\n{}", m.diag());
    m.assert_synced();
    let after = pushes(&m.serve);
    for ty in ["CDS", "LDS", "RDS"] {
        assert_eq!(after.get(ty), before.get(ty), "a WorkloadEntry change pushed {ty}: {before:?} → {after:?}");
    }

    // A Sidecar of the proxy's namespace importing one host: Envoy loses the
    // other's cluster and listener (istiod's SidecarScope), keeps routing
    // the imported one, and gets everything back when the Sidecar goes.
    let sidecar = format!(
        "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {{name: default, namespace: {NS}}}\n\
         spec: {{egress: [{{hosts: [\"./{PAY}\"]}}]}}\n"
    );
    write(&config, "sidecar.yaml", &sidecar);
    let d = || m.diag();
    poll("Envoy to drop what the Sidecar does not import", WAIT, &d, |last| {
        let [clusters, listeners, _] = m.envoy.names();
        *last = format!("{clusters:?} {listeners:?}");
        let gone = !clusters.contains(&dns_cluster) && !listeners.contains(&format!("127.0.0.1_{dns_port}"));
        (gone && clusters.contains(&format!("outbound|{pay_port}||{PAY}"))).then_some(())
    });
    assert_eq!(m.http.tally(5, PAY, &v2_header), BTreeMap::from([("v2".to_string(), 5)]), "\n{}", m.diag());
    m.assert_synced();
    std::fs::remove_file(config.join("sidecar.yaml")).unwrap();
    let d = || m.diag();
    poll("Envoy to get the DNS host back", WAIT, &d, |last| {
        let counts = dns_client.tally(1, "dns.example.com", &[]);
        *last = format!("{counts:?}");
        counts.contains_key("dns").then_some(())
    });
    m.assert_synced();
    eprintln!("ServiceEntry STATIC + WorkloadEntries, DNS, Sidecar scoping: passed in {:?}", t0.elapsed());
}
