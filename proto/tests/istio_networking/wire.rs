//! Hand-encoded protobuf for one small message per networking .proto file,
//! built from the field numbers read in istio/api, decoded through the
//! descriptor pool: proves the numbers and wire types, not just the names.

use prost::encoding::{WireType, encode_key, encode_varint};

/// A length-delimited field (string, bytes, message, map entry).
pub fn ld(field: u32, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_key(field, WireType::LengthDelimited, &mut buf);
    encode_varint(body.len() as u64, &mut buf);
    buf.extend_from_slice(body);
    buf
}

pub fn text(field: u32, value: &str) -> Vec<u8> {
    ld(field, value.as_bytes())
}

/// A varint field: int32 (sign-extended), uint32, uint64, bool, enum.
pub fn varint(field: u32, value: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_key(field, WireType::Varint, &mut buf);
    encode_varint(value, &mut buf);
    buf
}

pub fn double(field: u32, value: f64) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_key(field, WireType::SixtyFourBit, &mut buf);
    buf.extend_from_slice(&value.to_le_bytes());
    buf
}

/// A message body from its already-encoded fields.
pub fn msg(fields: &[Vec<u8>]) -> Vec<u8> {
    fields.concat()
}

/// One entry of a map<string, string> field.
pub fn string_entry(field: u32, key: &str, value: &str) -> Vec<u8> {
    ld(field, &msg(&[text(1, key), text(2, value)]))
}

/// A google.protobuf.Duration of whole seconds.
pub fn seconds(field: u32, secs: u64) -> Vec<u8> {
    ld(field, &varint(1, secs))
}
