//! The per-port resources sidecars share: one outbound listener and one
//! route table per service port, gathering the virtual hosts of every
//! service on it (istiod's `0.0.0.0_<port>` listener and `<port>` routes),
//! and, for namespaces a Sidecar scopes, a route table of the port holding
//! only the hosts they see (crate::translate::visibility).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::json;

use super::unit::{self, Derived};
use super::visibility::Visible;
use super::{Inputs, Translator, cluster, listener, scope};
use crate::event::ResourceKey;
use crate::kinds::ENVOY_GROUP;
use crate::state::State;

impl Translator {
    /// Rebuilds the outbound listener and route table of one port. The
    /// table is the virtual hosts' encoded bytes laid end to end: one
    /// VirtualService change costs a copy of the table, not a transcode of
    /// every service on the port.
    pub(super) fn rebuild_port(&mut self, state: &State, port: u32) -> Vec<ResourceKey> {
        let mut tcp_clusters = Vec::new();
        let mut listener_inputs = Inputs::default();
        listener_inputs.scope(state, &scope::service_port(port));
        let members = self.ports.entry(port).or_default();
        let gathered = members
            .gathered
            .get_or_insert_with(|| {
                let names: Vec<&str> = members.vhosts.keys().map(|n| &**n).collect();
                let json = serde_json::to_string(&names).expect("names serialize");
                Arc::from(serde_json::value::RawValue::from_string(json).expect("valid JSON"))
            })
            .clone();
        let members = &self.ports[&port];
        for (version, http, host) in members.services.values() {
            listener_inputs.version = listener_inputs.version.max(*version);
            if !http {
                tcp_clusters.push(cluster::cluster_name(port, "", host));
            }
        }
        tcp_clusters.sort();
        let vhosts: Vec<&unit::VirtualHost> = members.vhosts.values().map(|v| &**v).collect();
        let mut route_inputs = listener_inputs.clone();
        for v in &vhosts {
            route_inputs.version = route_inputs.version.max(v.version);
        }
        let table = (!vhosts.is_empty()).then(|| route_table(&port.to_string(), &vhosts));
        let address = self.cfg.outbound_address.clone();
        let owner = format!("port {port}");
        let known = self.warnings.remove(&owner).unwrap_or_default();
        let listener_key = ResourceKey::new(ENVOY_GROUP, "Listener", "", &listener::outbound_name(&address, port));
        let route_key = ResourceKey::new(ENVOY_GROUP, "RouteConfiguration", "", &port.to_string());
        let mut wanted = Vec::new();
        let derived = |key: &ResourceKey, spec, inputs, gathers: Option<Arc<serde_json::value::RawValue>>, encoded| {
            Derived { gathers, encoded, ..Derived::new(key.clone(), spec, inputs) }
        };
        if let Some(table) = table {
            let spec = json!({ "name": port.to_string(), "validate_clusters": false });
            let mut table = derived(&route_key, spec, route_inputs, Some(gathered), Some(table));
            table.visible = Visible::Unscoped;
            wanted.push(table);
            if !tcp_clusters.is_empty() {
                let m = format!(
                    "port {port} has HTTP and TCP services; the TCP ones ({}) get no outbound listener",
                    tcp_clusters.join(", ")
                );
                self.warn(&owner, listener_key.clone(), vec![m], &known);
            }
            wanted.push(derived(&listener_key, listener::outbound_http(&address, port), listener_inputs, None, None));
        } else if let Some(first) = tcp_clusters.first() {
            if tcp_clusters.len() > 1 {
                let m = format!("port {port} has several TCP services; its listener proxies to {first} only");
                self.warn(&owner, listener_key.clone(), vec![m], &known);
            }
            let spec = listener::outbound_tcp(&address, port, first);
            let only = serde_json::value::to_raw_value(&[first]).expect("a name serializes");
            wanted.push(derived(&listener_key, spec, listener_inputs, Some(Arc::from(only)), None));
        }
        for d in &mut wanted {
            if d.key.kind == "Listener" {
                d.visible = Visible::Port(port);
            }
        }
        let mut changed = Vec::new();
        let mut present = BTreeSet::new();
        for d in wanted {
            let k = d.key.clone();
            let prev = self.aggregates.get(&k).cloned();
            present.insert(k.clone());
            match self.encode(&owner, d, prev.as_ref()) {
                Some(e) => {
                    if prev.as_ref().is_none_or(|p| !Arc::ptr_eq(p, &e)) {
                        changed.push(k.clone());
                    }
                    self.aggregates.insert(k, e);
                }
                None => {
                    if self.aggregates.remove(&k).is_some() {
                        changed.push(k);
                    }
                }
            }
        }
        for k in [listener_key, route_key] {
            if !present.contains(&k) && self.aggregates.remove(&k).is_some() {
                changed.push(k);
            }
        }
        changed
    }
}

/// A RouteConfiguration `{name, virtual_hosts, validate_clusters: false}`
/// as an encoded `Any`, from its virtual hosts' encodings (fields in number
/// order: name = 1, virtual_hosts = 2, validate_clusters = 7).
pub(super) fn route_table(name: &str, vhosts: &[&unit::VirtualHost]) -> bytes::Bytes {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
    const TYPE_URL: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let value_len = field(name.len()) + vhosts.iter().map(|v| field(v.encoded.len())).sum::<usize>() + field(0);
    // The Any around it, written in place: type_url = 1, value = 2.
    let mut buf = Vec::with_capacity(field(TYPE_URL.len()) + field(value_len));
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(TYPE_URL.len() as u64, &mut buf);
    buf.extend_from_slice(TYPE_URL.as_bytes());
    encode_key(2, WireType::LengthDelimited, &mut buf);
    encode_varint(value_len as u64, &mut buf);
    encode_key(1, WireType::LengthDelimited, &mut buf);
    encode_varint(name.len() as u64, &mut buf);
    buf.extend_from_slice(name.as_bytes());
    for v in vhosts {
        encode_key(2, WireType::LengthDelimited, &mut buf);
        encode_varint(v.encoded.len() as u64, &mut buf);
        buf.extend_from_slice(&v.encoded);
    }
    // BoolValue{value: false}: the wrapper present, its value the default.
    encode_key(7, WireType::LengthDelimited, &mut buf);
    encode_varint(0, &mut buf);
    bytes::Bytes::from(buf)
}
