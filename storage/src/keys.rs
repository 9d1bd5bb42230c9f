//! Key layout inside the one sled tree that holds the log and its indexes.
//!
//! Records and their index entries live in a single tree so that one
//! `apply_batch` writes them atomically: after a crash an index never points
//! at a record that is not there, nor misses one that is.
//!
//! ```text
//! 'L' seq                       -> record frame
//! 'K' keylen(u16) key seq       -> ()       all versions of a key, by seq
//! 'W'                           -> seq      low-water mark: lowest seq held
//! ```
//!
//! There is no time index: append times never decrease along seqs, so a
//! binary search over records finds the first seq at or after a time in
//! O(log n) reads, and every append writes one entry less.

pub const LOG: u8 = b'L';
pub const BY_KEY: u8 = b'K';
pub const LOW_WATER: &[u8] = b"W";

pub fn log(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = LOG;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub fn parse_log(k: &[u8]) -> Option<u64> {
    (k.len() == 9 && k[0] == LOG).then(|| u64::from_be_bytes(k[1..].try_into().expect("8 bytes")))
}

/// Prefix of every index entry of `key`.
pub fn by_key_prefix(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + key.len() + 8);
    k.push(BY_KEY);
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub fn by_key(key: &[u8], seq: u64) -> Vec<u8> {
    let mut k = by_key_prefix(key);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Returns (key, seq) of a by-key index entry.
pub fn parse_by_key(k: &[u8]) -> Option<(&[u8], u64)> {
    if k.len() < 11 || k[0] != BY_KEY {
        return None;
    }
    let len = u16::from_be_bytes([k[1], k[2]]) as usize;
    (k.len() == 3 + len + 8).then(|| {
        let seq = u64::from_be_bytes(k[3 + len..].try_into().expect("8 bytes"));
        (&k[3..3 + len], seq)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_back() {
        assert_eq!(parse_log(&log(42)), Some(42));
        let k = by_key(b"a/b/c/d", 9);
        assert_eq!(parse_by_key(&k), Some((&b"a/b/c/d"[..], 9)));
    }

    #[test]
    fn a_key_that_prefixes_another_does_not_share_its_index() {
        // "ab" must not list versions of "abc": the length prefix keeps them apart.
        let short = by_key_prefix(b"ab");
        assert!(!by_key(b"abc", 1).starts_with(&short));
    }

    #[test]
    fn big_endian_keys_sort_by_seq() {
        assert!(log(255) < log(256));
    }
}
