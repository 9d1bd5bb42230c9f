//! proto3 JSON ⇄ protobuf for every kind with a protobuf form (Envoy
//! resources and Istio kinds), with a canonical encoding.
//!
//! Users write Envoy resources the way Envoy's docs do (proto3 JSON, typed
//! `Any` with `@type`) and Istio specs the way istio.io does (lowerCamelCase;
//! proto3 JSON accepts both spellings). Both are transcoded with the one
//! descriptor pool compiled in `keelson-proto`; an unknown field, a bad enum
//! value or an `@type` outside the pool is an error that names its path.
//!
//! Encoding is made canonical: map entries sorted (prost-reflect keeps maps
//! in a `HashMap`, whose order changes from process to process), fields in
//! number order. So one resource version has one encoding, in every process:
//! `keelson state --at` reproduces what a hub served byte for byte.

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranscodeError {
    #[error("{message} is not a type Keelson has descriptors for")]
    UnknownMessage { message: String },
    #[error("spec is not a valid {message}: {reason}")]
    Invalid { message: String, reason: String },
}

fn descriptor(message: &str) -> Result<MessageDescriptor, TranscodeError> {
    keelson_proto::descriptors()
        .get_message_by_name(message)
        .ok_or_else(|| TranscodeError::UnknownMessage { message: message.to_string() })
}

/// Transcodes proto3 JSON into the message's canonical protobuf encoding.
pub fn encode_json(message: &str, json: &serde_json::Value) -> Result<Bytes, TranscodeError> {
    let desc = descriptor(message)?;
    // Track the path so an error names the field, not just the bad value.
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(json, &mut track);
    let dynamic =
        DynamicMessage::deserialize_with_options(desc.clone(), tracked, &DeserializeOptions::new()).map_err(|e| {
            let path = track.path().to_string();
            let reason = if path == "." { e.to_string() } else { format!("at {path}: {e}") };
            TranscodeError::Invalid { message: message.to_string(), reason }
        })?;
    Ok(canonical(&desc, &dynamic.encode_to_vec()))
}

/// [`encode_json`] for Istio specs, which may write durations the way Go
/// does (`5m`, `1h30m`, `100ms`): istiod reads them with the gogo/golang
/// jsonpb parsers, which take `time.ParseDuration` strings, and istio.io's
/// examples use them (`baseEjectionTime: 3m`). proto3 JSON takes only
/// seconds (`180s`), so such strings are rewritten first; anything that is
/// not a Go duration is left for the transcoder to reject with its path.
pub fn encode_istio_json(message: &str, json: &serde_json::Value) -> Result<Bytes, TranscodeError> {
    let desc = descriptor(message)?;
    let mut json = json.clone();
    seconds_for_go_durations(&desc, &mut json);
    encode_json(message, &json)
}

fn seconds_for_go_durations(desc: &MessageDescriptor, value: &mut serde_json::Value) {
    use prost_reflect::Kind;
    let serde_json::Value::Object(fields) = value else { return };
    for (name, v) in fields.iter_mut() {
        let Some(field) = desc.get_field_by_json_name(name).or_else(|| desc.get_field_by_name(name)) else { continue };
        let kind = if field.is_map() {
            match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                other => other,
            }
        } else {
            field.kind()
        };
        let Kind::Message(sub) = kind else { continue };
        let items: Vec<&mut serde_json::Value> = match v {
            serde_json::Value::Array(list) if field.is_list() => list.iter_mut().collect(),
            serde_json::Value::Object(map) if field.is_map() => map.values_mut().collect(),
            other => vec![other],
        };
        for item in items {
            if sub.full_name() == "google.protobuf.Duration" {
                if let Some(seconds) = item.as_str().and_then(go_duration_as_seconds) {
                    *item = serde_json::Value::String(seconds);
                }
            } else {
                seconds_for_go_durations(&sub, item);
            }
        }
    }
}

/// A Go `time.ParseDuration` string as proto3 JSON seconds (`1m30s` →
/// `90s`), or `None` if it is not one.
fn go_duration_as_seconds(text: &str) -> Option<String> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    if rest == "0" {
        rest = "";
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut part = whole.checked_mul(scale)?;
        let mut place = scale;
        for d in fraction.chars() {
            place /= 10;
            part += u128::from(d.to_digit(10)?) * place;
        }
        nanos = nanos.checked_add(part)?;
        rest = tail;
    }
    let (secs, sub) = (nanos / 1_000_000_000, nanos % 1_000_000_000);
    let sign = if negative && nanos > 0 { "-" } else { "" };
    Some(if sub == 0 {
        format!("{sign}{secs}s")
    } else {
        format!("{sign}{secs}.{}s", format!("{sub:09}").trim_end_matches('0'))
    })
}

