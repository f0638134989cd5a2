//! The client runtime of the hub framework.
//!
//! Generated `FooHubClient` types wrap a [`HubClient`]: one `Connect` stream per
//! client, on any tonic transport (a `Channel` with TLS, interceptors, ...).
//!
//! - Calls are multiplexed on the one stream by call id; many may be in flight at
//!   once (the server runs one connection's calls in order).
//! - Each call has a timeout ([`ConnectOptions::call_timeout`], default 30 s).
//! - Pushes go to a receiver (the generated `FooHubReceiver` trait), called in order
//!   on the client's reader task: keep its methods quick, or forward to a channel.
//! - The client answers server pings, pings the server itself to measure
//!   [`HubClient::latency`], and treats a server it hears nothing from as gone.
//! - [`HubClient::closed`] waits for the end of the connection and tells why.
//!
//! Errors say what went wrong in a way code can act on: see [`ClientError`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use hub_core::proto::{self, client_control, server_control};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::codegen::{Body, StdError};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};

pub use hub_core::proto::ConnectionInfo;
pub use hub_core::{include_file_descriptor_set, include_proto};

/// What generated code names. Not a stable API for hand-written code.
#[doc(hidden)]
pub mod codegen {
    pub use crate::{
        ClientError, ClientSpec, ConnectOptions, HubClient, PushHandler, ResponseParts,
    };
    pub use hub_core::proto as hub_v1;
    pub use tonic;
}

/// A hub's frames as the client runtime sees them. Implemented by generated code.
pub trait ClientSpec: Send + Sync + 'static {
    /// The request frame (`FooRequest`).
    type Request: prost::Message + Send + 'static;
    /// The response frame (`FooResponse`).
    type Response: prost::Message + Default + Send + 'static;
    /// The request's `oneof call`.
    type Call: Send + 'static;
    /// The response's `oneof event`.
    type Event: Send + 'static;
    /// The `Connect` method's path, e.g. `/chat.v1.ChatHub/Connect`.
    const PATH: &'static str;

    /// Builds a request frame.
    fn request(
        id: u64,
        call: Option<Self::Call>,
        control: Option<proto::ClientControl>,
    ) -> Self::Request;

    /// Splits a response frame.
    fn split(response: Self::Response) -> ResponseParts<Self::Event>;
}

/// A response frame, split.
#[derive(Debug)]
pub struct ResponseParts<E> {
    /// The call answered, or 0.
    pub id: u64,
    /// The push sequence number, or 0.
    pub seq: u64,
    /// The error, if the frame is one.
    pub error: Option<proto::CallError>,
    /// The control message, if any.
    pub control: Option<proto::ServerControl>,
    /// The reply or push.
    pub event: Option<E>,
}

/// Where pushes go. Generated receivers (`FooHubReceiver`) implement it through an adapter.
pub trait PushHandler<E>: Send + Sync + 'static {
    /// A push arrived with sequence number `seq`.
    fn on_push(&self, seq: u64, event: E);

    /// The server sent an error frame not tied to a call (a failed fire-and-forget
    /// call, a malformed frame).
    fn on_error(&self, code: tonic::Code, message: &str) {
        tracing::warn!(?code, message, "hub error frame");
    }
}

/// Why a call (or the connection) failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The hub answered the call with an error: its status code and message.
    #[error("hub returned {:?}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    /// The connection could not be opened (transport error, or refused by the server).
    #[error("could not connect: {0}")]
    Connect(tonic::Status),
    /// No reply within the call's timeout. The call may still run on the server.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The connection is gone; the reason says why.
    #[error("disconnected: {0}")]
    Disconnected(DisconnectReason),
    /// The server answered with a frame of a different kind than the call expects.
    #[error("unexpected reply to `{0}`")]
    UnexpectedReply(&'static str),
}

