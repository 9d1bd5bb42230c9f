//! Event ⇄ log record encoding.
//!
//! A payload is one schema byte followed by a `keelson.log.v1.LogEvent`
//! protobuf (proto/proto/keelson/log/v1/event.proto). Protobuf gives the log
//! a stable encoding that later releases can extend without rewriting old
//! records; the leading byte leaves room for a wholesale change of encoding.

use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes, BytesMut};
use keelson_proto::log as pb;
use keelson_storage::{NewRecord, Record};
use prost::Message;

use crate::event::{Body, Event, Op, ResourceKey, SourceId, SourceKind};

pub const EVENT_SCHEMA_V1: u8 = 1;

/// Index key under which NACKs are filed, so a proxy's NACK history is one lookup.
pub fn proxy_index_key(node: &str) -> Bytes {
    Bytes::from(format!("@proxy/{node}"))
}

#[derive(Debug, thiserror::Error)]
#[error("record {seq} does not decode as an event: {reason}")]
pub struct DecodeError {
    pub seq: u64,
    pub reason: String,
}

/// Encodes an op for appending. The log assigns seq and time.
pub fn encode(origin: &SourceId, op: &Op) -> NewRecord {
    let key = match op {
        Op::Upsert { key, .. } | Op::Delete { key, .. } => key.index_key(),
        Op::Nack { node, .. } => proxy_index_key(node),
        Op::SyncStart | Op::SyncDone => Bytes::new(),
    };
    let msg = pb::LogEvent { origin: Some(origin_to_pb(origin)), op: Some(op_to_pb(op)) };
    let mut buf = BytesMut::with_capacity(1 + msg.encoded_len());
    buf.put_u8(EVENT_SCHEMA_V1);
    msg.encode(&mut buf).expect("BytesMut grows as needed");
    NewRecord { key, payload: buf.freeze() }
}

/// Decodes an event record. Compacted and lost slots are not events: the
/// caller checks `record.kind` first.
pub fn decode(record: &Record) -> Result<Event, DecodeError> {
    let err = |reason: String| DecodeError { seq: record.seq, reason };
    let (&schema, rest) = record.payload.split_first().ok_or_else(|| err("empty payload".into()))?;
    if schema != EVENT_SCHEMA_V1 {
        return Err(err(format!("unknown event schema {schema} (this build reads {EVENT_SCHEMA_V1})")));
    }
    let msg = pb::LogEvent::decode(record.payload.slice(1..1 + rest.len())).map_err(|e| err(e.to_string()))?;
    let origin = msg.origin.map(origin_from_pb).ok_or_else(|| err("event has no origin".into()))?;
    let op = op_from_pb(msg.op.ok_or_else(|| err("event has no op".into()))?).map_err(err)?;
    Ok(Event { seq: record.seq, at: SystemTime::UNIX_EPOCH + Duration::from_nanos(record.at_nanos), origin, op })
}

fn origin_to_pb(o: &SourceId) -> pb::Origin {
    let kind = match o.kind {
        SourceKind::File => pb::SourceKind::File,
        SourceKind::Kubernetes => pb::SourceKind::Kubernetes,
        SourceKind::Consul => pb::SourceKind::Consul,
        SourceKind::Mcp => pb::SourceKind::Mcp,
        SourceKind::Api => pb::SourceKind::Api,
        SourceKind::Hub => pb::SourceKind::Hub,
    };
    pb::Origin { kind: kind as i32, name: o.name.clone(), cluster: o.cluster.clone() }
}

fn origin_from_pb(o: pb::Origin) -> SourceId {
    let kind = match pb::SourceKind::try_from(o.kind).unwrap_or(pb::SourceKind::Unspecified) {
        pb::SourceKind::File => SourceKind::File,
        pb::SourceKind::Kubernetes => SourceKind::Kubernetes,
        pb::SourceKind::Consul => SourceKind::Consul,
        pb::SourceKind::Mcp => SourceKind::Mcp,
        pb::SourceKind::Api => SourceKind::Api,
        // Unknown kinds from a newer writer read as hub-originated rather than failing replay.
        pb::SourceKind::Hub | pb::SourceKind::Unspecified => SourceKind::Hub,
    };
    SourceId { kind, name: o.name, cluster: o.cluster }
}

fn key_to_pb(k: &ResourceKey) -> pb::ResourceKey {
    pb::ResourceKey {
        group: k.group.clone(),
        kind: k.kind.clone(),
        namespace: k.namespace.clone(),
        name: k.name.clone(),
        cluster: k.cluster.clone(),
    }
}

fn key_from_pb(k: Option<pb::ResourceKey>) -> Result<ResourceKey, String> {
    let k = k.ok_or("resource op without a key")?;
    Ok(ResourceKey { group: k.group, kind: k.kind, namespace: k.namespace, name: k.name, cluster: k.cluster })
}

