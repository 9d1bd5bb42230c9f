//! The server's gRPC codec: requests decode as envoy-types messages;
//! responses are written from shared, pre-encoded bytes.
//!
//! Protobuf lets a message's fields come in any order and concatenated
//! encodings merge, so a SotW response is one shared body (version_info,
//! resources, type_url — built once per snapshot, type and subscription)
//! followed by the stream's own nonce field. The per-stream cost of a push is
//! a refcount and a copy into the socket buffer. Delta responses differ per
//! stream by nature; their items are the same shared `Any` bytes framed with
//! a few header bytes at write time.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use keelson_proto::envoy::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

/// The `Any.type_url` of a SotW item wrapped to carry a TTL.
pub const RESOURCE_WRAPPER: &str = "type.googleapis.com/envoy.service.discovery.v3.Resource";

/// A SotW response body shared by every stream that needs it.
#[derive(Debug)]
pub struct SotwBody {
    /// `version_info`, `resources` and `type_url`, encoded.
    pub bytes: Bytes,
    pub version: u64,
    /// Hash of the (name, resource version) pairs it holds: two bodies with
    /// equal fingerprints carry the same config.
    pub fingerprint: u128,
    /// Names of the items, sorted (their count is the item count).
    pub names: Vec<Box<str>>,
}

/// One item of a Delta response.
#[derive(Clone, Debug)]
pub struct DeltaItem {
    pub name: Arc<str>,
    pub version: u64,
    /// The shared encoded `google.protobuf.Any`.
    pub any: Bytes,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub type_url: Arc<str>,
    pub resources: Vec<DeltaItem>,
    pub removed: Vec<Arc<str>>,
}

/// The legacy Galley MCP responses (`istio.mcp.v1alpha1`, PROTOCOL.md §2b).
/// They differ from each other only in field numbers, which is all
/// [`McpMessage::fields`] says.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum McpMessage {
    MeshConfigResponse,
    IncrementalMeshConfigResponse,
    Resources,
}

/// Field numbers of one [`McpMessage`]; `None` = the message has no such field.
#[derive(Clone, Copy, Debug)]
pub struct McpFields {
    pub version: u32,
    /// `type_url` or `collection`, echoed from the request.
    pub name: Option<u32>,
    /// `repeated istio.mcp.v1alpha1.Resource`.
    pub resources: u32,
    pub removed: Option<u32>,
    pub nonce: u32,
    pub incremental: Option<u32>,
}

impl McpMessage {
    pub const fn fields(self) -> McpFields {
        match self {
            McpMessage::MeshConfigResponse => {
                McpFields { version: 1, name: Some(3), resources: 2, removed: None, nonce: 4, incremental: None }
            }
            McpMessage::IncrementalMeshConfigResponse => {
                McpFields { version: 1, name: None, resources: 2, removed: Some(3), nonce: 4, incremental: None }
            }
            McpMessage::Resources => {
                McpFields { version: 1, name: Some(2), resources: 3, removed: Some(4), nonce: 5, incremental: Some(6) }
            }
        }
    }
}

/// A legacy MCP diff, made for one stream: the items are shared
/// `istio.mcp.v1alpha1.Resource` bytes, framed at write time.
#[derive(Debug)]
pub struct McpDiff {
    pub message: McpMessage,
    pub system_version_info: String,
    pub name: Arc<str>,
    pub resources: Vec<Bytes>,
    pub removed: Vec<Arc<str>>,
    pub incremental: bool,
}

/// What a stream hands to its connection.
#[derive(Debug)]
pub enum Outbound {
    Sotw {
        body: Arc<SotwBody>,
        nonce: u64,
    },
    /// Boxed: the queue slot every stream keeps stays the size of the SotW case.
    Delta {
        response: Box<DeltaResponse>,
        nonce: u64,
    },
    /// A legacy MCP full-state body shared by every stream that needs it,
    /// then this stream's nonce in the message's own field.
    McpShared {
        body: Arc<SotwBody>,
        nonce: u64,
        message: McpMessage,
    },
    McpDiff {
        diff: Box<McpDiff>,
        nonce: u64,
    },
}

