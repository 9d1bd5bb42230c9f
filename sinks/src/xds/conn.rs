//! Accepted connections, and the limits on them: a cap on open connections
//! and a deadline to open the first stream.
//!
//! A TCP peer that never speaks, or sends only the HTTP/2 preface, would
//! otherwise hold a file descriptor forever: HTTP/2 keepalive only starts
//! once hyper has a session, and nothing else times out. So each connection
//! carries a deadline ([`Conn`]); the first request of any service (ADS,
//! health, reflection) lifts it (`stream_opened`, set by an interceptor in
//! server.rs). Past it, the connection's reads fail and hyper drops it. A
//! connection that opened a stream is never timed out by this; dead peers
//! among those are found by HTTP/2 keepalive pings.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::metrics::XdsMetrics;

/// File descriptors kept free for everything else (the log, the admin port,
/// accepting and closing refused connections).
pub const FD_HEADROOM: u64 = 1024;

/// The default connection cap: the open-file limit minus [`FD_HEADROOM`],
/// and at least half the limit when the limit is small.
pub fn default_max_connections() -> usize {
    let limit = rlimit::Resource::NOFILE.get().map(|(soft, _)| soft).unwrap_or(1024);
    limit.saturating_sub(FD_HEADROOM).max(limit / 2).max(1) as usize
}

/// What tonic puts in each request's extensions for this connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    opened: Arc<AtomicBool>,
}

impl ConnInfo {
    /// A stream was opened: the handshake deadline no longer applies.
    pub fn stream_opened(&self) {
        self.opened.store(true, Ordering::Relaxed);
    }
}

/// A TCP connection with its handshake deadline and its slot under the cap.
pub struct Conn {
    tcp: TcpStream,
    info: ConnInfo,
    /// Until a stream opens; then None.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
    timed_out: Counter,
    _slot: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no stream opened in time")));
        }
        if let Some(deadline) = &mut this.deadline {
            if this.info.opened.load(Ordering::Relaxed) {
                this.deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                // hyper polls reads for as long as the connection lives, so
                // the timer is always armed while no stream has opened.
                this.expired = true;
                this.timed_out.inc();
                tracing::debug!(peer = ?this.info.remote, "xDS connection opened no stream in time; closing it");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no stream opened in time")));
            }
        }
        Pin::new(&mut this.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Connection limits (`[xds]` in keelson.toml).
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

/// How often a burst of refusals is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Accepted connections. An accept error (EMFILE when the file limit is
/// reached, a connection reset before accept) is logged and retried after a
/// pause; fed to tonic directly, it would end the whole server. Over the cap,
/// a connection is closed at once and counted.
pub fn accept_loop(
    listener: tokio::net::TcpListener,
    limits: ConnLimits,
    metrics: XdsMetrics,
) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.min(Semaphore::MAX_PERMITS)));
    tokio::spawn(async move {
        let mut refusals = Refusals::default();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        drop(tcp);
                        metrics.connections_refused.inc();
                        refusals.note(limits.max_connections);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let conn = Conn {
                        tcp,
                        info: ConnInfo { remote: Some(remote), opened: Arc::default() },
                        deadline: Some(Box::pin(tokio::time::sleep(limits.handshake_timeout))),
                        expired: false,
                        timed_out: metrics.connections_timed_out.clone(),
                        _slot: slot,
                    };
                    if tx.send(Ok(conn)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!("xDS accept failed (retrying in 100 ms): {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Logs refusals once per burst, not once per connection.
#[derive(Default)]
struct Refusals {
    last_log: Option<Instant>,
    since_log: u64,
}

impl Refusals {
    fn note(&mut self, cap: usize) {
        self.since_log += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                max_connections = cap,
                refused = self.since_log,
                "xDS connection cap reached: refusing new connections ([xds] max_connections)"
            );
            self.last_log = Some(Instant::now());
            self.since_log = 0;
        }
    }
}
