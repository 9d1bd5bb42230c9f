//! The one stream loop every protocol (SotW, Delta) runs: requests in,
//! snapshots in, responses out — at most one queued, so what goes out is
//! always computed from the newest snapshot (latest wins).

use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use keelson_hub::Snapshot;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Status};

use super::session::Shared;
use super::wire::Outbound;

/// A protocol's per-stream state machine.
pub trait Machine: Send {
    type Request: Send;
    /// Applies a request (subscription change, ACK, NACK). An error ends
    /// the stream with that status.
    fn on_request(&mut self, req: Self::Request, shared: &Shared) -> Result<(), Status>;
    /// A new snapshot was published.
    fn on_snapshot(&mut self, snap: &Arc<Snapshot>);
    fn has_pending(&self) -> bool;
    /// The next response to send, if any, computed from `snap`.
    fn next(&mut self, snap: &Arc<Snapshot>, shared: &Shared) -> Option<Outbound>;
}

/// A stream's responses, as tonic takes them. The queue holds boxed errors
/// so each of its slots (tokio allocates 32 per channel) stays small: with
/// 10,000 streams that is 2 KB per stream saved.
pub struct ResponseStream(pub mpsc::Receiver<Result<Outbound, Box<Status>>>);

impl Stream for ResponseStream {
    type Item = Result<Outbound, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|item| item.map(|r| r.map_err(|status| *status)))
    }
}

/// Per-stream limits.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Requests per second a stream may send (with a burst of as many).
    pub requests_per_second: Option<std::num::NonZeroU32>,
}

/// Runs one stream until the client goes away or breaks a rule.
pub async fn drive<M: Machine>(
    mut machine: M,
    shared: Arc<Shared>,
    mut snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    mut requests: impl Stream<Item = Result<M::Request, Status>> + Unpin,
    tx: mpsc::Sender<Result<Outbound, Box<Status>>>,
    limits: StreamLimits,
) {
    let limiter: Option<DefaultDirectRateLimiter> =
        limits.requests_per_second.map(|n| RateLimiter::direct(Quota::per_second(n)));
    let mut snap: Option<Arc<Snapshot>> = snapshots.borrow_and_update().clone();
    let end = |status: Status| async {
        let _ = tx.send(Err(Box::new(status))).await;
    };
    let mut closing = shared.closing.subscribe();
    if *closing.borrow_and_update() {
        return end(Status::unavailable("the xDS server is shutting down")).await;
    }
    // A client may half-close its request stream after its requests
    // (gRPC allows it; a probe does it). What it asked for is still owed:
    // the responses pending at that point go out, from the snapshot of the
    // moment (or the first one, if none was published yet), then the stream
    // ends with OK. It gets no later pushes: it could not ACK them.
    let mut half_closed = false;
    loop {
        let ready = snap.is_some() && machine.has_pending();
        if half_closed && snap.is_some() && !ready {
            return;
        }
        tokio::select! {
            // Requests first: a subscription change should shape the next push.
            biased;
            req = requests.next(), if !half_closed => match req {
                None => half_closed = true,
                Some(Err(status)) => {
                    // A body that does not decode is the client's fault.
                    let status = if status.code() == Code::Internal || status.code() == Code::Unknown {
                        Status::invalid_argument(format!("malformed request: {}", status.message()))
                    } else {
                        status
                    };
                    shared.metrics.reject("invalid_request");
                    return end(status).await;
                }
                Some(Ok(req)) => {
                    if let Some(l) = &limiter
                        && l.check().is_err() {
                            shared.metrics.reject("request_rate");
                            return end(Status::resource_exhausted("too many requests on this stream")).await;
                        }
                    if let Err(status) = machine.on_request(req, &shared) {
                        shared.metrics.reject("invalid_request");
                        return end(status).await;
                    }
                }
            },
            // Waiting on the first snapshot with nothing to read: notice a
            // client that went away.
            _ = tx.closed(), if half_closed => return,
            _ = closing.changed() => {
                return end(Status::unavailable("the xDS server is shutting down")).await;
            }
            changed = snapshots.changed(), if !(half_closed && snap.is_some()) => {
                if changed.is_err() {
                    return end(Status::unavailable("the hub is shutting down")).await;
                }
                snap = snapshots.borrow_and_update().clone();
                if let Some(s) = &snap {
                    machine.on_snapshot(s);
                }
            }
            permit = tx.reserve(), if ready => {
                let Ok(permit) = permit else { return };
                let s = snap.as_ref().expect("ready implies a snapshot");
                if let Some(out) = machine.next(s, &shared) {
                    permit.send(Ok(out));
                }
            }
        }
    }
}
