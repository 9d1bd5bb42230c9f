//! How the server reads SotW requests: every ACK repeats the proxy's whole
//! subscription, so the codec recognises a repeated list from its raw bytes
//! and does not decode it again (docs/xds.md, "Subscriptions").

use bytes::{Buf, Bytes};
use keelson_proto::envoy::pb::envoy::service::discovery::v3::DiscoveryRequest;
use prost::Message as _;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

use super::wire::{Outbound, OutboundEncoder, stream_buffers};

/// A SotW request as the server reads it. Every ACK repeats the whole
/// subscription (at 1,000 services, 1,500 cluster names, ~75 KB, sent by
/// every proxy after every push), so names byte-identical to the previous
/// request's of that type on the stream are not decoded again: `names` is
/// `None` ("as the last request of this type said"). `names_hash`
/// identifies the list (order included); `request.resource_names` is empty
/// (the names are in `names`).
pub struct SotwRequest {
    pub request: DiscoveryRequest,
    pub names: Option<Vec<String>>,
    pub names_hash: u128,
}

impl From<DiscoveryRequest> for SotwRequest {
    fn from(mut request: DiscoveryRequest) -> Self {
        let names = std::mem::take(&mut request.resource_names);
        let names_hash = names_hash(names.iter().map(String::as_bytes));
        SotwRequest { request, names: Some(names), names_hash }
    }
}

/// The identity of a `resource_names` list: each name's length and bytes.
pub fn names_hash<'a>(names: impl Iterator<Item = &'a [u8]>) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for n in names {
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n);
    }
    h.digest128()
}

/// One pass over an encoded DiscoveryRequest: its `type_url`, the hash of
/// its `resource_names` (field 3) and every other field, re-encoded as it
/// came. `None` when it does not scan (prost then reports what is wrong).
struct Scan {
    type_url: Bytes,
    names_hash: u128,
    rest: Vec<u8>,
}

fn scan(buf: &Bytes) -> Option<Scan> {
    use prost::encoding::{WireType, decode_key, decode_varint};
    const RESOURCE_NAMES: u32 = 3;
    const TYPE_URL: u32 = 4;
    let mut cur: &[u8] = buf;
    let mut names = xxhash_rust::xxh3::Xxh3::new();
    let mut rest = Vec::new();
    let mut type_url = Bytes::new();
    while !cur.is_empty() {
        let start = buf.len() - cur.len();
        let (tag, wire) = decode_key(&mut cur).ok()?;
        let skip = match wire {
            WireType::Varint => {
                decode_varint(&mut cur).ok()?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut cur).ok()?).ok()?;
                let at = buf.len() - cur.len();
                if len > cur.len() {
                    return None;
                }
                match tag {
                    RESOURCE_NAMES => {
                        names.update(&(len as u64).to_le_bytes());
                        names.update(&cur[..len]);
                        cur = &cur[len..];
                        continue;
                    }
                    TYPE_URL => type_url = buf.slice(at..at + len),
                    _ => {}
                }
                len
            }
            _ => return None, // groups: not in this message
        };
        if skip > cur.len() {
            return None;
        }
        cur = &cur[skip..];
        rest.extend_from_slice(&buf[start..buf.len() - cur.len()]);
    }
    Some(Scan { type_url, names_hash: names.digest128(), rest })
}

/// Decodes SotW requests, keeping per type the hash of the last names (16
/// bytes per type and stream; the names themselves are the machine's).
#[derive(Default)]
pub struct SotwDecoder {
    /// Keys are copies: a slice of the request would keep its whole buffer.
    last: std::collections::HashMap<Box<[u8]>, u128>,
}

impl SotwDecoder {
    fn read(&mut self, bytes: Bytes) -> Result<SotwRequest, prost::DecodeError> {
        let scanned = scan(&bytes);
        if let Some(s) = &scanned
            && self.last.get(&*s.type_url) == Some(&s.names_hash)
        {
            let request = DiscoveryRequest::decode(s.rest.as_slice())?;
            return Ok(SotwRequest { request, names: None, names_hash: s.names_hash });
        }
        let request = SotwRequest::from(DiscoveryRequest::decode(bytes)?);
        if let Some(s) = scanned {
            // Bounded by the types a client asks for (each a known URL or
            // one it made up): a few dozen at most in practice.
            match self.last.get_mut(&*s.type_url) {
                Some(hash) => *hash = request.names_hash,
                None => {
                    if self.last.len() >= 64 {
                        self.last.clear();
                    }
                    self.last.insert(Box::from(&*s.type_url), request.names_hash);
                }
            }
        }
        Ok(request)
    }
}

impl Decoder for SotwDecoder {
    type Item = SotwRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<SotwRequest>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        self.read(bytes).map(Some).map_err(|e| Status::invalid_argument(format!("malformed xDS request: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        stream_buffers()
    }
}

/// The SotW codec: [`SotwDecoder`] for requests, shared bytes for responses.
#[derive(Default)]
pub struct SotwCodec;

impl Codec for SotwCodec {
    type Encode = Outbound;
    type Decode = SotwRequest;
    type Encoder = OutboundEncoder;
    type Decoder = SotwDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        OutboundEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SotwDecoder::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ack_repeating_its_names_is_not_decoded_again() {
        let req = |ty: &str, names: &[&str], nonce: &str| {
            let r = DiscoveryRequest {
                type_url: ty.into(),
                resource_names: names.iter().map(|n| n.to_string()).collect(),
                response_nonce: nonce.into(),
                ..Default::default()
            };
            Bytes::from(r.encode_to_vec())
        };
        let mut d = SotwDecoder::default();
        let first = d.read(req("t", &["a", "b"], "")).unwrap();
        assert_eq!(first.names.as_deref(), Some(&["a".to_string(), "b".to_string()][..]));
        let from =
            SotwRequest::from(DiscoveryRequest { resource_names: vec!["a".into(), "b".into()], ..Default::default() });
        assert_eq!(first.names_hash, from.names_hash, "the same identity as a decoded list's");
        let ack = d.read(req("t", &["a", "b"], "1")).unwrap();
        assert!(ack.names.is_none() && ack.names_hash == first.names_hash, "not decoded again");
        assert!(ack.request.resource_names.is_empty());
        assert_eq!((ack.request.type_url.as_str(), ack.request.response_nonce.as_str()), ("t", "1"));
        let other = d.read(req("u", &["a", "b"], "")).unwrap();
        assert!(other.names.is_some(), "names are remembered per type");
        let fewer = d.read(req("t", &["a"], "2")).unwrap();
        assert_eq!(
            (fewer.names.as_deref(), fewer.request.response_nonce.as_str()),
            (Some(&["a".to_string()][..]), "2")
        );
        assert_ne!(fewer.names_hash, first.names_hash);
        let swapped = d.read(req("t", &["b", "a"], "3")).unwrap();
        assert_eq!(
            swapped.names.as_deref(),
            Some(&["b".to_string(), "a".to_string()][..]),
            "order is part of the list"
        );
        assert!(d.read(Bytes::from_static(&[0x1a, 0x05, b'a'])).is_err(), "a truncated name is malformed");
    }
}
