//! `State` ⇄ checkpoint blob, with rkyv.
//!
//! rkyv has no schema evolution, so the layout is versioned by the format tag
//! the log stores beside the blob ([`FORMAT_V5`]); a new layout gets a new tag
//! and this module keeps reading the old ones. sled hands back unaligned
//! bytes, so a blob is copied into an aligned buffer before it is validated.

use bytes::Bytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::event::{Body, ResourceKey, SourceId, SourceKind};
use crate::state::{ResourceEntry, State};

/// Format tag of [`CheckpointV1`] blobs (no creation times; read, not written).
pub const FORMAT_V1: u32 = 0x4b43_0001; // "KC" v1
/// Format tag of [`CheckpointV2`] blobs: V1 plus each entry's creation time.
pub const FORMAT_V2: u32 = 0x4b43_0002; // "KC" v2
/// Format tag of [`CheckpointV3`] blobs: V2 plus each key's cluster.
pub const FORMAT_V3: u32 = 0x4b43_0003; // "KC" v3
/// Format tag of chunked blobs: `seq u64 | version u64 | entries u64`
/// (big-endian; the count, so a blob cut between chunks is not taken as a
/// smaller state), then
/// chunks `len u64 | rkyv archive of ChunkV4` of up to [`CHUNK_ENTRIES`]
/// V3 entries each. Written a chunk at a time, so a checkpoint never holds
/// a second copy of the whole state: a single V3 archive of 215,000 objects
/// took ~350 MiB at once (docs/benchmarks.md, "Kubernetes source").
pub const FORMAT_V4: u32 = 0x4b43_0004; // "KC" v4
/// Format tag of [`FORMAT_V4`] blobs with the state's departures
/// (`State::departures`): the header gains a fourth word, the length of an
/// rkyv archive of [`DeparturesV5`] that follows it, before the chunks.
pub const FORMAT_V5: u32 = 0x4b43_0005; // "KC" v5

