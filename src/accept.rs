//! Accepting connections on the gRPC and health listeners, bounded the same way with or
//! without TLS: a connection reaches tonic only once it has sent the whole HTTP/2 client
//! preface (after its TLS handshake, when there is one) within the handshake timeout, so a
//! silent or dribbling peer holds a descriptor for that long at most. Pending handshakes are
//! capped per listener; when the cap is reached the oldest pending one is closed to make room
//! (a flood of idle connections then cannot keep a well-behaved client, whose preface arrives
//! with its first packet, waiting behind it). A failed accept (out of file descriptors, most
//! often) is logged, counted, and backed off exponentially instead of retried in a busy loop.

use crate::descriptors::{self, Place};
use futures::Stream;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const PREFACE_LEN: usize = 24;
/// Accepted connections handed to tonic but not yet taken by it.
const HANDOFF: usize = 64;
/// First and longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A connection that has not sent the HTTP/2 preface (and finished TLS) by then is closed.
    pub handshake_timeout: Duration,
    /// Connections in that phase at once; beyond, the oldest is closed.
    pub max_pending: usize,
}

/// Which listener, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Grpc,
    Health,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Health => "health",
        }
    }

    fn place(self) -> Place {
        match self {
            Listener::Grpc => Place::GrpcAccept,
            Listener::Health => Place::HealthAccept,
        }
    }
}

/// Plain TCP connections (`TCP_NODELAY` set: gRPC frames are small and latency-bound),
/// each handed over once its preface arrived.
pub fn plain(
    listener: TcpListener,
    which: Listener,
    limits: Limits,
) -> impl Stream<Item = Result<Prefaced<TcpStream>, io::Error>> {
    incoming(listener, which, limits, read_preface)
}

/// TLS connections with the configuration current at accept time, each handed over once
/// its handshake finished and its preface arrived, both within the handshake timeout.
pub fn tls(
    listener: TcpListener,
    which: Listener,
    limits: Limits,
    tls: crate::tls::ReloadableTls,
) -> impl Stream<Item = Result<Prefaced<TlsStream<TcpStream>>, io::Error>> {
    incoming(listener, which, limits, move |stream| {
        let acceptor = TlsAcceptor::from(tls.current());
        async move { read_preface(acceptor.accept(stream).await?).await }
    })
}

/// The accept loop: runs until the returned stream is dropped.
fn incoming<IO, H, Fut>(
    listener: TcpListener,
    which: Listener,
    limits: Limits,
    handshake: H,
) -> ReceiverStream<Result<IO, io::Error>>
where
    IO: Send + 'static,
    H: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(HANDOFF);
    let max_pending = limits.max_pending.max(1);
    tokio::spawn(async move {
        let dropped = |reason: &'static str| {
            crate::metrics::HANDSHAKES_DROPPED.inc([which.label(), reason]);
        };
        // Oldest first. Finished ones are pruned before each new one counts against the cap.
        // Handshakes under way, each with a flag its task raises once the preface is in: from
        // then on it only waits to hand the connection over, and is no longer a handshake
        // the cap may close (that would close a well-behaved client's connection).
        let mut pending: VecDeque<(tokio::task::AbortHandle, Arc<AtomicBool>)> = VecDeque::new();
        let mut backoff = BACKOFF_MIN;
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff = BACKOFF_MIN;
                    accepted
                }
                Err(error) => {
                    accept_failed(which, &error, backoff);
                    // The failed connection stays queued (the listener stays readable):
                    // retrying at once would spin.
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            // Cheap in the common case (the oldest is done); a full pass only near the cap.
            let done = |(task, prefaced): &(tokio::task::AbortHandle, Arc<AtomicBool>)| {
                task.is_finished() || prefaced.load(Ordering::Relaxed)
            };
            while pending.front().is_some_and(done) {
                pending.pop_front();
            }
            if pending.len() >= max_pending {
                pending.retain(|entry| !done(entry));
            }
            if pending.len() >= max_pending
                && let Some((oldest, _)) = pending.pop_front()
            {
                oldest.abort();
                dropped("evicted");
            }
            let tx = tx.clone();
            let handshake = handshake(stream);
            let timeout = limits.handshake_timeout;
            let prefaced = Arc::new(AtomicBool::new(false));
            let flag = prefaced.clone();
            let task = tokio::spawn(async move {
                match tokio::time::timeout(timeout, handshake).await {
                    Ok(Ok(io)) => {
                        flag.store(true, Ordering::Relaxed);
                        let _ = tx.send(Ok(io)).await;
                    }
                    Ok(Err(error)) => {
                        crate::metrics::HANDSHAKES_DROPPED.inc([which.label(), "failed"]);
                        tracing::debug!(%peer, listener = which.label(), %error, "handshake failed");
                    }
                    Err(_) => {
                        crate::metrics::HANDSHAKES_DROPPED.inc([which.label(), "timeout"]);
                        tracing::debug!(%peer, listener = which.label(), ?timeout,
                            "no HTTP/2 preface within the handshake timeout; closed");
                    }
                }
            });
            pending.push_back((task.abort_handle(), prefaced));
        }
    });
    ReceiverStream::new(rx)
}