impl ClientError {
    /// The gRPC status code behind the error. Never `Ok`: a call cut short by a
    /// connection that ended cleanly (status `Ok`) did not complete, which is `Unavailable`.
    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::Status(s) | ClientError::Connect(s) => s.code(),
            ClientError::Timeout(_) => tonic::Code::DeadlineExceeded,
            ClientError::Disconnected(r) if r.code == tonic::Code::Ok => tonic::Code::Unavailable,
            ClientError::Disconnected(r) => r.code,
            ClientError::UnexpectedReply(_) => tonic::Code::Internal,
        }
    }
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisconnectReason {
    /// The status the stream ended with (`Ok` for a clean close).
    pub code: tonic::Code,
    /// The reason: the server's goodbye, the status message, or the client's own.
    pub message: String,
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// How to connect.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Metadata sent with the `Connect` request (e.g. `authorization`).
    pub metadata: MetadataMap,
    /// Default time limit of each call. `None`: wait forever. Default 30 s.
    pub call_timeout: Option<Duration>,
    /// How long to wait for the server's hello. Default 10 s.
    pub connect_timeout: Duration,
    /// How often the client pings the server (measures latency). `None`: never. Default 10 s.
    pub ping_interval: Option<Duration>,
    /// The server is considered gone after this long without a frame from it.
    /// `None`: three times the server's heartbeat interval (from its hello), or never
    /// if it sends none. Default `None`.
    pub dead_after: Option<Duration>,
    /// Frames the client may queue for sending before calls wait. Default 256.
    pub send_queue: usize,
    /// The largest frame the client accepts from the server, in bytes. A larger one
    /// ends the connection (`OUT_OF_RANGE`), so make it at least the server's
    /// `max_message_bytes` (its hello says it). Default 4 MiB, tonic's default, four
    /// times the server's default.
    pub max_message_bytes: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            metadata: MetadataMap::new(),
            call_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(10)),
            dead_after: None,
            send_queue: 256,
            max_message_bytes: 4 * 1024 * 1024,
        }
    }
}

impl ConnectOptions {
    /// Adds an ASCII metadata entry (an invalid value is refused).
    pub fn metadata(mut self, key: &'static str, value: &str) -> Result<Self, ClientError> {
        let v: AsciiMetadataValue = value.parse().map_err(|_| {
            ClientError::Connect(tonic::Status::invalid_argument(format!(
                "invalid metadata value for {key}"
            )))
        })?;
        self.metadata.insert(key, v);
        Ok(self)
    }

