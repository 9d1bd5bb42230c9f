use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the event log. Each variant says what the
/// operator should look at; none of them is raised by a panic.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data directory {path} is locked by another process (is a hub running on it?)")]
    Locked { path: PathBuf },

    #[error("no space left on the device holding {path}; the last durable record is kept, free space and retry")]
    NoSpace { path: PathBuf },

    // The OS error is printed in the message and deliberately not exposed as
    // `source()`, so error chains (`{:#}`) do not print it twice.
    #[error("data directory {path} is read-only or not writable: {cause}")]
    ReadOnly { path: PathBuf, cause: io::Error },

    #[error("cannot use data directory {path}: {cause}")]
    Io { path: PathBuf, cause: io::Error },

    /// A write to the engine failed (or a flush stalled). sled 0.34 cannot be
    /// trusted to write again in-process after that, so every later write
    /// fails fast with this error until the process restarts.
    #[error("storage failed: {reason}; restart to recover")]
    Failed { reason: String },

    #[error("storage engine error: {0}")]
    Engine(String),

    #[error("record {seq} is damaged: {reason}")]
    Corrupt { seq: u64, reason: String },

    #[error(
        "the store acknowledged records up to seq {durable} but holds only up to {found}; \
         refusing to open (run `keelson verify --repair` to accept the loss and mark those seqs lost)"
    )]
    LostAcknowledged { durable: u64, found: u64 },

    #[error("data directory {path} was written by an unknown log format {found:?}")]
    UnknownFormat { path: PathBuf, found: String },

    #[error("checkpoint at seq {seq} is ahead of the durable log (last seq {last})")]
    CheckpointAhead { seq: u64, last: u64 },

    #[error("key of {len} bytes is longer than the {max} bytes an index key may hold")]
    KeyTooLong { len: usize, max: usize },
}

impl StorageError {
    /// Classifies an I/O error from the engine or the filesystem so that
    /// "disk full" and "read-only" read as such instead of as errno numbers.
    pub(crate) fn from_io(path: &std::path::Path, source: io::Error) -> Self {
        let path = path.to_path_buf();
        // sled sometimes wraps the OS error in another io::Error; look inside.
        let inner = source.get_ref().and_then(|e| e.downcast_ref::<io::Error>());
        let code = source.raw_os_error().or_else(|| inner.and_then(io::Error::raw_os_error));
        let kind = inner.map_or(source.kind(), io::Error::kind);
        match (code, kind) {
            (Some(ENOSPC | EDQUOT), _) | (_, io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => {
                StorageError::NoSpace { path }
            }
            (Some(EROFS | EACCES | EPERM), _)
            | (_, io::ErrorKind::ReadOnlyFilesystem | io::ErrorKind::PermissionDenied) => {
                StorageError::ReadOnly { path, cause: source }
            }
            _ if kind == io::ErrorKind::WouldBlock || source.to_string().contains("could not acquire lock") => {
                StorageError::Locked { path }
            }
            _ => StorageError::Io { path, cause: source },
        }
    }

    pub(crate) fn from_sled(path: &std::path::Path, e: sled::Error) -> Self {
        match e {
            sled::Error::Io(io) => Self::from_io(path, io),
            sled::Error::Corruption { at, .. } => StorageError::Engine(format!(
                "sled's files are damaged (sled reports corruption{}); run `keelson verify --repair`",
                at.map(|at| format!(" at {at:?}")).unwrap_or_default()
            )),
            other => StorageError::Engine(other.to_string()),
        }
    }
}

// errno values, Linux. Spelled out instead of pulling in libc for four numbers.
const EPERM: i32 = 1;
const EACCES: i32 = 13;
const ENOSPC: i32 = 28;
const EROFS: i32 = 30;
const EDQUOT: i32 = 122;

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
