//! Generates the server side of `envoy.service.discovery.v3.AggregatedDiscoveryService`
//! (and of the legacy MCP services, `istio.mcp.v1alpha1`) with Keelson's own codec: requests decode as envoy-types messages, while
//! responses are written from shared, pre-encoded bytes (see src/xds/wire.rs).
//! envoy-types' generated server would take owned `DiscoveryResponse`s and
//! re-encode every resource for every stream.

use tonic_build::manual::{Builder, Method, Service};

fn main() {
    let discovery = "::keelson_proto::envoy::pb::envoy::service::discovery::v3";
    let method = |name: &str, route: &str, input: &str, codec: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(if input.contains("::") { input.to_string() } else { format!("{discovery}::{input}") })
            .output_type("crate::xds::wire::Outbound")
            .codec_path(format!("crate::xds::wire::{codec}"))
            .client_streaming()
            .server_streaming()
            .build()
    };
    let ads = Service::builder()
        .name("AggregatedDiscoveryService")
        .package("envoy.service.discovery.v3")
        .method(method(
            "stream_aggregated_resources",
            "StreamAggregatedResources",
            "crate::xds::wire::SotwRequest",
            "SotwCodec",
        ))
        .method(method("delta_aggregated_resources", "DeltaAggregatedResources", "DeltaDiscoveryRequest", "DeltaCodec"))
        .build();
    // Legacy Galley MCP (istio.mcp.v1alpha1; src/xds/legacy.rs), same codec.
    let mcp = |input: &str| format!("::keelson_proto::mcp::{input}");
    let mesh_config = Service::builder()
        .name("AggregatedMeshConfigService")
        .package("istio.mcp.v1alpha1")
        .method(method(
            "stream_aggregated_resources",
            "StreamAggregatedResources",
            &mcp("MeshConfigRequest"),
            "MeshConfigCodec",
        ))
        .method(method(
            "incremental_aggregated_resources",
            "IncrementalAggregatedResources",
            &mcp("IncrementalMeshConfigRequest"),
            "IncrementalMeshConfigCodec",
        ))
        .build();
    let resource_source = Service::builder()
        .name("ResourceSource")
        .package("istio.mcp.v1alpha1")
        .method(method(
            "establish_resource_stream",
            "EstablishResourceStream",
            &mcp("RequestResources"),
            "ResourceSourceCodec",
        ))
        .build();
    Builder::new().build_client(false).build_transport(false).compile(&[ads, mesh_config, resource_source]);
}
