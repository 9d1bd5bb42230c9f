//! A cluster made server-side for load tests: Namespaces, Nodes, Services with their
//! EndpointSlices and Pods, and Istio VirtualServices, shaped like what a real cluster
//! returns (controller-set labels, ownerReferences, status noise), all deterministic
//! (names, uids and IPs follow from indexes), so two fakes generate the same cluster.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::store::{Store, StoreError};

/// The time in the generated status noise (conditions, start times). Fixed, so that
/// generating the same cluster again is a no-op, as re-applying unchanged objects is.
const GENERATED_AT: &str = "2026-01-01T00:00:00Z";

/// What to make; every field is optional in JSON.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct GenerateSpec {
    pub namespaces: usize,
    pub services: usize,
    pub slices_per_service: usize,
    pub pods_per_service: usize,
    pub endpoints_per_slice: usize,
    pub virtualservices: usize,
    pub nodes: usize,
}

impl Default for GenerateSpec {
    fn default() -> Self {
        GenerateSpec {
            namespaces: 2,
            services: 4,
            slices_per_service: 1,
            pods_per_service: 2,
            endpoints_per_slice: 2,
            virtualservices: 2,
            nodes: 3,
        }
    }
}

/// splitmix64: cheap, deterministic "randomness" for suffixes, uids and hashes.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn seed(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The alphabet of apimachinery's `rand.String` (no vowels, no look-alikes), as in
/// generated names like `reviews-7d9f8b6c4-x2kq9`.
fn suffix(x: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..len).map(|i| char::from(ALPHABET[(mix(x + i as u64) % ALPHABET.len() as u64) as usize])).collect()
}

fn uid(parts: &[&str]) -> String {
    let (a, b) = (mix(seed(parts)), mix(seed(parts) ^ 0x5555));
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn ip(first: u8, base: u8, n: usize) -> String {
    format!("{first}.{}.{}.{}", usize::from(base) + (n >> 16), (n >> 8) & 255, n & 255)
}

fn zone_of(node: usize) -> (String, String) {
    let region = if node % 6 < 3 { "us-east-1" } else { "us-west-2" };
    (region.to_owned(), format!("{region}{}", ["a", "b", "c"][node % 3]))
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, "istio-injection": "enabled"}},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

fn node(n: usize, now: &str) -> Value {
    let name = format!("node-{n}");
    let (region, zone) = zone_of(n);
    let address = ip(10, 0, n + 1);
    json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "m5.xlarge",
            "topology.kubernetes.io/region": region, "topology.kubernetes.io/zone": zone}},
        "spec": {"podCIDR": format!("10.244.{}.0/24", n % 256), "providerID": format!("aws:///{zone}/i-{:017x}", mix(n as u64) >> 4)},
        "status": {
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "capacity": {"cpu": "4", "memory": "16148172Ki", "pods": "110"},
            "allocatable": {"cpu": "3920m", "memory": "15131340Ki", "pods": "110"},
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory", "lastHeartbeatTime": now, "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status", "lastHeartbeatTime": now, "lastTransitionTime": now}],
            "nodeInfo": {"kubeletVersion": "v1.34.0", "containerRuntimeVersion": "containerd://2.1.4",
                "osImage": "Debian GNU/Linux 13 (trixie)", "architecture": "amd64", "operatingSystem": "linux"}}})
}

struct Svc {
    ns: String,
    name: String,
    uid: String,
    two_ports: bool,
}