/// `google.protobuf.Any { type_url, value }`, encoded.
pub fn encode_any(type_url: &str, value: &[u8]) -> Bytes {
    let any = prost_types::Any { type_url: type_url.to_string(), value: value.to_vec() };
    Bytes::from(any.encode_to_vec())
}

/// Protobuf back to proto3 JSON, as users wrote it (snake_case field names).
pub fn decode_to_json(message: &str, bytes: &[u8]) -> Result<serde_json::Value, TranscodeError> {
    let desc = descriptor(message)?;
    let invalid = |reason: String| TranscodeError::Invalid { message: message.to_string(), reason };
    let dynamic = DynamicMessage::decode(desc, bytes).map_err(|e| invalid(e.to_string()))?;
    let opts = SerializeOptions::new().use_proto_field_name(true).stringify_64_bit_integers(false);
    dynamic.serialize_with_options(serde_json::value::Serializer, &opts).map_err(|e| invalid(e.to_string()))
}

/// Re-encodes `bytes` (a valid encoding of `desc`) with every map's entries
/// sorted, recursing into nested messages and into `Any` payloads whose type
/// the pool knows.
fn canonical(desc: &MessageDescriptor, bytes: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(bytes.len());
    write_canonical(desc, bytes, &mut out);
    Bytes::from(out)
}

/// One wire field: number, wire type, and its whole encoding (tag included).
struct WireField<'a> {
    number: u32,
    wire_type: u8,
    raw: &'a [u8],
    payload: &'a [u8],
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn next_field<'a>(buf: &'a [u8], pos: &mut usize) -> Option<WireField<'a>> {
    let start = *pos;
    let tag = read_varint(buf, pos)?;
    let (number, wire_type) = ((tag >> 3) as u32, (tag & 7) as u8);
    let payload_start;
    match wire_type {
        0 => {
            payload_start = *pos;
            read_varint(buf, pos)?;
        }
        1 => {
            payload_start = *pos;
            *pos += 8;
        }
        2 => {
            let len = read_varint(buf, pos)? as usize;
            payload_start = *pos;
            *pos += len;
        }
        5 => {
            payload_start = *pos;
            *pos += 4;
        }
        _ => return None, // groups are not used by Envoy's protos
    }
    (*pos <= buf.len()).then(|| WireField {
        number,
        wire_type,
        raw: &buf[start..*pos],
        payload: &buf[payload_start..*pos],
    })
}

