//! What a simulated Envoy reads out of the resources it receives: the names
//! it must subscribe to next (EDS names from clusters, RDS names from
//! listeners), after decoding every resource as Envoy would before an ACK.

use std::collections::BTreeSet;

use keelson_proto::envoy::pb::envoy::config::cluster::v3::Cluster;
use keelson_proto::envoy::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use keelson_proto::envoy::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use keelson_proto::envoy::pb::envoy::config::listener::v3::Listener;
use keelson_proto::envoy::pb::envoy::config::listener::v3::filter::ConfigType;
use keelson_proto::envoy::pb::envoy::config::route::v3::RouteConfiguration;
use keelson_proto::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use keelson_proto::envoy::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use keelson_proto::envoy::pb::google::protobuf::Any;
use prost::Message;

use super::Kind;

const HCM: &str =
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";

/// One decoded resource: its name and the names it references.
pub struct Decoded {
    pub name: String,
    pub refs: Vec<String>,
}

/// Decodes one resource of `kind`; an error is what Envoy would NACK.
pub fn decode(kind: Kind, value: &[u8]) -> Result<Decoded, prost::DecodeError> {
    Ok(match kind {
        Kind::Cds => {
            let c = Cluster::decode(value)?;
            let eds = matches!(c.cluster_discovery_type, Some(ClusterDiscoveryType::Type(t)) if t == DiscoveryType::Eds as i32);
            let service = c.eds_cluster_config.as_ref().map(|e| e.service_name.clone()).unwrap_or_default();
            let refs = if !eds {
                vec![]
            } else if service.is_empty() {
                vec![c.name.clone()]
            } else {
                vec![service]
            };
            Decoded { name: c.name, refs }
        }
        Kind::Lds => {
            let l = Listener::decode(value)?;
            let mut refs = BTreeSet::new();
            let filters = l.filter_chains.iter().flat_map(|fc| &fc.filters).filter_map(|f| match &f.config_type {
                Some(ConfigType::TypedConfig(any)) => Some(any),
                _ => None,
            });
            let api = l.api_listener.as_ref().and_then(|a| a.api_listener.as_ref());
            for any in filters.chain(api) {
                refs.extend(rds_name(any)?);
            }
            Decoded { name: l.name, refs: refs.into_iter().collect() }
        }
        Kind::Eds => Decoded { name: ClusterLoadAssignment::decode(value)?.cluster_name, refs: vec![] },
        Kind::Rds => Decoded { name: RouteConfiguration::decode(value)?.name, refs: vec![] },
        // Istio kinds are read by crate::istio; an Envoy session maps only
        // Envoy type URLs to kinds (Kind::of), so it never gets here.
        _ => Decoded { name: String::new(), refs: vec![] },
    })
}

fn rds_name(any: &Any) -> Result<Option<String>, prost::DecodeError> {
    if any.type_url != HCM {
        return Ok(None);
    }
    let hcm = HttpConnectionManager::decode(any.value.as_slice())?;
    Ok(match hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) => Some(rds.route_config_name),
        _ => None,
    })
}