    /// Sets [`ConnectOptions::call_timeout`].
    pub fn call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::ping_interval`].
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`ConnectOptions::dead_after`].
    pub fn dead_after(mut self, after: Option<Duration>) -> Self {
        self.dead_after = after;
        self
    }

    /// Sets [`ConnectOptions::max_message_bytes`].
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }
}

type Pending<E> = HashMap<u64, oneshot::Sender<Result<E, ClientError>>>;

struct Shared<S: ClientSpec> {
    /// Calls waiting for their reply, by id; `None` once the connection is gone.
    pending: Mutex<Option<Pending<S::Event>>>,
    /// Why the connection ended, once it has.
    closed: watch::Sender<Option<DisconnectReason>>,
    /// The last measured round trip.
    latency: Mutex<Option<Duration>>,
}

/// A connection to a hub. Cheap to clone; the connection closes (cleanly, after the
/// server answers what was sent) when the last clone is dropped.
pub struct HubClient<S: ClientSpec> {
    tx: mpsc::Sender<S::Request>,
    shared: Arc<Shared<S>>,
    next_id: Arc<AtomicU64>,
    info: Arc<ConnectionInfo>,
    call_timeout: Option<Duration>,
}

impl<S: ClientSpec> Clone for HubClient<S> {
    fn clone(&self) -> Self {
        HubClient {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
            next_id: self.next_id.clone(),
            info: self.info.clone(),
            call_timeout: self.call_timeout,
        }
    }
}

impl<S: ClientSpec> std::fmt::Debug for HubClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("connection_id", &self.info.connection_id)
            .field("hub", &self.info.hub)
            .finish()
    }
}

impl<S: ClientSpec> HubClient<S> {
    /// Opens the `Connect` stream on `service` (a tonic `Channel`, possibly wrapped
    /// in interceptors) and waits for the server's hello.
    pub async fn connect<T>(
        service: T,
        options: ConnectOptions,
        handler: Arc<dyn PushHandler<S::Event>>,
    ) -> Result<Self, ClientError>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<StdError>,
        T::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    {
        let (tx, rx) = mpsc::channel::<S::Request>(options.send_queue.max(1));
        let mut grpc =
            tonic::client::Grpc::new(service).max_decoding_message_size(options.max_message_bytes);
        grpc.ready().await.map_err(|e| {
            ClientError::Connect(tonic::Status::unavailable(format!(
                "service not ready: {}",
                e.into()
            )))
        })?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        *request.metadata_mut() = options.metadata.clone();
        let path = http::uri::PathAndQuery::from_static(S::PATH);
        let codec = tonic_prost::ProstCodec::<S::Request, S::Response>::default();
        let open = grpc.streaming(request, path, codec);
        let mut stream = tokio::time::timeout(options.connect_timeout, open)
            .await
            .map_err(|_| {
                ClientError::Connect(tonic::Status::deadline_exceeded("no response to Connect"))
            })?
            .map_err(ClientError::Connect)?
            .into_inner();
        let first = tokio::time::timeout(options.connect_timeout, stream.message())
            .await
            .map_err(|_| {
                ClientError::Connect(tonic::Status::deadline_exceeded("no hello from the server"))
            })?
            .map_err(ClientError::Connect)?
            .ok_or_else(|| {
                ClientError::Connect(tonic::Status::unavailable("stream ended before hello"))
            })?;
        let info = match S::split(first).control.and_then(|c| c.kind) {
            Some(server_control::Kind::Hello(info)) => info,
            _ => {
                return Err(ClientError::Connect(tonic::Status::internal(
                    "the server's first frame was not a hello: is this a hub?",
                )));
            }
        };
        let (closed, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            pending: Mutex::new(Some(HashMap::new())),
            closed,
            latency: Mutex::new(None),
        });
        let dead_after = options.dead_after.or_else(|| {
            (info.heartbeat_interval_ms > 0)
                .then(|| Duration::from_millis(info.heartbeat_interval_ms * 3))
        });
        let reader = Reader::<S> {
            shared: shared.clone(),
            tx: tx.downgrade(),
            handler,
            ping_interval: options.ping_interval,
            dead_after,
        };
        tokio::spawn(reader.run(stream));
        Ok(HubClient {
            tx,
            shared,
            next_id: Arc::new(AtomicU64::new(0)),
            info: Arc::new(info),
            call_timeout: options.call_timeout,
        })
    }

    /// What the server said about this connection in its hello.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// This connection's id on the server.
    pub fn connection_id(&self) -> &str {
        &self.info.connection_id
    }

    /// The last measured round-trip time to the server, if any.
    pub fn latency(&self) -> Option<Duration> {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some()
    }

    /// Waits for the connection to end and tells why.
    pub async fn closed(&self) -> DisconnectReason {
        let mut rx = self.shared.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(gone),
            Err(_) => gone(),
        }
    }

    fn reason(&self) -> DisconnectReason {
        self.shared.closed.borrow().clone().unwrap_or_else(gone)
    }

    /// Makes a call with the default timeout and waits for its reply.
    pub async fn call(&self, call: S::Call) -> Result<S::Event, ClientError> {
        self.call_with_timeout(call, self.call_timeout).await
    }

    /// Makes a call with its own timeout (`None`: none).
    pub async fn call_with_timeout(
        &self,
        call: S::Call,
        timeout: Option<Duration>,
    ) -> Result<S::Event, ClientError> {
        let id = self.next_id.fetch_add(1, Relaxed) + 1;
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match pending.as_mut() {
                Some(p) => p.insert(id, reply_tx),
                None => return Err(ClientError::Disconnected(self.reason())),
            };
        }
        let forget = |shared: &Shared<S>| {
            if let Some(p) = shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                p.remove(&id);
            }
        };
        // One timer for the whole call: queueing the frame and waiting for the reply.
        let exchange = async {
            if self
                .tx
                .send(S::request(id, Some(call), None))
                .await
                .is_err()
            {
                forget(&self.shared);
                return Err(ClientError::Disconnected(self.reason()));
            }
            reply_rx
                .await
                .unwrap_or_else(|_| Err(ClientError::Disconnected(self.reason())))
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
                forget(&self.shared);
                Err(ClientError::Timeout(t))
            }),
            None => exchange.await,
        }
    }

    /// Sends a fire-and-forget call (id 0): no reply; a failure comes back as an
    /// error frame to [`PushHandler::on_error`].
    pub async fn send(&self, call: S::Call) -> Result<(), ClientError> {
        self.tx
            .send(S::request(0, Some(call), None))
            .await
            .map_err(|_| ClientError::Disconnected(self.reason()))
    }
}

/// Why the stream ended, from what its last read returned (`Ok(Some(_))` never comes here).
fn end_reason<T>(
    end: Result<Option<T>, tonic::Status>,
    goodbye: &mut Option<DisconnectReason>,
) -> DisconnectReason {
    goodbye.take().unwrap_or_else(|| match end {
        Err(status) => DisconnectReason {
            code: status.code(),
            message: status.message().to_owned(),
        },
        Ok(_) => DisconnectReason {
            code: tonic::Code::Ok,
            message: "the server closed the stream".into(),
        },
    })
}

fn gone() -> DisconnectReason {
    DisconnectReason {
        code: tonic::Code::Unavailable,
        message: "connection closed".into(),
    }
}

struct Reader<S: ClientSpec> {
    shared: Arc<Shared<S>>,
    /// Weak, so that dropping every `HubClient` ends the request stream.
    tx: mpsc::WeakSender<S::Request>,
    handler: Arc<dyn PushHandler<S::Event>>,
    ping_interval: Option<Duration>,
    dead_after: Option<Duration>,
}

impl<S: ClientSpec> Reader<S> {
    async fn run(self, mut stream: tonic::Streaming<S::Response>) {
        // Never a zero period: `interval` panics on it.
        let min = Duration::from_millis(1);
        let period = self
            .ping_interval
            .unwrap_or(Duration::from_secs(3600))
            .max(min);
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        let check = self
            .dead_after
            .map_or(Duration::from_secs(3600), |d| d / 4)
            .max(min);
        let mut watchdog = tokio::time::interval_at(Instant::now() + check, check);
        // Liveness without a clock read per frame: frames set `heard`; the watchdog
        // notes when it last saw `heard` set, and gives up once that is too long ago.
        let mut heard = false;
        let mut alive_at = Instant::now();
        let mut ping: Option<(u64, Instant)> = None;
        // Each ping gets a new nonce, so a late pong cannot match a newer ping.
        let mut nonce = 0u64;
        let mut goodbye: Option<DisconnectReason> = None;
        let reason = loop {
            tokio::select! {
                msg = stream.message() => match msg {
                    Ok(Some(frame)) => {
                        heard = true;
                        self.on_frame(frame, &mut ping, &mut goodbye);
                        // Frames already received are handled here, not one pass of the
                        // select (and its timers) each; a bounded batch keeps timers fair.
                        let mut ended = None;
                        for _ in 0..64 {
                            match stream.message().now_or_never() {
                                Some(Ok(Some(frame))) => self.on_frame(frame, &mut ping, &mut goodbye),
                                Some(end) => {
                                    ended = Some(end);
                                    break;
                                }
                                None => break,
                            }
                        }
                        if let Some(end) = ended {
                            break end_reason(end, &mut goodbye);
                        }
                    }
                    end => break end_reason(end, &mut goodbye),
                },
                _ = ticker.tick(), if self.ping_interval.is_some() => {
                    nonce += 1;
                    ping = Some((nonce, Instant::now()));
                    self.control(client_control::Kind::Ping(proto::Ping { nonce, last_rtt_us: 0 }));
                }
                _ = watchdog.tick(), if self.dead_after.is_some() => {
                    if std::mem::take(&mut heard) {
                        alive_at = Instant::now();
                    }
                    if let Some(limit) = self.dead_after
                        && alive_at.elapsed() > limit
                    {
                        break DisconnectReason {
                            code: tonic::Code::Unavailable,
                            message: format!("heartbeat timeout: nothing from the server for {limit:?}"),
                        };
                    }
                }
            }
        };
        tracing::debug!(%reason, "hub connection ended");
        let pending = {
            let mut slot = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            self.shared.closed.send_replace(Some(reason.clone()));
            slot.take()
        };
        for (_, waiter) in pending.into_iter().flatten() {
            let _ = waiter.send(Err(ClientError::Disconnected(reason.clone())));
        }
    }

    fn control(&self, kind: client_control::Kind) {
        if let Some(tx) = self.tx.upgrade() {
            let _ = tx.try_send(S::request(
                0,
                None,
                Some(proto::ClientControl { kind: Some(kind) }),
            ));
        }
    }

    fn on_frame(
        &self,
        frame: S::Response,
        ping: &mut Option<(u64, Instant)>,
        goodbye: &mut Option<DisconnectReason>,
    ) {
        let parts = S::split(frame);
        if let Some(kind) = parts.control.and_then(|c| c.kind) {
            match kind {
                server_control::Kind::Ping(p) => {
                    self.control(client_control::Kind::Pong(proto::Pong { nonce: p.nonce }));
                }
                server_control::Kind::Pong(p) => {
                    if let Some((nonce, sent)) = *ping
                        && nonce == p.nonce
                    {
                        *self
                            .shared
                            .latency
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(sent.elapsed());
                        *ping = None;
                    }
                }
                server_control::Kind::Goodbye(g) => {
                    *goodbye = Some(DisconnectReason {
                        code: tonic::Code::from_i32(g.code),
                        message: g.reason,
                    });
                }
                server_control::Kind::Hello(_) => {}
            }
        }
        if parts.id != 0 {
            let waiter = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .and_then(|p| p.remove(&parts.id));
            let Some(waiter) = waiter else {
                tracing::debug!(id = parts.id, "reply to a call no longer waited for");
                return;
            };
            let result = match (parts.error, parts.event) {
                (Some(e), _) => Err(ClientError::Status(tonic::Status::new(
                    tonic::Code::from_i32(e.code),
                    e.message,
                ))),
                (None, Some(event)) => Ok(event),
                (None, None) => Err(ClientError::UnexpectedReply("an empty frame")),
            };
            let _ = waiter.send(result);
        } else if let Some(e) = parts.error {
            self.handler
                .on_error(tonic::Code::from_i32(e.code), &e.message);
        } else if let Some(event) = parts.event {
            self.handler.on_push(parts.seq, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn reason(code: Code, message: &str) -> DisconnectReason {
        DisconnectReason {
            code,
            message: message.into(),
        }
    }

    #[test]
    fn error_codes() {
        let cases = [
            (
                ClientError::Status(tonic::Status::not_found("x")),
                Code::NotFound,
            ),
            (
                ClientError::Status(tonic::Status::internal("panicked")),
                Code::Internal,
            ),
            (
                ClientError::Connect(tonic::Status::permission_denied("no")),
                Code::PermissionDenied,
            ),
            (
                ClientError::Connect(tonic::Status::unavailable("refused")),
                Code::Unavailable,
            ),
            (
                ClientError::Timeout(Duration::from_millis(5)),
                Code::DeadlineExceeded,
            ),
            (
                ClientError::Disconnected(reason(Code::ResourceExhausted, "outbound queue full")),
                Code::ResourceExhausted,
            ),
            (
                ClientError::Disconnected(reason(Code::Unavailable, "server shutting down")),
                Code::Unavailable,
            ),
            (ClientError::UnexpectedReply("join"), Code::Internal),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code, "{err}");
        }
    }

    #[test]
    fn an_error_is_never_ok() {
        // The server ended the stream cleanly while a call waited for its reply.
        let err = ClientError::Disconnected(reason(Code::Ok, "the server closed the stream"));
        assert_eq!(err.code(), Code::Unavailable);
    }

    #[test]
    fn errors_say_what_happened() {
        let shown = ClientError::Status(tonic::Status::not_found("no such room")).to_string();
        assert!(
            shown.contains("NotFound") && shown.contains("no such room"),
            "{shown}"
        );
        let shown = ClientError::Disconnected(reason(Code::Unavailable, "maintenance")).to_string();
        assert!(shown.contains("maintenance"), "{shown}");
        let shown = ClientError::Timeout(Duration::from_secs(2)).to_string();
        assert!(shown.contains("2s"), "{shown}");
    }

    #[test]
    fn invalid_metadata_is_refused() {
        let err = ConnectOptions::default()
            .metadata("x-user", "caf\u{e9}\n")
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let ok = ConnectOptions::default()
            .metadata("x-user", "alice")
            .unwrap();
        assert_eq!(ok.metadata.get("x-user").unwrap(), "alice");
    }
}
