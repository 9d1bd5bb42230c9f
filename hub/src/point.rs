//! A point in the log, as users name one: a seq, or a time.

use crate::HubError;
use crate::store::EventStore;

/// Resolves `at` to a seq: a number is a seq; an RFC 3339 time means
/// "everything appended up to and including that instant".
pub fn resolve(store: &EventStore, at: &str) -> Result<u64, PointError> {
    if let Ok(seq) = at.parse::<u64>() {
        return Ok(seq);
    }
    let t = humantime::parse_rfc3339_weak(at).map_err(|_| PointError::Unparsed(crate::names::shown_name(at)))?;
    let after = store.log().seq_at_or_after(t + std::time::Duration::from_nanos(1)).map_err(HubError::from)?;
    Ok(after.map_or(store.log().last_seq(), |s| s.saturating_sub(1)))
}

#[derive(Debug, thiserror::Error)]
pub enum PointError {
    #[error("{0} is neither a seq nor an RFC 3339 time (like 2026-11-21T14:03:00Z)")]
    Unparsed(String),
    #[error(transparent)]
    Hub(#[from] HubError),
}
