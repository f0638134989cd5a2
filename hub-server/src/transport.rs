//! The TCP and HTTP/2 side of a hub server that faces the internet.
//!
//! A hub is an ordinary tonic service and can be served by any
//! `tonic::transport::Server`. Out of the box, that server keeps a socket that never
//! sends a request open forever, answers any number of streams on one connection,
//! and, out of file descriptors, retries `accept` in a busy loop. [`Transport`] is
//! the same server with limits for untrusted clients:
//!
//! | limit | default | what the client sees |
//! |---|---|---|
//! | [`TransportConfig::handshake_timeout`] | 10 s | a connection that opened no request (a bare TCP socket, an HTTP/2 preface and then silence) is closed |
//! | [`TransportConfig::idle_timeout`] | 60 s | a connection with no open request (stream or call) for this long is closed; the client reconnects on its next call |
//! | [`TransportConfig::http2_keepalive_interval`] / [`TransportConfig::http2_keepalive_timeout`] | 20 s / 10 s | HTTP/2 pings on a connection that sent nothing for the interval; no answer within the timeout closes it |
//! | [`TransportConfig::max_concurrent_streams`] | 16 | HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: client libraries hold further streams back until one ends; a client that sends more anyway gets `REFUSED_STREAM` |
//! | [`TransportConfig::tcp_keepalive`] | 60 s | TCP keepalive probes on idle sockets (dead peers behind NAT) |
//! | accept back-off | 10 ms doubling to [`TransportConfig::accept_backoff_max`] (1 s) | out of file descriptors, the server stops accepting for a while instead of spinning; waiting clients are served once descriptors are free |
//!
//! Each trigger is counted in [`Transport::metrics`] ([`TransportMetrics`]).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use hub_server::transport::{Transport, TransportConfig};
//!
//! let (_, svc) = tonic_health::server::health_reporter(); // or a hub, or any tonic service
//! let transport = Transport::new(TransportConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! transport
//!     .server() // a tonic::transport::Server: add layers and services as usual
//!     .add_service(svc)
//!     .serve_with_incoming(transport.incoming(listener))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! How the idle timeouts work: [`Transport::incoming`] wraps each accepted socket in
//! a [`TrackedStream`] that carries a per-connection count of open requests; the
//! layer [`Transport::server`] installs ([`TrackLayer`]) holds that count up from a
//! request's arrival until its response body ends (for a hub, until the stream
//! ends). The socket's reads fail once the count has stayed at zero for the timeout,
//! which makes hyper drop the connection. With tonic's own TLS (`tls_config`) the
//! count cannot be seen; the idle timeouts are then off (a warning is logged) and
//! only HTTP/2 keepalive applies: terminate TLS in front of the server, or wrap the
//! socket yourself before this stream.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use hub_core::{TransportMetrics, TransportSnapshot};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tower::layer::util::{Identity, Stack};

/// Limits of the connections a [`Transport`] accepts. Every field has a default fit
/// for a server on the public internet.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct TransportConfig {
    /// How long a new connection may take to open its first request (a hub stream
    /// or any gRPC call). Catches bare TCP sockets and HTTP/2 clients that send the
    /// preface and then nothing. `None`: no limit. Default 10 s.
    pub handshake_timeout: Option<Duration>,
    /// How long a connection may stay with no open request after its last one ended.
    /// A hub connection is one long request, so this only closes connections whose
    /// hub stream (and every other call) is over. `None`: no limit. Default 60 s.
    pub idle_timeout: Option<Duration>,
    /// HTTP/2 ping interval on a connection that sent nothing for this long. `None`: no pings.
    /// Default 20 s.
    pub http2_keepalive_interval: Option<Duration>,
    /// How long to wait for the answer to an HTTP/2 ping before closing. Default 10 s.
    pub http2_keepalive_timeout: Duration,
    /// Concurrent HTTP/2 streams (hub connections and calls) one TCP connection may
    /// have open, advertised as `SETTINGS_MAX_CONCURRENT_STREAMS`. Default 16.
    pub max_concurrent_streams: u32,
    /// TCP keepalive idle time on accepted sockets. `None`: off. Default 60 s.
    pub tcp_keepalive: Option<Duration>,
    /// `TCP_NODELAY` on accepted sockets (small frames go out at once). Default on.
    pub tcp_nodelay: bool,
    /// The longest pause of the accept loop after an error such as `EMFILE` (the
    /// pause starts at 10 ms and doubles while the errors go on). Default 1 s.
    pub accept_backoff_max: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            handshake_timeout: Some(Duration::from_secs(10)),
            idle_timeout: Some(Duration::from_secs(60)),
            http2_keepalive_interval: Some(Duration::from_secs(20)),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 16,
            tcp_keepalive: Some(Duration::from_secs(60)),
            tcp_nodelay: true,
            accept_backoff_max: Duration::from_secs(1),
        }
    }
}