fn service(i: usize, s: &Svc) -> Value {
    let cluster_ip = ip(10, 96, i + 1);
    let mut ports = vec![json!({"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080})];
    if s.two_ports {
        ports.push(json!({"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9090, "appProtocol": "grpc"}));
    }
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": s.name, "namespace": s.ns, "uid": s.uid, "labels": {"app": s.name}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack", "selector": {"app": s.name}, "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster", "ports": ports},
        "status": {"loadBalancer": {}}})
}

struct PodRef {
    name: String,
    uid: String,
    ip: String,
    node: usize,
}

fn pod(s: &Svc, p: &PodRef, rs: &str, now: &str, nodes: usize) -> Value {
    let node_name = format!("node-{}", p.node % nodes);
    let host_ip = ip(10, 0, p.node % nodes + 1);
    let image = "registry.example.com/shop/app:1.4.2";
    let h = mix(seed(&[&p.uid]));
    let ready = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": s.ns, "uid": p.uid, "generateName": format!("{rs}-"),
            "labels": {"app": s.name, "version": "v1", "pod-template-hash": rs.rsplit('-').next()},
            "annotations": {"kubectl.kubernetes.io/restartedAt": now},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": uid(&[&s.ns, rs]),
                "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"nodeName": node_name, "serviceAccountName": "default", "restartPolicy": "Always",
            "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler",
            "containers": [{"name": "app", "image": image, "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 10}}]},
        "status": {"phase": "Running", "podIP": p.ip, "podIPs": [{"ip": p.ip}], "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}], "qosClass": "Burstable", "startTime": now,
            "conditions": [ready("PodReadyToStartContainers"), ready("Initialized"), ready("Ready"),
                ready("ContainersReady"), ready("PodScheduled")],
            "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
                "image": image, "imageID": format!("registry.example.com/shop/app@sha256:{:016x}{:016x}{:016x}{:016x}", h, mix(h), mix(h + 1), mix(h + 2)),
                "containerID": format!("containerd://{:016x}{:016x}{:016x}{:016x}", mix(h + 3), mix(h + 4), mix(h + 5), mix(h + 6)),
                "state": {"running": {"startedAt": now}}, "lastState": {}}]}})
}

/// What `generate` made, per kind, and the store's RV after it.
pub fn generate(store: &Store, spec: &GenerateSpec) -> Result<Value, StoreError> {
    let now = GENERATED_AT;
    let namespaces = spec.namespaces.max(1);
    let nodes = spec.nodes.max(1);
    let ns_names: Vec<String> = (0..namespaces).map(|n| format!("ns-{n}")).collect();
    let mut changed = store.bulk_load_as(ns_names.iter().map(|n| namespace(n)).collect(), "kubectl-create")?;
    changed += store.bulk_load_as((0..nodes).map(|n| node(n, now)).collect(), "kubelet")?;

    let svcs: Vec<Svc> = (0..spec.services)
        .map(|i| {
            let (ns, name) = (ns_names[i % namespaces].clone(), format!("svc-{i}"));
            Svc { uid: uid(&["Service", &ns, &name]), ns, name, two_ports: i % 2 == 1 }
        })
        .collect();
    changed += store
        .bulk_load_as(svcs.iter().enumerate().map(|(i, s)| service(i, s)).collect(), "kubectl-client-side-apply")?;

    let (mut pods, mut slices) = (Vec::new(), Vec::new());
    let mut endpoint_serial = 0usize;
    for (i, s) in svcs.iter().enumerate() {
        let rs = format!("{}-{}", s.name, suffix(seed(&[&s.ns, &s.name]), 9));
        let refs: Vec<PodRef> = (0..spec.pods_per_service)
            .map(|k| {
                let global = i * spec.pods_per_service + k;
                let name = format!("{rs}-{}", suffix(seed(&[&rs]) + k as u64 * 7, 5));
                PodRef { uid: uid(&["Pod", &s.ns, &name]), ip: ip(10, 128, global + 1), name, node: global }
            })
            .collect();
        pods.extend(refs.iter().map(|p| pod(s, p, &rs, now, nodes)));
        for j in 0..spec.slices_per_service {
            let endpoints: Vec<Value> = (0..spec.endpoints_per_slice)
                .map(|e| {
                    let idx = j * spec.endpoints_per_slice + e;
                    let (address, node, target) = match refs.get(idx % refs.len().max(1)) {
                        Some(p) => (p.ip.clone(), p.node % nodes, Some(p)),
                        None => {
                            endpoint_serial += 1;
                            (ip(10, 200, endpoint_serial), idx % nodes, None)
                        }
                    };
                    let mut ep = json!({"addresses": [address],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "nodeName": format!("node-{node}"), "zone": zone_of(node).1});
                    if let Some(p) = target {
                        ep["targetRef"] = json!({"kind": "Pod", "namespace": s.ns, "name": p.name, "uid": p.uid});
                    }
                    ep
                })
                .collect();
            let mut ports = vec![json!({"name": "http", "port": 8080, "protocol": "TCP"})];
            if s.two_ports {
                ports.push(json!({"name": "grpc", "port": 9090, "protocol": "TCP", "appProtocol": "grpc"}));
            }
            let name = format!("{}-{}", s.name, suffix(seed(&[&s.ns, &s.name]) + 1000 + j as u64 * 13, 5));
            slices.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": s.ns, "generateName": format!("{}-", s.name),
                    "labels": {"kubernetes.io/service-name": s.name, "app": s.name,
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                    "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now},
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": s.name, "uid": s.uid,
                        "controller": true, "blockOwnerDeletion": true}]},
                "addressType": "IPv4", "endpoints": endpoints, "ports": ports}));
        }
    }
    let (n_pods, n_slices) = (pods.len(), slices.len());
    changed += store.bulk_load_as(pods, "kubelet")?;
    changed += store.bulk_load_as(slices, "kube-controller-manager")?;

    let vss: Vec<Value> = (0..spec.virtualservices)
        .map(|v| {
            let target = svcs.get(v % svcs.len().max(1));
            let (ns, svc) = target.map_or(("ns-0", "svc-0"), |s| (s.ns.as_str(), s.name.as_str()));
            let host = format!("{svc}.{ns}.svc.cluster.local");
            json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                "metadata": {"name": format!("vs-{v}"), "namespace": ns},
                "spec": {"hosts": [host], "http": [{"name": "primary",
                    "match": [{"uri": {"prefix": format!("/v{}/", v / svcs.len().max(1))}}],
                    "route": [{"destination": {"host": host, "port": {"number": 80}}, "weight": 100}],
                    "timeout": "5s", "retries": {"attempts": 3, "perTryTimeout": "2s"}}]}})
        })
        .collect();
    changed += store.bulk_load_as(vss, "kubectl-client-side-apply")?;
    Ok(json!({
        "namespaces": namespaces, "nodes": nodes, "services": svcs.len(), "endpointslices": n_slices,
        "pods": n_pods, "virtualservices": spec.virtualservices, "changed": changed,
        "resourceVersion": store.resource_version().to_string(),
    }))
}