impl Outbound {
    /// Bytes this message takes on the wire (before gRPC framing).
    pub fn encoded_len(&self) -> usize {
        match self {
            Outbound::Sotw { body, nonce } => body.bytes.len() + nonce_len(*nonce),
            Outbound::Delta { response, nonce } => delta_len(response) + nonce_len(*nonce),
            Outbound::McpShared { body, nonce, message } => {
                body.bytes.len() + tagged_nonce_len(*nonce, message.fields().nonce)
            }
            Outbound::McpDiff { diff, nonce } => {
                mcp_diff_len(diff) + tagged_nonce_len(*nonce, diff.message.fields().nonce)
            }
        }
    }

    pub fn encode(&self, buf: &mut impl BufMut) {
        match self {
            Outbound::Sotw { body, nonce } => {
                buf.put_slice(&body.bytes);
                put_nonce(*nonce, 5, buf);
            }
            Outbound::Delta { response, nonce } => {
                put_str(1, &response.system_version_info, buf);
                for item in &response.resources {
                    encode_key(2, WireType::LengthDelimited, buf);
                    encode_varint(resource_len(item) as u64, buf);
                    put_resource(item, buf);
                }
                put_str(4, &response.type_url, buf);
                put_nonce(*nonce, 5, buf);
                for name in &response.removed {
                    put_str(6, name, buf);
                }
            }
            Outbound::McpShared { body, nonce, message } => {
                buf.put_slice(&body.bytes);
                put_nonce(*nonce, message.fields().nonce, buf);
            }
            Outbound::McpDiff { diff, nonce } => {
                let f = diff.message.fields();
                put_str(f.version, &diff.system_version_info, buf);
                if let Some(tag) = f.name {
                    put_str(tag, &diff.name, buf);
                }
                for resource in &diff.resources {
                    put_bytes(f.resources, resource, buf);
                }
                if let Some(tag) = f.removed {
                    for name in &diff.removed {
                        put_str(tag, name, buf);
                    }
                }
                put_nonce(*nonce, f.nonce, buf);
                if let (Some(tag), true) = (f.incremental, diff.incremental) {
                    encode_key(tag, WireType::Varint, buf);
                    encode_varint(1, buf);
                }
            }
        }
    }
}

fn mcp_diff_len(diff: &McpDiff) -> usize {
    let f = diff.message.fields();
    str_len(f.version, &diff.system_version_info)
        + f.name.map_or(0, |tag| str_len(tag, &diff.name))
        + diff.resources.iter().map(|r| len_field(f.resources, r.len())).sum::<usize>()
        + f.removed.map_or(0, |tag| diff.removed.iter().map(|n| str_len(tag, n)).sum())
        + f.incremental.filter(|_| diff.incremental).map_or(0, |tag| prost::encoding::key_len(tag) + 1)
}

/// The `value` of an encoded `google.protobuf.Any` (field 2), as a slice of
/// the same buffer: legacy MCP responses carry the MCP `Resource` itself,
/// not the `Any` the hub wraps it in. None if the bytes are not an `Any`.
pub fn any_value(any: &Bytes) -> Option<Bytes> {
    let mut rest: &[u8] = any;
    while !rest.is_empty() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut rest).ok()?;
        if wire_type != WireType::LengthDelimited {
            return None;
        }
        let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
        if len > rest.len() {
            return None;
        }
        if tag == 2 {
            let start = any.len() - rest.len();
            return Some(any.slice(start..start + len));
        }
        rest = &rest[len..];
    }
    Some(Bytes::new())
}

/// A u64 as decimal ASCII (nonces, Delta resource versions), written
/// without allocating: these go out per stream.
struct Decimal {
    digits: [u8; 20],
    start: usize,
}

impl Decimal {
    fn new(mut n: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                return Decimal { digits, start };
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.digits[self.start..]
    }
}

fn nonce_len(nonce: u64) -> usize {
    tagged_nonce_len(nonce, 5)
}

fn tagged_nonce_len(nonce: u64, tag: u32) -> usize {
    len_field(tag, Decimal::new(nonce).as_bytes().len())
}

fn put_nonce(nonce: u64, tag: u32, buf: &mut impl BufMut) {
    put_bytes(tag, Decimal::new(nonce).as_bytes(), buf);
}