fn write_len_delimited(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

fn write_canonical(desc: &MessageDescriptor, bytes: &[u8], out: &mut Vec<u8>) {
    let is_any = desc.full_name() == "google.protobuf.Any";
    let any_type = is_any.then(|| any_type_url(bytes)).flatten();
    let mut pos = 0;
    let mut pending_map: Option<(u32, Vec<Vec<u8>>)> = None;
    let flush_map = |pending: &mut Option<(u32, Vec<Vec<u8>>)>, out: &mut Vec<u8>| {
        if let Some((number, mut entries)) = pending.take() {
            entries.sort();
            for e in entries {
                write_len_delimited(out, number, &e);
            }
        }
    };
    while pos < bytes.len() {
        let Some(f) = next_field(bytes, &mut pos) else {
            // Not a valid encoding: keep the rest as it is rather than lose it.
            out.extend_from_slice(&bytes[pos.min(bytes.len())..]);
            break;
        };
        let field = desc.get_field(f.number);
        let message_kind = field.as_ref().and_then(|fd| fd.kind().as_message().cloned());
        match (&field, message_kind, f.wire_type) {
            (Some(fd), Some(entry_desc), 2) if fd.is_map() => {
                let mut entry = Vec::with_capacity(f.payload.len());
                write_canonical(&entry_desc, f.payload, &mut entry);
                match &mut pending_map {
                    Some((n, entries)) if *n == f.number => entries.push(entry),
                    _ => {
                        flush_map(&mut pending_map, out);
                        pending_map = Some((f.number, vec![entry]));
                    }
                }
                continue;
            }
            (Some(_), Some(sub), 2) => {
                flush_map(&mut pending_map, out);
                let mut inner = Vec::with_capacity(f.payload.len());
                write_canonical(&sub, f.payload, &mut inner);
                write_len_delimited(out, f.number, &inner);
            }
            _ if is_any && f.number == 2 && f.wire_type == 2 => {
                flush_map(&mut pending_map, out);
                match any_type.as_deref().and_then(|t| keelson_proto::descriptors().get_message_by_name(t)) {
                    Some(sub) => {
                        let mut inner = Vec::with_capacity(f.payload.len());
                        write_canonical(&sub, f.payload, &mut inner);
                        write_len_delimited(out, 2, &inner);
                    }
                    None => out.extend_from_slice(f.raw),
                }
            }
            _ => {
                flush_map(&mut pending_map, out);
                out.extend_from_slice(f.raw);
            }
        }
    }
    flush_map(&mut pending_map, out);
}

/// The message name an encoded `Any` names in its type_url (field 1).
fn any_type_url(bytes: &[u8]) -> Option<String> {
    let mut pos = 0;
    while pos < bytes.len() {
        let f = next_field(bytes, &mut pos)?;
        if f.number == 1 && f.wire_type == 2 {
            let url = std::str::from_utf8(f.payload).ok()?;
            return Some(url.rsplit('/').next()?.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types_check::*;

    mod envoy_types_check {
        pub use keelson_proto::envoy::pb::envoy::config::cluster::v3::Cluster;
        pub use keelson_proto::envoy::pb::envoy::config::listener::v3::Listener;
    }

    const CLUSTER: &str = "envoy.config.cluster.v3.Cluster";

    #[test]
    fn a_cluster_transcodes_into_what_envoy_types_decodes() {
        let json = serde_json::json!({
            "name": "reviews", "type": "EDS", "connect_timeout": "1s",
            "eds_cluster_config": { "eds_config": { "ads": {}, "resource_api_version": "V3" } }
        });
        let bytes = encode_json(CLUSTER, &json).unwrap();
        let c = Cluster::decode(bytes.as_ref()).unwrap();
        assert_eq!(c.name, "reviews");
        assert_eq!(c.connect_timeout.unwrap().seconds, 1);
        let back = decode_to_json(CLUSTER, &bytes).unwrap();
        assert_eq!(back["name"], "reviews");
        assert_eq!(back["type"], "EDS");
    }

    #[test]
    fn typed_any_inside_a_listener_is_resolved() {
        let json = serde_json::json!({
            "name": "l", "address": { "socket_address": { "address": "127.0.0.1", "port_value": 10000 } },
            "filter_chains": [{ "filters": [{ "name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": "x",
                "route_config": { "name": "r" },
                "http_filters": [{ "name": "router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" } }]
            } }] }]
        });
        let bytes = encode_json("envoy.config.listener.v3.Listener", &json).unwrap();
        let l = Listener::decode(bytes.as_ref()).unwrap();
        let any = l.filter_chains[0].filters[0].config_type.clone().unwrap();
        let keelson_proto::envoy::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any) = any else {
            panic!("typed_config expected")
        };
        assert!(any.type_url.ends_with("HttpConnectionManager"));
    }

    #[test]
    fn errors_name_the_problem() {
        let err = encode_json(CLUSTER, &serde_json::json!({ "name": "c", "connect_timeout": "soon" })).unwrap_err();
        assert!(err.to_string().contains("connect_timeout") || err.to_string().contains("duration"), "{err}");
        let err = encode_json(CLUSTER, &serde_json::json!({ "nmae": "c" })).unwrap_err();
        assert!(err.to_string().contains("nmae"), "{err}");
        let err = encode_json(
            "envoy.config.listener.v3.Listener",
            &serde_json::json!({ "name": "l", "filter_chains": [{ "filters": [{ "name": "f", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.nope.v3.Nope" } }] }] }),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn go_durations_become_proto3_seconds() {
        for (go, proto) in [
            ("5m", "300s"),
            ("1h30m", "5400s"),
            ("100ms", "0.1s"),
            ("1.5s", "1.5s"),
            ("0", "0s"),
            ("-2m", "-120s"),
            ("250us", "0.00025s"),
        ] {
            assert_eq!(go_duration_as_seconds(go).as_deref(), Some(proto), "{go}");
        }
        for bad in ["", "5", "soon", "5x", "1.2.3s", "m"] {
            assert_eq!(go_duration_as_seconds(bad), None, "{bad}");
        }
    }

    #[test]
    fn maps_encode_the_same_whatever_their_insertion_order() {
        // Many map entries so that a HashMap's order differs between builds of it.
        let mut fields = serde_json::Map::new();
        for i in 0..32 {
            fields.insert(format!("k{i}"), serde_json::json!(format!("v{i}")));
        }
        let json = serde_json::json!({ "name": "c", "metadata": { "filter_metadata": {
            "a": fields.clone(), "b": fields.clone(), "c": fields } } });
        let first = encode_json(CLUSTER, &json).unwrap();
        for _ in 0..20 {
            assert_eq!(encode_json(CLUSTER, &json).unwrap(), first);
        }
        // Still a valid encoding of the same message.
        let c = Cluster::decode(first.as_ref()).unwrap();
        assert_eq!(c.metadata.unwrap().filter_metadata.len(), 3);
    }
}
