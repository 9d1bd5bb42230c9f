//! Protobuf types used across Keelson.
//!
//! * [`envoy`]: the Envoy xDS messages and services, re-exported from `envoy-types`.
//! * [`log`]: the payload schema of Keelson's event log (a durable contract).
//! * [`mcp`]: Istio MCP's `Resource` and `Metadata`.
//! * [`xds`]: wire-compatible, pre-encoded response messages for serialized-once sends.
#![forbid(unsafe_code)]

pub use envoy_types as envoy;

/// Keelson's event log payload schema, `keelson.log.v1`.
pub mod log {
    include!(concat!(env!("OUT_DIR"), "/keelson.log.v1.rs"));
}

/// Istio MCP, `istio.mcp.v1alpha1`.
pub mod mcp {
    include!(concat!(env!("OUT_DIR"), "/istio.mcp.v1alpha1.rs"));
}

/// Descriptors of every message Keelson transcodes: the Envoy resource types
/// (from the `.proto` sources envoy-types ships) and the Istio kinds (the
/// project's own `.proto` files under `proto/istio`), with everything they
/// reference, compiled at build time into one pool. Used to transcode the
/// proto3 JSON users write into protobuf, and back.
pub fn descriptors() -> &'static prost_reflect::DescriptorPool {
    static POOL: std::sync::OnceLock<prost_reflect::DescriptorPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        prost_reflect::DescriptorPool::decode(descriptor_set()).expect("descriptor set built by build.rs decodes")
    })
}

/// The encoded descriptor set behind [`descriptors`], for gRPC reflection.
pub fn descriptor_set() -> &'static [u8] {
    include_bytes!(concat!(env!("OUT_DIR"), "/descriptor_set.bin"))
}

/// Pre-encoded xDS responses, `keelson.xds.v1`.
pub mod xds {
    include!(concat!(env!("OUT_DIR"), "/keelson.xds.v1.rs"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy::pb::envoy::service::discovery::v3::DiscoveryResponse;
    use envoy::pb::google::protobuf::Any;
    use prost::Message;

    /// The pre-encoded response must decode as Envoy's own DiscoveryResponse:
    /// that is what every proxy will do with it.
    #[test]
    fn pre_encoded_response_is_a_discovery_response_on_the_wire() {
        let any = Any {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            value: vec![10, 3, b'f', b'o', b'o'],
        };
        let resp = xds::PreEncodedDiscoveryResponse {
            version_info: "42".into(),
            resources: vec![any.encode_to_vec().into()],
            type_url: any.type_url.clone(),
            nonce: "7".into(),
        };
        let decoded = DiscoveryResponse::decode(resp.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded.version_info, "42");
        assert_eq!(decoded.nonce, "7");
        assert_eq!(decoded.type_url, any.type_url);
        assert_eq!(decoded.resources, vec![any]);
    }

    #[test]
    fn envoy_descriptors_hold_the_resource_types() {
        let pool = descriptors();
        for name in [
            "envoy.config.cluster.v3.Cluster",
            "envoy.config.listener.v3.Listener",
            "envoy.config.route.v3.RouteConfiguration",
            "envoy.config.endpoint.v3.ClusterLoadAssignment",
            "envoy.extensions.transport_sockets.tls.v3.Secret",
            "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "envoy.extensions.filters.http.router.v3.Router",
        ] {
            assert!(pool.get_message_by_name(name).is_some(), "{name} missing");
        }
    }

    #[test]
    fn log_event_round_trips() {
        let ev = log::LogEvent {
            origin: Some(log::Origin {
                kind: log::SourceKind::File as i32,
                name: "quickstart".into(),
                cluster: String::new(),
            }),
            op: Some(log::log_event::Op::Nack(log::Nack {
                node: "sidecar~1".into(),
                type_url: "t".into(),
                version: "9".into(),
                error: "bad".into(),
            })),
        };
        let back = log::LogEvent::decode(ev.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, ev);
    }
}