fn len_field(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

pub fn put_bytes(tag: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// A proto3 string field; empty strings are the default and are omitted.
pub fn put_str(tag: u32, s: &str, buf: &mut impl BufMut) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}

fn str_len(tag: u32, s: &str) -> usize {
    if s.is_empty() { 0 } else { len_field(tag, s.len()) }
}

fn duration_len(d: Duration) -> usize {
    let mut n = 0;
    if d.as_secs() > 0 {
        n += 1 + encoded_len_varint(d.as_secs());
    }
    if d.subsec_nanos() > 0 {
        n += 1 + encoded_len_varint(u64::from(d.subsec_nanos()));
    }
    n
}

fn put_duration(tag: u32, d: Duration, buf: &mut impl BufMut) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(duration_len(d) as u64, buf);
    if d.as_secs() > 0 {
        encode_key(1, WireType::Varint, buf);
        encode_varint(d.as_secs(), buf);
    }
    if d.subsec_nanos() > 0 {
        encode_key(2, WireType::Varint, buf);
        encode_varint(u64::from(d.subsec_nanos()), buf);
    }
}

/// `envoy.service.discovery.v3.Resource{version=1, resource=2, name=3, ttl=6}`.
pub fn resource_len(item: &DeltaItem) -> usize {
    len_field(1, Decimal::new(item.version).as_bytes().len())
        + len_field(2, item.any.len())
        + str_len(3, &item.name)
        + item.ttl.map_or(0, |d| len_field(6, duration_len(d)))
}

pub fn put_resource(item: &DeltaItem, buf: &mut impl BufMut) {
    put_bytes(1, Decimal::new(item.version).as_bytes(), buf);
    put_bytes(2, &item.any, buf);
    put_str(3, &item.name, buf);
    if let Some(ttl) = item.ttl {
        put_duration(6, ttl, buf);
    }
}

fn delta_len(r: &DeltaResponse) -> usize {
    str_len(1, &r.system_version_info)
        + r.resources.iter().map(|i| len_field(2, resource_len(i))).sum::<usize>()
        + str_len(4, &r.type_url)
        + r.removed.iter().map(|n| str_len(6, n)).sum::<usize>()
}

/// A SotW item wrapped as `Any(envoy.service.discovery.v3.Resource)`, for
/// clients that advertise TTL support.
pub fn wrapped_any(item: &DeltaItem) -> Vec<u8> {
    let mut resource = Vec::with_capacity(resource_len(item));
    put_resource(item, &mut resource);
    let mut any = Vec::with_capacity(resource.len() + RESOURCE_WRAPPER.len() + 8);
    put_str(1, RESOURCE_WRAPPER, &mut any);
    put_bytes(2, &resource, &mut any);
    any
}

/// The codec named in build.rs: prost decoding for requests, shared bytes
/// for responses.
pub struct XdsCodec<Req>(PhantomData<fn() -> Req>);

impl<Req> Default for XdsCodec<Req> {
    fn default() -> Self {
        XdsCodec(PhantomData)
    }
}

pub type DeltaCodec = XdsCodec<DeltaDiscoveryRequest>;
pub use super::request::{SotwCodec, SotwRequest};
pub type MeshConfigCodec = XdsCodec<keelson_proto::mcp::MeshConfigRequest>;
pub type IncrementalMeshConfigCodec = XdsCodec<keelson_proto::mcp::IncrementalMeshConfigRequest>;
pub type ResourceSourceCodec = XdsCodec<keelson_proto::mcp::RequestResources>;

impl<Req: prost::Message + Default + Send + 'static> Codec for XdsCodec<Req> {
    type Encode = Outbound;
    type Decode = Req;
    type Encoder = OutboundEncoder;
    type Decoder = RequestDecoder<Req>;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

pub struct OutboundEncoder;

impl Encoder for OutboundEncoder {
    type Item = Outbound;
    type Error = Status;

    fn encode(&mut self, item: Outbound, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffers()
    }
}

/// Per-stream codec buffers. tonic's default (8 KiB each way) is kept by
/// every open stream; with 10,000 proxies that is 160 MB of mostly idle
/// buffer. Requests (ACKs) are small and responses are copied in whole
/// anyway, so start at 1 KiB and let a large message grow the buffer.
pub(super) fn stream_buffers() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

pub struct RequestDecoder<Req>(PhantomData<fn() -> Req>);

