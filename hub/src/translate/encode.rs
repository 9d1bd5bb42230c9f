//! Encoding derived resources: once per version, the body a record of
//! what was built (marked derived, naming its inputs), the wire form an
//! `Any` (Envoy kinds) or an MCP Resource (the MCP registry's Istio kinds).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::unit::Derived;
use super::{BY_NAME_ANNOTATION, DERIVED_ANNOTATION, Translator, origin};
use crate::event::Body;
use crate::kinds::{self, ENVOY_GROUP};
use crate::state::ResourceEntry;

impl Translator {
    /// Encodes a derived resource, reusing `prev` when nothing changed.
    pub(super) fn encode(
        &mut self,
        owner: &str,
        d: Derived,
        prev: Option<&Arc<ResourceEntry>>,
    ) -> Option<Arc<ResourceEntry>> {
        let body = derived_body(&d);
        let same = |p: &&Arc<ResourceEntry>| {
            p.version == d.inputs.version
                && p.body.hash() == body.hash()
                && d.encoded.as_ref().is_none_or(|e| p.encoded.as_ref() == Some(e))
        };
        if let Some(p) = prev.filter(same) {
            return Some(p.clone());
        }
        if d.key.group != ENVOY_GROUP {
            // An Istio object (the MCP registry): encoded as a raw one is.
            let version = d.inputs.version;
            let mut entry = ResourceEntry::new(
                &d.key,
                version,
                body,
                origin(),
                String::new(),
                String::new(),
                std::time::UNIX_EPOCH,
            );
            entry.serving.visible = d.visible;
            if entry.encoded.is_none() {
                let blame = d.inputs.read.iter().next_back().cloned().unwrap_or(d.key.clone());
                let m = format!("derived {} {} cannot be encoded, so it is not served", d.key.kind, d.key.name);
                self.warn(owner, blame, vec![m], &BTreeMap::new());
                return None;
            }
            return Some(Arc::new(entry));
        }
        let info = kinds::lookup(ENVOY_GROUP, &d.key.kind).expect("derived kinds are Envoy kinds");
        // Straight from the spec built here (it names itself): the body is
        // its record, not parsed back.
        let encoded = match d.encoded.clone() {
            Some(bytes) => Ok(bytes),
            None => crate::transcode::encode_json(info.message().expect("an Envoy kind"), &d.spec)
                .map(|value| crate::transcode::encode_any(&info.type_url().expect("an Envoy kind"), &value))
                .map_err(|e| e.to_string()),
        };
        match encoded {
            Ok(encoded) => {
                let serving = crate::state::Serving {
                    by_name: d.by_name,
                    visible: d.visible,
                    clients: d.clients,
                    ..Default::default()
                };
                Some(Arc::new(ResourceEntry {
                    version: d.inputs.version,
                    body,
                    origin: origin(),
                    source_version: String::new(),
                    location: String::new(),
                    encoded: Some(encoded),
                    created_at: std::time::UNIX_EPOCH,
                    serving,
                }))
            }
            Err(error) => {
                let blame = d.inputs.read.iter().next_back().cloned().unwrap_or(d.key.clone());
                self.warn(
                    owner,
                    blame,
                    vec![format!(
                        "derived {} {} cannot be encoded, so it is not served: {error}",
                        d.key.kind, d.key.name
                    )],
                    &BTreeMap::new(),
                );
                None
            }
        }
    }
}

/// The body of a derived resource: an `xds.keelson.dev/v1` object like a
/// raw one, marked derived, naming its inputs. Serialized from borrowed
/// parts, fields in the sorted order the canonical form has (`Body`).
fn derived_body(d: &Derived) -> Body {
    #[derive(serde::Serialize)]
    struct Metadata<'a> {
        annotations: BTreeMap<&'static str, &'static str>,
        name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        namespace: &'a str,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Derived<'a> {
        api_version: &'static str,
        derived_from: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        gathers: Option<&'a serde_json::value::RawValue>,
        kind: &'a str,
        metadata: Metadata<'a>,
        spec: &'a serde_json::Value,
    }
    let mut annotations = BTreeMap::from([(DERIVED_ANNOTATION, "true")]);
    if d.by_name {
        annotations.insert(BY_NAME_ANNOTATION, "true");
    }
    // A port's table gathers the virtual hosts of every service on it:
    // named here (each comes from its service's inputs), its routes shown
    // by the service's own `outbound|…` route table.
    let derived_from =
        if d.gathers.is_none() { d.inputs.read.iter().map(ToString::to_string).collect() } else { Vec::new() };
    let api_version = match d.key.group.as_str() {
        ENVOY_GROUP => "xds.keelson.dev/v1",
        _ => "networking.istio.io/v1",
    };
    let body = Derived {
        api_version,
        derived_from,
        gathers: d.gathers.as_deref(),
        kind: &d.key.kind,
        metadata: Metadata { annotations, name: &d.key.name, namespace: &d.key.namespace },
        spec: &d.spec,
    };
    let json = serde_json::to_vec(&body).expect("a derived body always serializes");
    Body::from_canonical(bytes::Bytes::from(json))
}