fn op_to_pb(op: &Op) -> pb::log_event::Op {
    use pb::log_event::Op as P;
    match op {
        Op::Upsert { key, source_version, body, location, author } => P::Upsert(pb::Upsert {
            key: Some(key_to_pb(key)),
            source_version: source_version.clone(),
            body: body.json().clone(),
            content_hash: Bytes::copy_from_slice(&body.hash().to_be_bytes()),
            location: location.clone(),
            author: author.clone(),
        }),
        Op::Delete { key, source_version, author } => P::Delete(pb::Delete {
            key: Some(key_to_pb(key)),
            source_version: source_version.clone(),
            author: author.clone(),
        }),
        Op::SyncStart => P::SyncStart(pb::SyncStart {}),
        Op::SyncDone => P::SyncDone(pb::SyncDone {}),
        Op::Nack { node, type_url, version, error } => P::Nack(pb::Nack {
            node: node.clone(),
            type_url: type_url.clone(),
            version: version.clone(),
            error: error.clone(),
        }),
    }
}

fn op_from_pb(op: pb::log_event::Op) -> Result<Op, String> {
    use pb::log_event::Op as P;
    Ok(match op {
        P::Upsert(u) => {
            let hash: [u8; 16] = u.content_hash.as_ref().try_into().map_err(|_| "content hash is not 16 bytes")?;
            Op::Upsert {
                key: key_from_pb(u.key)?,
                source_version: u.source_version,
                body: Body::from_parts(u.body, u128::from_be_bytes(hash)),
                location: u.location,
                author: u.author,
            }
        }
        P::Delete(d) => Op::Delete { key: key_from_pb(d.key)?, source_version: d.source_version, author: d.author },
        P::SyncStart(_) => Op::SyncStart,
        P::SyncDone(_) => Op::SyncDone,
        P::Nack(n) => Op::Nack { node: n.node, type_url: n.type_url, version: n.version, error: n.error },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_storage::RecordKind;

    fn as_record(seq: u64, rec: NewRecord) -> Record {
        Record { seq, at_nanos: 1_700_000_000_000_000_000, kind: RecordKind::Event, key: rec.key, payload: rec.payload }
    }

    #[test]
    fn every_op_round_trips() {
        let origin = SourceId { kind: SourceKind::Kubernetes, name: "east".into(), cluster: "cluster-east".into() };
        let key = ResourceKey::new("networking.istio.io", "VirtualService", "default", "reviews");
        let svc = ResourceKey::new("", "Service", "default", "reviews").in_cluster("east");
        let ops = [
            Op::Upsert {
                key: key.clone(),
                source_version: "123".into(),
                body: Body::from_value(&serde_json::json!({"spec": {"hosts": ["reviews"]}})),
                location: "vs.yaml:3".into(),
                author: "kubectl-client-side-apply".into(),
            },
            Op::Delete { key, source_version: "124".into(), author: String::new() },
            Op::Delete { key: svc, source_version: "125".into(), author: "helm".into() },
            Op::SyncStart,
            Op::SyncDone,
            Op::Nack { node: "sidecar~1".into(), type_url: "t".into(), version: "9".into(), error: "no".into() },
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let rec = as_record(i as u64 + 1, encode(&origin, &op));
            let ev = decode(&rec).unwrap();
            assert_eq!((ev.seq, &ev.origin, &ev.op), (i as u64 + 1, &origin, &op));
        }
    }

    #[test]
    fn records_are_indexed_by_resource_or_proxy() {
        let origin = SourceId::new(SourceKind::Hub, "xds");
        let key = ResourceKey::new("", "Service", "default", "reviews");
        let del =
            encode(&origin, &Op::Delete { key: key.clone(), source_version: String::new(), author: String::new() });
        assert_eq!(del.key.as_ref(), b"core/Service/default/reviews");
        let east = Op::Delete { key: key.in_cluster("east"), source_version: String::new(), author: String::new() };
        assert_eq!(encode(&origin, &east).key.as_ref(), b"core/Service/default/reviews@east");
        let nack = encode(
            &origin,
            &Op::Nack { node: "n1".into(), type_url: String::new(), version: String::new(), error: String::new() },
        );
        assert_eq!(nack.key.as_ref(), b"@proxy/n1");
        assert!(encode(&origin, &Op::SyncDone).key.is_empty());
    }

    #[test]
    fn unknown_schema_and_garbage_are_errors_naming_the_seq() {
        let mut rec = as_record(5, encode(&SourceId::new(SourceKind::File, "f"), &Op::SyncDone));
        rec.payload = Bytes::from_static(&[9, 1, 2]);
        assert!(decode(&rec).unwrap_err().to_string().contains("record 5"));
        rec.payload = Bytes::from_static(&[EVENT_SCHEMA_V1, 0xff, 0xff]);
        assert!(decode(&rec).is_err());
    }
}