impl TransportConfig {
    /// Sets [`TransportConfig::handshake_timeout`].
    pub fn handshake_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets [`TransportConfig::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`TransportConfig::http2_keepalive_interval`] and
    /// [`TransportConfig::http2_keepalive_timeout`].
    pub fn http2_keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.http2_keepalive_interval = interval;
        self.http2_keepalive_timeout = timeout;
        self
    }

    /// Sets [`TransportConfig::max_concurrent_streams`] (at least 1).
    pub fn max_concurrent_streams(mut self, streams: u32) -> Self {
        self.max_concurrent_streams = streams.max(1);
        self
    }

    /// Sets [`TransportConfig::tcp_keepalive`].
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// Sets [`TransportConfig::tcp_nodelay`].
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = on;
        self
    }

    /// Sets [`TransportConfig::accept_backoff_max`].
    pub fn accept_backoff_max(mut self, max: Duration) -> Self {
        self.accept_backoff_max = max;
        self
    }
}

/// A configured `tonic::transport::Server` and the accept loop that feeds it. See
/// the [module docs](self).
#[derive(Clone, Debug)]
pub struct Transport {
    config: TransportConfig,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    /// What the limits did.
    metrics: TransportMetrics,
    /// Set when a request arrived without the connection's tracker (tonic's TLS wraps
    /// the socket): idle timeouts would then close busy connections, so they are off.
    untracked: AtomicBool,
}

impl Transport {
    /// A transport with these limits.
    pub fn new(config: TransportConfig) -> Self {
        Transport {
            config,
            shared: Arc::default(),
        }
    }

    /// Its limits.
    pub fn config(&self) -> &TransportConfig {
        &self.config
    }

    /// A `tonic::transport::Server` with HTTP/2 keepalive, the stream cap and the
    /// request tracking of the idle timeouts. Serve it with
    /// `serve_with_incoming(transport.incoming(listener))` (or `…_shutdown`): its
    /// own `serve(addr)` would bypass the accept loop and the idle timeouts.
    pub fn server(&self) -> tonic::transport::Server<Stack<TrackLayer, Identity>> {
        let c = &self.config;
        tonic::transport::Server::builder()
            .http2_keepalive_interval(c.http2_keepalive_interval)
            .http2_keepalive_timeout(Some(c.http2_keepalive_timeout))
            .max_concurrent_streams(c.max_concurrent_streams)
            .layer(self.layer())
    }

    /// The layer that counts each connection's open requests, for servers built by
    /// hand (`Server::builder().layer(transport.layer())`). [`Transport::server`]
    /// already has it.
    pub fn layer(&self) -> TrackLayer {
        TrackLayer {
            shared: self.shared.clone(),
        }
    }

    /// The accepted connections of `listener`, with the socket options set, each
    /// wrapped for the idle timeouts, and with back-off on accept errors.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        let inner = TcpIncoming::from(listener)
            .with_nodelay(Some(self.config.tcp_nodelay))
            .with_keepalive(self.config.tcp_keepalive);
        Incoming {
            inner,
            config: self.config.clone(),
            shared: self.shared.clone(),
            pause: None,
            backoff: MIN_BACKOFF,
        }
    }

    /// What the limits did so far.
    pub fn metrics(&self) -> TransportSnapshot {
        self.shared.metrics.snapshot()
    }
}

const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// The accepted connections of a listener (see [`Transport::incoming`]). Never
/// yields an error: accept errors are counted, logged and waited out.
pub struct Incoming {
    inner: TcpIncoming,
    config: TransportConfig,
    shared: Arc<Shared>,
    /// Set while the loop waits after an accept error.
    pause: Option<Pin<Box<Sleep>>>,
    /// The next pause.
    backoff: Duration,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish()
    }
}

impl Incoming {
    /// The address it accepts on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Errors about one connection that is already gone; the next accept may well work.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

impl Stream for Incoming {
    type Item = io::Result<TrackedStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Ok(stream)) => {
                    this.backoff = MIN_BACKOFF;
                    this.shared
                        .metrics
                        .connections_accepted
                        .fetch_add(1, Relaxed);
                    return Poll::Ready(Some(Ok(TrackedStream::new(
                        stream,
                        &this.config,
                        this.shared.clone(),
                    ))));
                }
                Some(Err(e)) if is_connection_error(&e) => continue,
                Some(Err(e)) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the pending connection stays in
                    // the backlog and the listener stays readable, so retrying at once
                    // would spin. Wait, longer while it goes on.
                    this.shared.metrics.accept_errors.fetch_add(1, Relaxed);
                    if this.backoff == MIN_BACKOFF {
                        tracing::warn!(error = %e, "accept failed; pausing the accept loop");
                    } else {
                        tracing::debug!(error = %e, pause = ?this.backoff, "accept failed again");
                    }
                    this.pause = Some(Box::pin(tokio::time::sleep(this.backoff)));
                    this.backoff = (this.backoff * 2).min(this.config.accept_backoff_max);
                }
            }
        }
    }
}

/// The open requests of one connection.
#[derive(Debug)]
struct Activity {
    /// Requests whose response has not ended.
    open: AtomicUsize,
    /// Whether any request arrived yet (before that, the handshake timeout applies).
    started: AtomicBool,
    /// When `open` last went to zero, as milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
    /// The accept time, the origin of `idle_since_ms`.
    epoch: Instant,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
}

/// What a [`TrackedStream`] tells the request layer: the peer's addresses and the
/// connection's request count.
#[derive(Clone, Debug)]
pub struct TrackedConnectInfo {
    /// The addresses, as tonic's own TCP streams report them (`Request::remote_addr`).
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
}

/// An accepted TCP connection that closes itself when it stays without a request
/// (see [`TransportConfig::handshake_timeout`] and [`TransportConfig::idle_timeout`]).
#[derive(Debug)]
pub struct TrackedStream {
    inner: TcpStream,
    activity: Arc<Activity>,
    shared: Arc<Shared>,
    handshake_timeout: Option<Duration>,
    idle_timeout: Option<Duration>,
    /// The next time to check whether the connection is idle.
    check: Option<Pin<Box<Sleep>>>,
    /// Set once the timeout closed it: reads fail from then on.
    expired: bool,
}

impl TrackedStream {
    fn new(inner: TcpStream, config: &TransportConfig, shared: Arc<Shared>) -> Self {
        let check = config
            .handshake_timeout
            .or(config.idle_timeout)
            .map(|t| Box::pin(tokio::time::sleep(t)));
        TrackedStream {
            inner,
            activity: Arc::new(Activity {
                open: AtomicUsize::new(0),
                started: AtomicBool::new(false),
                idle_since_ms: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
            shared,
            handshake_timeout: config.handshake_timeout,
            idle_timeout: config.idle_timeout,
            check,
            expired: false,
        }
    }

    /// When the connection would be idle for too long, if it has no open request now.
    fn deadline(&self) -> Option<Instant> {
        let a = &self.activity;
        if !a.started.load(Relaxed) {
            if let Some(t) = self.handshake_timeout {
                return Some(a.epoch + t);
            }
            // No handshake limit: wait for the first request like for a busy connection.
            return self.idle_timeout.map(|idle| Instant::now() + idle);
        }
        let idle = self.idle_timeout?;
        if a.open.load(Relaxed) > 0 {
            // Busy: look again one timeout from now.
            return Some(Instant::now() + idle);
        }
        Some(a.epoch + Duration::from_millis(a.idle_since_ms.load(Relaxed)) + idle)
    }

    /// Polls the idle timer; `true` when the connection has been idle too long.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.expired {
            return true;
        }
        loop {
            let Some(check) = self.check.as_mut() else {
                return false;
            };
            if check.as_mut().poll(cx).is_pending() {
                return false;
            }
            if self.shared.untracked.load(Relaxed) {
                self.check = None;
                return false;
            }
            match self.deadline() {
                None => self.check = None,
                Some(at) if at <= Instant::now() && self.activity.open.load(Relaxed) == 0 => {
                    self.expired = true;
                    self.shared.metrics.idle_closed.fetch_add(1, Relaxed);
                    tracing::debug!(peer = ?self.inner.peer_addr().ok(), "closing a connection without requests");
                    return true;
                }
                Some(at) => {
                    if let Some(check) = self.check.as_mut() {
                        check.as_mut().reset(at);
                    }
                }
            }
        }
    }
}

impl Connected for TrackedStream {
    type ConnectInfo = TrackedConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        TrackedConnectInfo {
            tcp: self.inner.connect_info(),
            activity: self.activity.clone(),
        }
    }
}

impl AsyncRead for TrackedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // hyper always keeps a read pending on an HTTP/2 connection, so the timer is
        // polled here, with the connection's waker.
        if this.poll_expired(cx) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection without requests timed out",
            )));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Counts each connection's open requests for the idle timeouts (see
/// [`Transport::layer`]).
#[derive(Clone, Debug)]
pub struct TrackLayer {
    shared: Arc<Shared>,
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = TrackService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TrackService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// The service [`TrackLayer`] makes.
#[derive(Clone, Debug)]
pub struct TrackService<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Holds a connection's request count up while a request is open.
#[derive(Debug)]
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn new(activity: Arc<Activity>) -> Self {
        activity.started.store(true, Relaxed);
        activity.open.fetch_add(1, Relaxed);
        OpenRequest(activity)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let a = &self.0;
        // Set the time before the count reaches zero, so a timer that sees zero sees it.
        a.idle_since_ms.store(a.now_ms(), Relaxed);
        a.open.fetch_sub(1, Relaxed);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B, ResBody> tower::Service<http::Request<B>> for TrackService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        self.shared.metrics.requests.fetch_add(1, Relaxed);
        let open = match req.extensions().get::<TrackedConnectInfo>().cloned() {
            Some(info) => {
                // So `tonic::Request::remote_addr` works as with tonic's own streams.
                req.extensions_mut().insert(info.tcp);
                Some(OpenRequest::new(info.activity))
            }
            None => {
                if !self.shared.untracked.swap(true, Relaxed) {
                    tracing::warn!(
                        "a request arrived on a connection the transport does not track \
                         (tonic TLS, or not served from Transport::incoming): idle timeouts are off"
                    );
                }
                None
            }
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await?;
            Ok(res.map(|body| TrackedBody {
                inner: Box::pin(body),
                _open: open,
            }))
        })
    }
}

/// A response body that keeps its connection counted as busy until it ends.
pub struct TrackedBody<B> {
    inner: Pin<Box<B>>,
    _open: Option<OpenRequest>,
}

impl<B> std::fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl<B> http_body::Body for TrackedBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.inner.as_mut().poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_errors_that_pause_the_loop() {
        for kind in [
            io::ErrorKind::ConnectionAborted,
            io::ErrorKind::ConnectionReset,
        ] {
            assert!(is_connection_error(&io::Error::from(kind)));
        }
        // EMFILE
        assert!(!is_connection_error(&io::Error::from_raw_os_error(24)));
    }

    #[test]
    fn defaults_are_bounded() {
        let c = TransportConfig::default();
        assert!(c.handshake_timeout.is_some() && c.idle_timeout.is_some());
        assert!(c.http2_keepalive_interval.is_some());
        assert!(c.max_concurrent_streams <= 100);
        assert_eq!(
            TransportConfig::default()
                .max_concurrent_streams(0)
                .max_concurrent_streams,
            1
        );
    }
}