/// Counts and logs a failed accept: descriptor exhaustion through the rate-limited WARN,
/// anything else at WARN too (accept errors are rare and always worth seeing).
fn accept_failed(which: Listener, error: &io::Error, backoff: Duration) {
    if descriptors::is_exhaustion(error) {
        crate::metrics::ACCEPT_ERRORS.inc([which.label(), "descriptors"]);
        descriptors::exhausted(which.place());
    } else {
        crate::metrics::ACCEPT_ERRORS.inc([which.label(), "other"]);
        tracing::warn!(listener = which.label(), %error, ?backoff, "accept failed; backing off");
    }
}

/// Waits for the peer's first [`PREFACE_LEN`] bytes (not judged here: hyper does that, as
/// before) and keeps them to be read again.
async fn read_preface<IO: AsyncRead + Unpin>(mut io: IO) -> io::Result<Prefaced<IO>> {
    let mut preface = [0; PREFACE_LEN];
    io.read_exact(&mut preface).await?;
    Ok(Prefaced {
        io,
        preface,
        replayed: 0,
    })
}

/// A connection whose first bytes were read ahead: they are read again first, then the
/// connection itself. Writes go straight through.
#[derive(Debug)]
pub struct Prefaced<IO> {
    io: IO,
    preface: [u8; PREFACE_LEN],
    replayed: usize,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefaced<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < PREFACE_LEN {
            let rest = &this.preface[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefaced<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Prefaced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;

    const PREFACE: &[u8; PREFACE_LEN] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    #[tokio::test]
    async fn the_preface_is_read_again_then_the_connection() {
        let (client, server) = tokio::io::duplex(64);
        let (mut client, server) = (client, server);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        drop(client);
        let mut prefaced = read_preface(server).await.unwrap();
        let mut all = Vec::new();
        prefaced.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, [&PREFACE[..], b"frames"].concat());
    }

    #[tokio::test]
    async fn a_peer_closing_before_its_preface_is_an_error() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI *").await.unwrap();
        drop(client);
        let error = read_preface(server).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A client that sent its preface is handed over; silent ones are closed when their
    /// time is up or when a newer one needs their place.
    #[tokio::test]
    async fn silent_connections_are_closed_and_served_ones_handed_over() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            handshake_timeout: Duration::from_millis(300),
            max_pending: 2,
        };
        let mut accepted = Box::pin(plain(listener, Listener::Grpc, limits));
        let evicted = crate::metrics::HANDSHAKES_DROPPED.get(["grpc", "evicted"]);
        // Three silent ones: the first is evicted to make room for the third.
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut good = TcpStream::connect(addr).await.unwrap();
        good.write_all(PREFACE).await.unwrap();
        let mut handed = accepted.next().await.unwrap().unwrap();
        let mut first = [0; PREFACE_LEN];
        handed.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, PREFACE);
        // Every silent one ends closed by the gateway (EOF), by eviction or by the timeout.
        for mut s in silent {
            let mut byte = [0; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte)).await;
            assert!(
                matches!(read, Ok(Ok(0)) | Ok(Err(_))),
                "closed by the gateway: {read:?}"
            );
        }
        assert!(crate::metrics::HANDSHAKES_DROPPED.get(["grpc", "evicted"]) > evicted);
    }

    /// A connection whose preface is in waits to be handed over (tonic is slow to take it):
    /// it is no longer a pending handshake, so silent newcomers never evict it.
    #[tokio::test]
    async fn a_prefaced_connection_waiting_for_handover_is_never_evicted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            handshake_timeout: Duration::from_secs(10),
            max_pending: 2,
        };
        let mut accepted = Box::pin(plain(listener, Listener::Grpc, limits));
        // More prefaced clients than the handover queue holds, none taken yet.
        let clients = HANDOFF + 4;
        let mut good = Vec::new();
        for _ in 0..clients {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(PREFACE).await.unwrap();
            good.push(s);
        }
        // Silent ones beyond the cap: only they can be made room for.
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(addr).await.unwrap());
        }
        // Every prefaced client is handed over, whole.
        for _ in 0..clients {
            let next = tokio::time::timeout(Duration::from_secs(10), accepted.next()).await;
            let mut io = next.expect("handed over in time").unwrap().unwrap();
            let mut first = [0; PREFACE_LEN];
            io.read_exact(&mut first).await.unwrap();
            assert_eq!(&first, PREFACE);
        }
    }
}
