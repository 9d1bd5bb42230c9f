//! What reaches the durable log from a NACK, and how often.
//!
//! Clients are unauthenticated, so the log must not grow at their pace:
//! * one record per (node, type, rejected version, error): repeats are
//!   counted (ledger and `keelson_xds_nack_repeats_total`), not appended;
//! * the error text is cut to [`MAX_ERROR_BYTES`], keeping its full length and
//!   xxh3 hash in the text; node and type URL are cut to [`MAX_FIELD_BYTES`];
//! * appends are rate-limited per stream and over the whole server, and
//!   drops are counted (`keelson_xds_nacks_dropped_total{reason}`).
//!
//! Memory is bounded: each stream remembers the key of its last logged NACK,
//! and the server remembers the last [`RECENT_KEYS`] keys logged by any stream
//! (a ring plus a set, 8 bytes a key), so a proxy that reconnects and NACKs
//! the same version again is recognised too.

use std::collections::{HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Longest error text kept in a NACK record (and in the ledger), bytes.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Longest node id or type URL kept in a NACK record, bytes.
pub const MAX_FIELD_BYTES: usize = 512;
/// How many logged NACK keys the server remembers for deduplication.
pub const RECENT_KEYS: usize = 4096;

/// Limits on NACK appends (`[xds]` in keelson.toml).
#[derive(Clone, Copy, Debug)]
pub struct NackLimits {
    /// Appends per second over all streams (burst as many); None = unlimited.
    pub global_per_second: Option<NonZeroU32>,
    /// Appends per second one stream may cause; None = unlimited.
    pub per_stream_per_second: Option<NonZeroU32>,
    /// The burst one stream may have above its rate.
    pub per_stream_burst: NonZeroU32,
}

impl Default for NackLimits {
    fn default() -> Self {
        NackLimits {
            global_per_second: NonZeroU32::new(50),
            per_stream_per_second: NonZeroU32::new(1),
            per_stream_burst: NonZeroU32::new(5).expect("non-zero"),
        }
    }
}

impl NackLimits {
    /// A new stream's limiter.
    pub fn stream_limiter(&self) -> Option<DefaultDirectRateLimiter> {
        self.per_stream_per_second
            .map(|n| RateLimiter::direct(Quota::per_second(n).allow_burst(self.per_stream_burst.max(n))))
    }
}

/// The server-wide half: the global rate and the recently logged keys.
pub struct NackGate {
    pub limits: NackLimits,
    global: Option<DefaultDirectRateLimiter>,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    order: VecDeque<u64>,
    set: HashSet<u64>,
}

/// Why a NACK was not appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Append,
    Repeat,
    StreamRate,
    GlobalRate,
}

impl NackGate {
    pub fn new(limits: NackLimits) -> Self {
        NackGate {
            limits,
            global: limits.global_per_second.map(|n| RateLimiter::direct(Quota::per_second(n))),
            recent: Mutex::new(Recent::default()),
        }
    }

    /// Decides whether a NACK with `key` is appended. `last` is the stream's
    /// last logged key, `stream` its limiter. A repeat is never a drop: it is
    /// already in the log.
    pub fn admit(&self, key: u64, last: &mut Option<u64>, stream: Option<&DefaultDirectRateLimiter>) -> Verdict {
        if *last == Some(key) {
            return Verdict::Repeat;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.set.contains(&key) {
            *last = Some(key);
            return Verdict::Repeat;
        }
        if stream.is_some_and(|l| l.check().is_err()) {
            return Verdict::StreamRate;
        }
        if self.global.as_ref().is_some_and(|l| l.check().is_err()) {
            return Verdict::GlobalRate;
        }
        if recent.order.len() >= RECENT_KEYS
            && let Some(old) = recent.order.pop_front()
        {
            recent.set.remove(&old);
        }
        recent.order.push_back(key);
        recent.set.insert(key);
        *last = Some(key);
        Verdict::Append
    }
}

/// The dedupe key of a NACK: node, type, rejected version and the hash of
/// the whole error (not of its truncated text).
pub fn key(node: &str, type_url: &str, version: u64, error_hash: u64) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for part in [node.as_bytes(), type_url.as_bytes()] {
        h.update(&(part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.update(&version.to_le_bytes());
    h.update(&error_hash.to_le_bytes());
    h.digest()
}

/// The error as logged: at most [`MAX_ERROR_BYTES`] of it, cut at a char
/// boundary, then `… (N bytes, xxh3 <hex>)` when anything was cut. The
/// trailing newline Envoy adds is dropped. Returns the text and the hash of
/// the whole error.
pub fn summarize(error: &str) -> (String, u64) {
    let hash = xxhash_rust::xxh3::xxh3_64(error.as_bytes());
    let trimmed = error.trim_end();
    if trimmed.len() <= MAX_ERROR_BYTES {
        return (trimmed.to_string(), hash);
    }
    let cut = floor_char_boundary(trimmed, MAX_ERROR_BYTES);
    (format!("{}… ({} bytes, xxh3 {hash:016x})", &trimmed[..cut], error.len()), hash)
}

/// A node id or type URL as logged: cut to [`MAX_FIELD_BYTES`] with `…`.
pub fn clip(field: &str) -> String {
    if field.len() <= MAX_FIELD_BYTES {
        return field.to_string();
    }
    format!("{}…", &field[..floor_char_boundary(field, MAX_FIELD_BYTES)])
}

fn floor_char_boundary(s: &str, max: usize) -> usize {
    (0..=max.min(s.len())).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_char_boundary_and_say_their_length() {
        let error = "é".repeat(MAX_ERROR_BYTES); // 2 bytes each
        let (text, hash) = summarize(&error);
        assert!(text.len() < MAX_ERROR_BYTES + 64, "{}", text.len());
        assert!(text.ends_with(&format!("… ({} bytes, xxh3 {hash:016x})", error.len())), "{text}");
        assert_eq!(summarize("short\n").0, "short");
    }

    #[test]
    fn repeats_are_recognised_across_streams_and_the_ring_is_bounded() {
        let gate = NackGate::new(NackLimits { global_per_second: None, ..NackLimits::default() });
        let (mut a, mut b) = (None, None);
        assert_eq!(gate.admit(1, &mut a, None), Verdict::Append);
        assert_eq!(gate.admit(1, &mut a, None), Verdict::Repeat);
        assert_eq!(gate.admit(1, &mut b, None), Verdict::Repeat, "another stream, same NACK");
        for k in 2..(RECENT_KEYS as u64 + 2) {
            gate.admit(k, &mut b, None);
        }
        let recent = gate.recent.lock().unwrap();
        assert_eq!(recent.set.len(), RECENT_KEYS);
        assert!(!recent.set.contains(&1), "the oldest key left the ring");
    }
}
