//! The form of a cluster proxyless gRPC can take (PROTOCOL.md §5, §8;
//! istiod builds its gRPC clusters apart, `grpcgen/cds.go`). Envoy and gRPC
//! ask for clusters by the same names, so a cluster gRPC would reject gets
//! a gRPC form under the same name, keyed in the namespace [`NAMESPACE`]
//! (no Kubernetes namespace can be named so) and served to gRPC clients
//! only; the Envoy form is then served to every other client.
//!
//! What gRPC rejects, as the real clients here say (Python grpcio's C-core
//! and @grpc/grpc-js-xds, NACKing the whole cluster):
//! - `lb_policy: MAGLEV` ("LB policy is not supported"): gRPC gets
//!   RING_HASH, the other consistent hash it implements (gRFC A42), with
//!   the route's same hash policy;
//! - `type: STRICT_DNS` (a DNS ServiceEntry): gRPC resolves one name per
//!   cluster, `LOGICAL_DNS` (gRFC A37), so its form keeps the first endpoint;
//! - an UpstreamTlsContext with file paths ("no CA certs configured",
//!   "ca_certificate_provider_instance unset"): gRPC reads certificates
//!   only through the certificate providers of its bootstrap (gRFC A29), so
//!   its form names the provider instance [`CERTIFICATE_PROVIDER`], which
//!   the client's bootstrap must define (docs/translation.md). Never a form
//!   without TLS: that would send in clear what the rule says to encrypt.

use serde_json::{Value, json};

/// The key namespace of gRPC forms.
pub const NAMESPACE: &str = "~grpc";
/// The certificate provider instance gRPC forms of TLS clusters name.
pub const CERTIFICATE_PROVIDER: &str = "keelson";

/// The gRPC form of an Envoy Cluster, if it must differ.
pub fn cluster_form(envoy: &Value) -> Option<Value> {
    let mut c = envoy.clone();
    let mut changed = false;
    if c["lb_policy"] == "MAGLEV" {
        c["lb_policy"] = json!("RING_HASH");
        if let Some(o) = c.as_object_mut() {
            o.remove("maglev_lb_config");
        }
        changed = true;
    }
    if let Some(tls) = c.pointer_mut("/transport_socket/typed_config") {
        changed |= certificate_providers(tls);
    }
    if c["type"] == "STRICT_DNS" {
        // gRPC resolves one name per cluster (LOGICAL_DNS, gRFC A37): the
        // first endpoint's, with its port.
        c["type"] = json!("LOGICAL_DNS");
        let first = c.pointer("/load_assignment/endpoints/0").cloned().map(|mut group| {
            if let Some(eps) = group.get_mut("lb_endpoints").and_then(Value::as_array_mut) {
                eps.truncate(1);
            }
            group
        });
        c["load_assignment"]["endpoints"] = json!(first.into_iter().collect::<Vec<_>>());
        changed = true;
    }
    changed.then_some(c)
}

/// Replaces file paths in an UpstreamTlsContext with the certificate
/// provider instance; true if it had any.
fn certificate_providers(tls: &mut Value) -> bool {
    let Some(common) = tls.get_mut("common_tls_context").and_then(Value::as_object_mut) else { return false };
    let provider = json!({ "instance_name": CERTIFICATE_PROVIDER });
    let mut changed = false;
    if common.remove("tls_certificates").is_some() {
        common.insert("tls_certificate_provider_instance".into(), provider.clone());
        changed = true;
    }
    if let Some(validation) = common.get_mut("validation_context").and_then(Value::as_object_mut)
        && validation.remove("trusted_ca").is_some()
    {
        validation.insert("ca_certificate_provider_instance".into(), provider);
        changed = true;
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_becomes_ring_hash_and_tls_files_become_the_provider() {
        let envoy = json!({ "name": "c", "lb_policy": "MAGLEV", "maglev_lb_config": { "table_size": 65537 },
            "transport_socket": { "name": "envoy.transport_sockets.tls", "typed_config": {
                "common_tls_context": {
                    "tls_certificates": [{ "certificate_chain": { "filename": "/c.pem" }, "private_key": { "filename": "/k.pem" } }],
                    "validation_context": { "trusted_ca": { "filename": "/ca.pem" }, "match_subject_alt_names": [{ "exact": "a" }] } },
                "sni": "a" } } });
        let grpc = cluster_form(&envoy).unwrap();
        assert_eq!(grpc["lb_policy"], "RING_HASH");
        assert!(grpc.get("maglev_lb_config").is_none());
        let common = &grpc["transport_socket"]["typed_config"]["common_tls_context"];
        assert_eq!(common["tls_certificate_provider_instance"]["instance_name"], CERTIFICATE_PROVIDER);
        assert_eq!(
            common["validation_context"]["ca_certificate_provider_instance"]["instance_name"],
            CERTIFICATE_PROVIDER
        );
        assert!(common.get("tls_certificates").is_none() && common["validation_context"].get("trusted_ca").is_none());
        assert_eq!(common["validation_context"]["match_subject_alt_names"][0]["exact"], "a", "checks kept");
        assert!(cluster_form(&json!({ "name": "c", "lb_policy": "RING_HASH" })).is_none(), "nothing to change");
    }
}