/// Entries per V4 chunk: a few MiB of bodies, large enough that the
/// per-chunk framing is noise.
const CHUNK_ENTRIES: usize = 4096;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CheckpointV1 {
    seq: u64,
    version: u64,
    entries: Vec<EntryV1>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EntryV1 {
    group: String,
    kind: String,
    namespace: String,
    name: String,
    version: u64,
    body: Vec<u8>,
    hash: [u8; 16],
    origin_kind: u8,
    origin_name: String,
    origin_cluster: String,
    source_version: String,
    location: String,
    /// The encoded wire form, so a cold start does not re-transcode everything.
    encoded: Option<Vec<u8>>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CheckpointV2 {
    seq: u64,
    version: u64,
    entries: Vec<EntryV2>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EntryV2 {
    group: String,
    kind: String,
    namespace: String,
    name: String,
    version: u64,
    body: Vec<u8>,
    hash: [u8; 16],
    origin_kind: u8,
    origin_name: String,
    origin_cluster: String,
    source_version: String,
    location: String,
    encoded: Option<Vec<u8>>,
    /// Nanoseconds since the Unix epoch.
    created_at: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct ChunkV4 {
    entries: Vec<EntryV3>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct DeparturesV5 {
    scopes: Vec<(String, u64)>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct CheckpointV3 {
    seq: u64,
    version: u64,
    entries: Vec<EntryV3>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct EntryV3 {
    group: String,
    kind: String,
    namespace: String,
    name: String,
    /// The key's cluster (registry objects read from a Kubernetes cluster).
    cluster: String,
    version: u64,
    body: Vec<u8>,
    hash: [u8; 16],
    origin_kind: u8,
    origin_name: String,
    origin_cluster: String,
    source_version: String,
    location: String,
    encoded: Option<Vec<u8>>,
    /// Nanoseconds since the Unix epoch.
    created_at: u64,
}

/// One stored entry's fields, borrowed from whichever format holds them.
struct StoredEntry<'a> {
    key: ResourceKey,
    version: u64,
    body: &'a [u8],
    hash: [u8; 16],
    origin: SourceId,
    source_version: &'a str,
    location: &'a str,
    encoded: Option<&'a [u8]>,
    created_at: u64,
}

impl StoredEntry<'_> {
    fn restore(self) -> (ResourceKey, std::sync::Arc<ResourceEntry>) {
        let body = Body::from_parts(Bytes::copy_from_slice(self.body), u128::from_be_bytes(self.hash));
        let entry = ResourceEntry {
            version: self.version,
            serving: crate::state::Serving::of(&body),
            body,
            origin: self.origin,
            source_version: self.source_version.to_string(),
            location: self.location.to_string(),
            encoded: self.encoded.map(Bytes::copy_from_slice),
            created_at: UNIX_EPOCH + Duration::from_nanos(self.created_at),
        };
        (self.key, std::sync::Arc::new(entry))
    }
}

/// The entries of an archived V2 or V3 checkpoint, restored (the two
/// layouts differ only in the key's cluster, which `$cluster` reads).
macro_rules! restore_entries {
    ($archived:expr, $origin:expr, $count:expr, |$e:ident| $cluster:expr) => {
        $archived
            .entries
            .iter()
            .map(|$e| {
                let key = ResourceKey::new(&$e.group, &$e.kind, &$e.namespace, &$e.name).in_cluster($cluster);
                $count(&key);
                StoredEntry {
                    key,
                    version: $e.version.to_native(),
                    body: &$e.body,
                    hash: $e.hash,
                    origin: $origin($e.origin_kind, &$e.origin_name, &$e.origin_cluster),
                    source_version: &$e.source_version,
                    location: &$e.location,
                    encoded: $e.encoded.as_ref().map(|b| b.as_slice()),
                    created_at: $e.created_at.to_native(),
                }
                .restore()
            })
            .collect()
    };
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint format {0:#x} is not one this build reads")]
    UnknownFormat(u32),
    #[error("checkpoint does not validate: {0}")]
    Invalid(String),
}

fn kind_to_u8(k: SourceKind) -> u8 {
    match k {
        SourceKind::File => 1,
        SourceKind::Kubernetes => 2,
        SourceKind::Consul => 3,
        SourceKind::Mcp => 4,
        SourceKind::Api => 5,
        SourceKind::Hub => 6,
    }
}

fn kind_from_u8(k: u8) -> SourceKind {
    match k {
        1 => SourceKind::File,
        2 => SourceKind::Kubernetes,
        3 => SourceKind::Consul,
        4 => SourceKind::Mcp,
        5 => SourceKind::Api,
        _ => SourceKind::Hub,
    }
}

/// Encodes a state as the parts of a [`FORMAT_V5`] blob, in order: the
/// header and departures, then one chunk after another, each encoded when asked for.
pub fn encode_parts(state: &State) -> impl Iterator<Item = Vec<u8>> + '_ {
    let count = state.resources.len() as u64;
    let departures = DeparturesV5 { scopes: state.departures.iter().map(|(s, seq)| (s.clone(), *seq)).collect() };
    let departures =
        rkyv::to_bytes::<rancor::Error>(&departures).expect("serializing owned data into memory cannot fail");
    let words = [state.seq, state.version, count, departures.len() as u64];
    let mut header: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    header.extend_from_slice(&departures);
    let mut entries = state.resources.iter().peekable();
    let chunks = std::iter::from_fn(move || {
        entries.peek()?;
        let chunk = ChunkV4 { entries: entries.by_ref().take(CHUNK_ENTRIES).map(|(k, e)| entry_v3(k, e)).collect() };
        let capacity = chunk.entries.iter().map(EntryV3::archived_estimate).sum::<usize>() + 64;
        // Sized up front, so the buffer never grows by doubling.
        let archived =
            rkyv::api::high::to_bytes_in::<_, rancor::Error>(&chunk, AlignedVec::<16>::with_capacity(capacity))
                .expect("serializing owned data into memory cannot fail");
        let mut part = Vec::with_capacity(8 + archived.len());
        part.extend_from_slice(&(archived.len() as u64).to_be_bytes());
        part.extend_from_slice(&archived);
        Some(part)
    });
    std::iter::once(header).chain(chunks)
}

/// The whole [`FORMAT_V5`] blob of a state.
pub fn encode(state: &State) -> Vec<u8> {
    encode_parts(state).flatten().collect()
}

fn entry_v3(k: &ResourceKey, e: &ResourceEntry) -> EntryV3 {
    EntryV3 {
        group: k.group.clone(),
        kind: k.kind.clone(),
        namespace: k.namespace.clone(),
        name: k.name.clone(),
        cluster: k.cluster.clone(),
        version: e.version,
        body: e.body.json().to_vec(),
        hash: e.body.hash().to_be_bytes(),
        origin_kind: kind_to_u8(e.origin.kind),
        origin_name: e.origin.name.clone(),
        origin_cluster: e.origin.cluster.clone(),
        source_version: e.source_version.clone(),
        location: e.location.clone(),
        encoded: e.encoded.as_ref().map(|b| b.to_vec()),
        created_at: nanos(e.created_at),
    }
}

impl EntryV3 {
    /// Bytes this entry takes archived, slightly over: its variable-length
    /// fields plus a generous allowance for the fixed part and alignment.
    fn archived_estimate(&self) -> usize {
        let strings = [&self.group, &self.kind, &self.namespace, &self.name, &self.cluster];
        let more = [&self.origin_name, &self.origin_cluster, &self.source_version, &self.location];
        let text: usize = strings.iter().chain(more.iter()).map(|s| s.len()).sum();
        text + self.body.len() + self.encoded.as_ref().map_or(0, Vec::len) + 192
    }
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Decodes a blob stored with `format`, validating it first.
pub fn decode(format: u32, blob: &[u8]) -> Result<State, CheckpointError> {
    // Older formats are one archive: validated from an aligned copy of it all.
    let mut aligned = AlignedVec::<16>::new();
    if format != FORMAT_V4 && format != FORMAT_V5 {
        aligned.extend_from_slice(blob);
    }
    let invalid = |e: rancor::Error| CheckpointError::Invalid(e.to_string());
    let mut counts = std::collections::BTreeMap::new();
    let mut count = |key: &ResourceKey| *counts.entry((key.group.clone(), key.kind.clone())).or_insert(0) += 1;
    let origin = |kind: u8, name: &str, cluster: &str| SourceId {
        kind: kind_from_u8(kind),
        name: name.to_string(),
        cluster: cluster.to_string(),
    };
    let mut departures = imbl::OrdMap::new();
    let (seq, version, resources) = match format {
        FORMAT_V4 | FORMAT_V5 => {
            let words = if format == FORMAT_V5 { 32 } else { 24 };
            let (header, mut rest) =
                blob.split_at_checked(words).ok_or(CheckpointError::Invalid("no header".into()))?;
            let word = |at: usize| u64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"));
            if format == FORMAT_V5 {
                let len = usize::try_from(word(24)).unwrap_or(usize::MAX);
                let (archive, after) =
                    rest.split_at_checked(len).ok_or(CheckpointError::Invalid("cut departures".into()))?;
                let mut aligned = AlignedVec::<16>::with_capacity(archive.len());
                aligned.extend_from_slice(archive);
                let archived = rkyv::access::<ArchivedDeparturesV5, rancor::Error>(&aligned).map_err(invalid)?;
                departures = archived.scopes.iter().map(|t| (t.0.to_string(), t.1.to_native())).collect();
                rest = after;
            }
            let mut resources = crate::state::ResourceMap::new();
            while !rest.is_empty() {
                let (len, after) = rest.split_at_checked(8).ok_or(CheckpointError::Invalid("cut chunk".into()))?;
                let len = usize::try_from(u64::from_be_bytes(len.try_into().expect("8 bytes"))).unwrap_or(usize::MAX);
                let (chunk, after) = after.split_at_checked(len).ok_or(CheckpointError::Invalid("cut chunk".into()))?;
                let mut aligned = AlignedVec::<16>::with_capacity(chunk.len());
                aligned.extend_from_slice(chunk);
                let archived = rkyv::access::<ArchivedChunkV4, rancor::Error>(&aligned).map_err(invalid)?;
                let entries: Vec<_> = restore_entries!(archived, origin, count, |e| &e.cluster);
                resources.extend(entries);
                rest = after;
            }
            if resources.len() as u64 != word(16) {
                let (found, stated) = (resources.len(), word(16));
                return Err(CheckpointError::Invalid(format!("{found} entries, the header says {stated}")));
            }
            (word(0), word(8), resources)
        }
        FORMAT_V3 => {
            let archived = rkyv::access::<ArchivedCheckpointV3, rancor::Error>(&aligned).map_err(invalid)?;
            let resources = restore_entries!(archived, origin, count, |e| &e.cluster);
            (archived.seq.to_native(), archived.version.to_native(), resources)
        }
        // Written before keys had clusters: every key is cluster-less.
        FORMAT_V2 => {
            let archived = rkyv::access::<ArchivedCheckpointV2, rancor::Error>(&aligned).map_err(invalid)?;
            let resources = restore_entries!(archived, origin, count, |_e| "");
            (archived.seq.to_native(), archived.version.to_native(), resources)
        }
        // Written before entries had creation times and Istio kinds an
        // encoding: each entry is rebuilt (so it gets its wire form), with
        // the creation time its body states, else the epoch. Only objects
        // that already existed at the upgrade carry that placeholder.
        FORMAT_V1 => {
            let archived = rkyv::access::<ArchivedCheckpointV1, rancor::Error>(&aligned).map_err(invalid)?;
            let resources = archived
                .entries
                .iter()
                .map(|e| {
                    let key = ResourceKey::new(&e.group, &e.kind, &e.namespace, &e.name);
                    let body = Body::from_parts(Bytes::copy_from_slice(&e.body), u128::from_be_bytes(e.hash));
                    let entry = ResourceEntry::new(
                        &key,
                        e.version.to_native(),
                        body,
                        origin(e.origin_kind, &e.origin_name, &e.origin_cluster),
                        e.source_version.to_string(),
                        e.location.to_string(),
                        UNIX_EPOCH,
                    );
                    count(&key);
                    (key, std::sync::Arc::new(entry))
                })
                .collect();
            (archived.seq.to_native(), archived.version.to_native(), resources)
        }
        other => return Err(CheckpointError::UnknownFormat(other)),
    };
    Ok(State { seq, version, resources, counts, departures })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_v3(state: &State) -> AlignedVec {
        let entries = state.resources.iter().map(|(k, e)| entry_v3(k, e)).collect();
        let cp = CheckpointV3 { seq: state.seq, version: state.version, entries };
        rkyv::to_bytes::<rancor::Error>(&cp).unwrap()
    }

    /// `n` Clusters, from `origin`, with their index as source version.
    fn clusters(n: u64, origin: SourceId) -> State {
        let mut state = State::default();
        for i in 0..n {
            let body = serde_json::json!({ "apiVersion": "xds.keelson.dev/v1", "kind": "Cluster",
                "metadata": { "name": format!("c{i}") }, "spec": { "name": format!("c{i}") } });
            state.apply(crate::Event {
                seq: i + 1,
                at: std::time::SystemTime::UNIX_EPOCH,
                origin: origin.clone(),
                op: crate::Op::Upsert {
                    key: ResourceKey::new("xds.keelson.dev", "Cluster", "", &format!("c{i}")),
                    source_version: i.to_string(),
                    body: Body::from_value(&body),
                    location: String::new(),
                    author: String::new(),
                },
            });
        }
        state
    }

    #[test]
    fn a_large_state_is_written_in_chunks_and_read_back_whole() {
        let state = clusters(2 * CHUNK_ENTRIES as u64 + 5, SourceId::new(SourceKind::File, "f"));
        let parts: Vec<Vec<u8>> = encode_parts(&state).collect();
        assert_eq!(parts.len(), 4, "a header and three chunks");
        let blob = parts.concat();
        let back = decode(FORMAT_V5, &blob).unwrap();
        assert_eq!(back, state);
        assert_eq!(back.counts.values().sum::<usize>(), state.resources.len());
        // A blob cut anywhere is an error, never a panic or a partial state.
        for cut in
            [0, 7, 16, 24, 30, parts[0].len() + parts[1].len(), parts[0].len() + parts[1].len() - 1, blob.len() - 1]
        {
            assert!(matches!(decode(FORMAT_V5, &blob[..cut]), Err(CheckpointError::Invalid(_))), "cut at {cut}");
        }
        assert_eq!(decode(FORMAT_V5, &encode(&State::default())).unwrap(), State::default());
    }

    #[test]
    fn departures_round_trip_and_v4_blobs_still_load_without_them() {
        let mut state = clusters(10, SourceId::new(SourceKind::File, "f"));
        state.departures.insert("svc:default/reviews".into(), 7);
        state.departures.insert("pod:default".into(), 9);
        let parts: Vec<Vec<u8>> = encode_parts(&state).collect();
        assert_eq!(decode(FORMAT_V5, &parts.concat()).unwrap(), state);
        // A V4 blob: the same header without its fourth word and departures.
        let mut v4 = parts[0][..24].to_vec();
        v4.extend(parts[1..].concat());
        let old = decode(FORMAT_V4, &v4).unwrap();
        assert!(old.departures.is_empty());
        assert_eq!(old.resources, state.resources);
    }

    #[test]
    fn state_round_trips_through_an_unaligned_copy() {
        let state = clusters(100, SourceId { kind: SourceKind::Consul, name: "dc1".into(), cluster: "east".into() });
        assert!(state.resources.values().all(|e| e.encoded.is_some()));
        let blob = encode(&state);
        // Shift by one byte to prove alignment is handled, as sled gives no alignment.
        let mut unaligned = vec![0u8];
        unaligned.extend_from_slice(&blob);
        assert_eq!(decode(FORMAT_V5, &unaligned[1..]).unwrap(), state);
        // The format before chunks still loads.
        assert_eq!(decode(FORMAT_V3, &encode_v3(&state)).unwrap(), state);
    }

    /// A checkpoint written before Istio kinds had a wire form still loads:
    /// its entries are rebuilt, so they get one.
    #[test]
    fn a_v1_checkpoint_loads_with_its_entries_rebuilt() {
        let body = Body::from_value(&serde_json::json!({ "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService", "metadata": { "name": "r", "namespace": "ns" }, "spec": { "hosts": ["r"] } }));
        let v1 = CheckpointV1 {
            seq: 9,
            version: 8,
            entries: vec![EntryV1 {
                group: "networking.istio.io".into(),
                kind: "VirtualService".into(),
                namespace: "ns".into(),
                name: "r".into(),
                version: 8,
                body: body.json().to_vec(),
                hash: body.hash().to_be_bytes(),
                origin_kind: 1,
                origin_name: "f".into(),
                origin_cluster: String::new(),
                source_version: String::new(),
                location: "vs.yaml:1".into(),
                encoded: None,
            }],
        };
        let blob = rkyv::to_bytes::<rancor::Error>(&v1).unwrap();
        let state = decode(FORMAT_V1, &blob).unwrap();
        assert_eq!((state.seq, state.version), (9, 8));
        let e = state.resources.values().next().unwrap();
        assert!(e.encoded.is_some(), "rebuilt with its MCP item");
        assert_eq!(e.created_at, UNIX_EPOCH, "no creation time was recorded before v2");
        // Written back, it is v3 and round-trips.
        assert_eq!(decode(FORMAT_V5, &encode(&state)).unwrap(), state);
    }

    /// Per-cluster keys survive a checkpoint; a V2 checkpoint (before keys
    /// had clusters) still loads, every key cluster-less.
    #[test]
    fn clusters_of_keys_round_trip_and_v2_still_loads() {
        let mut state = State::default();
        for (seq, cluster) in [(1, "east"), (2, "west")] {
            let body = serde_json::json!({ "apiVersion": "v1", "kind": "Service",
                "metadata": { "name": "reviews", "namespace": "default" }, "spec": {} });
            state.apply(crate::Event {
                seq,
                at: UNIX_EPOCH,
                origin: SourceId { kind: SourceKind::Kubernetes, name: cluster.into(), cluster: cluster.into() },
                op: crate::Op::Upsert {
                    key: ResourceKey::new("", "Service", "default", "reviews").in_cluster(cluster),
                    source_version: "7".into(),
                    body: Body::from_value(&body),
                    location: String::new(),
                    author: String::new(),
                },
            });
        }
        assert_eq!(state.resources.len(), 2);
        assert_eq!(decode(FORMAT_V5, &encode(&state)).unwrap(), state);
        let e = &state.resources[&ResourceKey::new("", "Service", "default", "reviews").in_cluster("east")];
        let v2 = CheckpointV2 {
            seq: 1,
            version: 1,
            entries: vec![EntryV2 {
                group: String::new(),
                kind: "Service".into(),
                namespace: "default".into(),
                name: "reviews".into(),
                version: 1,
                body: e.body.json().to_vec(),
                hash: e.body.hash().to_be_bytes(),
                origin_kind: 1,
                origin_name: "f".into(),
                origin_cluster: String::new(),
                source_version: String::new(),
                location: String::new(),
                encoded: None,
                created_at: 0,
            }],
        };
        let old = decode(FORMAT_V2, &rkyv::to_bytes::<rancor::Error>(&v2).unwrap()).unwrap();
        assert_eq!(old.resources.keys().next().unwrap().to_string(), "core/Service/default/reviews");
    }

    #[test]
    fn wrong_format_or_garbage_is_refused() {
        let blob = encode(&State::default());
        assert!(matches!(decode(7, &blob), Err(CheckpointError::UnknownFormat(7))));
        assert!(matches!(decode(FORMAT_V3, &[1, 2, 3]), Err(CheckpointError::Invalid(_))));
        assert!(matches!(decode(FORMAT_V2, &[1, 2, 3]), Err(CheckpointError::Invalid(_))));
        assert!(matches!(decode(FORMAT_V1, &[1, 2, 3]), Err(CheckpointError::Invalid(_))));
    }
}
