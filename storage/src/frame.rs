//! The on-disk frame of one log record.
//!
//! ```text
//! byte 0        frame version (FRAME_V1)
//! bytes 1..5    CRC32 (big-endian) over seq (8 bytes, big-endian) ++ bytes 5..
//! byte 5        kind: 0 event, 1 compacted, 2 lost
//! bytes 6..14   append time, nanoseconds since the Unix epoch, big-endian
//! bytes 14..16  index key length, big-endian
//! ..            index key
//! ..            payload (opaque to storage)
//! ```
//!
//! The CRC covers the record's own seq, so a frame found under the wrong key
//! (a misdirected write, a botched copy) fails verification like a flipped bit.

use bytes::Bytes;

pub const FRAME_V1: u8 = 1;
const HEADER: usize = 16;
pub const MAX_KEY_LEN: usize = u16::MAX as usize;

/// What a log slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// A record appended by a caller.
    Event,
    /// Removed by retention; the slot keeps the sequence contiguous.
    Compacted,
    /// Found damaged or missing and written off by `--repair`.
    Lost,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Event => 0,
            RecordKind::Compacted => 1,
            RecordKind::Lost => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => RecordKind::Event,
            1 => RecordKind::Compacted,
            2 => RecordKind::Lost,
            _ => return None,
        })
    }
}

/// One record as read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Append time, nanoseconds since the Unix epoch. Non-decreasing in seq.
    pub at_nanos: u64,
    pub kind: RecordKind,
    /// The index key given at append (empty when none).
    pub key: Bytes,
    pub payload: Bytes,
}

pub fn encode(seq: u64, kind: RecordKind, at_nanos: u64, key: &[u8], payload: &[u8]) -> Vec<u8> {
    debug_assert!(key.len() <= MAX_KEY_LEN);
    let mut buf = Vec::with_capacity(HEADER + key.len() + payload.len());
    buf.push(FRAME_V1);
    buf.extend_from_slice(&[0; 4]);
    buf.push(kind.to_byte());
    buf.extend_from_slice(&at_nanos.to_be_bytes());
    buf.extend_from_slice(&(key.len() as u16).to_be_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(payload);
    let crc = checksum(seq, &buf[5..]);
    buf[1..5].copy_from_slice(&crc.to_be_bytes());
    buf
}

/// Decodes a frame stored under `seq`. `raw` is shared, not copied: key and
/// payload are slices of it.
pub fn decode(seq: u64, raw: Bytes) -> Result<Record, String> {
    if raw.len() < HEADER {
        return Err(format!("frame is {} bytes, shorter than its header", raw.len()));
    }
    if raw[0] != FRAME_V1 {
        return Err(format!("unknown frame version {}", raw[0]));
    }
    let stored = u32::from_be_bytes(raw[1..5].try_into().expect("4 bytes"));
    let actual = checksum(seq, &raw[5..]);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    let kind = RecordKind::from_byte(raw[5]).ok_or_else(|| format!("unknown record kind {}", raw[5]))?;
    let at_nanos = u64::from_be_bytes(raw[6..14].try_into().expect("8 bytes"));
    let key_len = u16::from_be_bytes(raw[14..16].try_into().expect("2 bytes")) as usize;
    if raw.len() < HEADER + key_len {
        return Err(format!("key length {key_len} runs past the end of the frame"));
    }
    Ok(Record { seq, at_nanos, kind, key: raw.slice(HEADER..HEADER + key_len), payload: raw.slice(HEADER + key_len..) })
}

fn checksum(seq: u64, rest: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_be_bytes());
    h.update(rest);
    h.finalize()
}

/// A blob frame (the chunks and manifests of in-engine checkpoints, which
/// are only read now, see `checkpoint::legacy`): version, CRC32 of the body, body.
#[cfg(test)]
pub fn encode_blob(body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(5 + body.len());
    buf.push(FRAME_V1);
    buf.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    buf.extend_from_slice(body);
    buf
}

pub fn decode_blob(raw: &[u8]) -> Result<&[u8], String> {
    if raw.len() < 5 {
        return Err("blob frame shorter than its header".into());
    }
    if raw[0] != FRAME_V1 {
        return Err(format!("unknown blob frame version {}", raw[0]));
    }
    let stored = u32::from_be_bytes(raw[1..5].try_into().expect("4 bytes"));
    let actual = crc32fast::hash(&raw[5..]);
    if stored != actual {
        return Err(format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"));
    }
    Ok(&raw[5..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flipped_bit_is_caught() {
        let raw = encode(7, RecordKind::Event, 123, b"k/v", b"payload");
        let rec = decode(7, Bytes::from(raw.clone())).unwrap();
        assert_eq!((rec.seq, rec.at_nanos, rec.kind), (7, 123, RecordKind::Event));
        assert_eq!((&rec.key[..], &rec.payload[..]), (&b"k/v"[..], &b"payload"[..]));
        for byte in 0..raw.len() {
            for bit in 0..8 {
                let mut bad = raw.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode(7, Bytes::from(bad)).is_err(), "flip at {byte}:{bit} went unnoticed");
            }
        }
    }

    #[test]
    fn frame_under_the_wrong_seq_is_rejected() {
        let raw = encode(7, RecordKind::Event, 1, b"", b"x");
        assert!(decode(8, Bytes::from(raw)).unwrap_err().contains("checksum"));
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        let raw = encode(1, RecordKind::Event, 1, b"key", b"");
        for len in 0..raw.len() {
            assert!(decode(1, Bytes::copy_from_slice(&raw[..len])).is_err());
        }
    }
}
