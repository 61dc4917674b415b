//! Limits on what one client can take from a node: connections, streams per connection, message
//! size, and requests per second per session. Requests beyond a limit get a clear error and
//! change nothing; connections beyond the limit are closed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::warn;

/// The largest message a node decodes from a client or a replica.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What a node allows on its client port.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open client connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Concurrent calls (HTTP/2 streams) per connection.
    pub max_streams: u32,
    /// Requests per second on one session stream, with bursts of as many.
    pub session_rate: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_streams: 64,
            session_rate: 10_000,
        }
    }
}

/// A token bucket: `rate` requests per second, in bursts of at most `rate`.
#[derive(Debug)]
pub(crate) struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Whether one more request may go at `now`; if so, it is counted.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// An accepted connection that holds one of the port's connection slots while it is open.
#[derive(Debug)]
pub(crate) struct Counted {
    stream: TcpStream,
    /// Released when the connection is dropped.
    _slot: OwnedSemaphorePermit,
    /// Until the peer has proven itself (replica port): when that must happen by.
    unproven: Option<Pending>,
}

/// The connections of a port whose peers must prove themselves (the replica port's handshake)
/// within a deadline, by peer address. A connection that has not by then is closed, so silent
/// connections cannot keep members out.
#[derive(Clone, Debug, Default)]
pub struct Unproven(Arc<Mutex<HashMap<SocketAddr, Arc<AtomicBool>>>>);

impl Unproven {
    /// The peer at `peer` proved itself: its connection stays.
    pub fn prove(&self, peer: SocketAddr) {
        if let Some(proven) = self.lock().get(&peer) {
            proven.store(true, Ordering::Relaxed);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<AtomicBool>>> {
        // Invariant: no code panics while holding this lock, so it is never poisoned.
        self.0.lock().expect("unproven lock poisoned")
    }
}

/// One connection that has yet to prove itself.
#[derive(Debug)]
struct Pending {
    proven: Arc<AtomicBool>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    registry: Unproven,
    peer: SocketAddr,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.peer);
    }
}

/// `incoming` with at most `max` connections open at once: one more is closed right away, and
/// the refusal is logged (at most once a second). With `prove`, a connection whose peer has not
/// been proven to `prove.0` within `prove.1` is closed.
pub(crate) fn at_most(
    incoming: impl Stream<Item = std::io::Result<TcpStream>>,
    max: usize,
    port: &'static str,
    prove: Option<(Unproven, Duration)>,
) -> impl Stream<Item = std::io::Result<Counted>> {
    let slots = Arc::new(Semaphore::new(max));
    let mut last_warning: Option<Instant> = None;
    incoming.filter_map(move |accepted| match accepted {
        Ok(stream) => match slots.clone().try_acquire_owned() {
            Ok(slot) => Some(Ok(Counted {
                unproven: match (&prove, stream.peer_addr()) {
                    (Some((registry, within)), Ok(peer)) => {
                        let proven = Arc::new(AtomicBool::new(false));
                        registry.lock().insert(peer, proven.clone());
                        Some(Pending {
                            proven,
                            deadline: Box::pin(tokio::time::sleep(*within)),
                            registry: registry.clone(),
                            peer,
                        })
                    }
                    // A connection without a peer address is already closed.
                    _ => None,
                },
                stream,
                _slot: slot,
            })),
            Err(_) => {
                let now = Instant::now();
                if last_warning.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    last_warning = Some(now);
                    let peer = stream.peer_addr().ok();
                    warn!(
                        ?peer,
                        max, "{port} port: too many connections, closing a new one"
                    );
                }
                None
            }
        },
        Err(e) => Some(Err(e)),
    })
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(pending) = &mut self.unproven {
            if pending.proven.load(Ordering::Relaxed) {
                self.unproven = None;
            } else if pending.deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the peer did not prove itself in time",
                )));
            }
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_in_a_burst_then_refills_with_time() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(10, t0);
        assert_eq!((0..20).filter(|_| limit.allow(t0)).count(), 10);
        assert!(!limit.allow(t0 + Duration::from_millis(50)));
        assert!(limit.allow(t0 + Duration::from_millis(150)));
        // Never more than a burst, however long it was idle.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| limit.allow(later)).count(), 10);
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_closed_and_slots_come_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut limited = Box::pin(at_most(accepted, 2, "test", None));
        let _a = TcpStream::connect(addr).await.unwrap();
        let first = limited.next().await.unwrap().unwrap();
        let _b = TcpStream::connect(addr).await.unwrap();
        let _second = limited.next().await.unwrap().unwrap();
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        // A third is closed on accept, while two are open.
        let mut c = TcpStream::connect(addr).await.unwrap();
        let nothing = tokio::time::timeout(Duration::from_millis(200), limited.next()).await;
        assert!(nothing.is_err(), "no third connection is handed out");
        assert_eq!(c.read(&mut byte).await.unwrap(), 0, "closed");
        // Closing one gives its slot back.
        drop(first);
        let mut d = TcpStream::connect(addr).await.unwrap();
        let _third = limited.next().await.unwrap().unwrap();
        let still_open = tokio::time::timeout(Duration::from_millis(100), d.read(&mut byte)).await;
        assert!(still_open.is_err(), "d is served, so nothing closes it");
    }
}