impl<Req: prost::Message + Default> Decoder for RequestDecoder<Req> {
    type Item = Req;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Req>, Status> {
        Req::decode(src).map(Some).map_err(|e| Status::invalid_argument(format!("malformed xDS request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keelson_proto::envoy::pb::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
    use keelson_proto::envoy::pb::google::protobuf::Any;

    use prost::Message;

    fn any() -> Any {
        Any { type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(), value: vec![10, 1, b'a'] }
    }

    #[test]
    fn delta_response_decodes_as_envoys() {
        for nonce in [0, 9, 10, 12345, u64::MAX] {
            let item = DeltaItem {
                name: "a".into(),
                version: 42,
                any: any().encode_to_vec().into(),
                ttl: Some(Duration::from_millis(1500)),
            };
            let out = Outbound::Delta {
                response: Box::new(DeltaResponse {
                    system_version_info: "42".into(),
                    type_url: any().type_url.into(),
                    resources: vec![item],
                    removed: vec!["gone".into()],
                }),
                nonce,
            };
            let mut buf = Vec::new();
            out.encode(&mut buf);
            assert_eq!(buf.len(), out.encoded_len());
            let d = DeltaDiscoveryResponse::decode(buf.as_slice()).unwrap();
            assert_eq!(d.nonce, nonce.to_string());
            assert_eq!(d.removed_resources, ["gone"]);
            let r: &Resource = &d.resources[0];
            assert_eq!((r.name.as_str(), r.version.as_str()), ("a", "42"));
            assert_eq!(r.resource.as_ref(), Some(&any()));
            let ttl = r.ttl.as_ref().unwrap();
            assert_eq!((ttl.seconds, ttl.nanos), (1, 500_000_000));
        }
    }

    /// An MCP Resource as the hub stores it: inside an Any.
    fn mcp_item(name: &str) -> (Bytes, keelson_proto::mcp::Resource) {
        let resource = keelson_proto::mcp::Resource {
            metadata: Some(keelson_proto::mcp::Metadata {
                name: name.into(),
                version: "7".into(),
                ..Default::default()
            }),
            body: None,
        };
        let any =
            Any { type_url: "type.googleapis.com/istio.mcp.v1alpha1.Resource".into(), value: resource.encode_to_vec() };
        (any.encode_to_vec().into(), resource)
    }

    #[test]
    fn any_value_is_the_inner_message() {
        let (any, resource) = mcp_item("ns/a");
        let value = any_value(&any).unwrap();
        assert_eq!(keelson_proto::mcp::Resource::decode(value).unwrap(), resource);
        assert_eq!(any_value(&Bytes::from_static(&[8, 1])), None, "not an Any");
    }

    #[test]
    fn mcp_diffs_decode_as_istio_messages() {
        let (any, resource) = mcp_item("ns/a");
        let diff = |message, incremental| McpDiff {
            message,
            system_version_info: "9".into(),
            name: "istio/networking/v1alpha3/virtualservices".into(),
            resources: vec![any_value(&any).unwrap()],
            removed: vec!["ns/gone".into()],
            incremental,
        };
        for incremental in [false, true] {
            let out = Outbound::McpDiff { diff: Box::new(diff(McpMessage::Resources, incremental)), nonce: 12 };
            let mut buf = Vec::new();
            out.encode(&mut buf);
            assert_eq!(buf.len(), out.encoded_len());
            let r = keelson_proto::mcp::Resources::decode(buf.as_slice()).unwrap();
            assert_eq!((r.nonce.as_str(), r.incremental, r.system_version_info.as_str()), ("12", incremental, "9"));
            assert_eq!(r.collection, "istio/networking/v1alpha3/virtualservices");
            assert_eq!((r.resources, r.removed_resources), (vec![resource.clone()], vec!["ns/gone".to_string()]));
        }
        let out = Outbound::McpDiff { diff: Box::new(diff(McpMessage::IncrementalMeshConfigResponse, true)), nonce: 3 };
        let mut buf = Vec::new();
        out.encode(&mut buf);
        assert_eq!(buf.len(), out.encoded_len());
        let r = keelson_proto::mcp::IncrementalMeshConfigResponse::decode(buf.as_slice()).unwrap();
        assert_eq!((r.nonce.as_str(), r.resources, r.removed_resources), ("3", vec![resource], vec!["ns/gone".into()]));
    }

    #[test]
    fn wrapped_item_is_a_resource_any() {
        let item = DeltaItem { name: "a".into(), version: 7, any: any().encode_to_vec().into(), ttl: None };
        let wrapped = Any::decode(wrapped_any(&item).as_slice()).unwrap();
        assert_eq!(wrapped.type_url, RESOURCE_WRAPPER);
        let r = Resource::decode(wrapped.value.as_slice()).unwrap();
        assert_eq!(r.resource, Some(any()));
        assert_eq!(r.version, "7");
    }
}
