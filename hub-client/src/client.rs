//! The client handle: [`HubClient`] opens the stream and makes calls.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hub_core::proto::{ConnectionInfo, server_control};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::oneshot::error::RecvError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tonic::codegen::{Body, StdError};

use crate::connection::Reader;
use crate::error::{ClientError, CloseStatus, gone};
use crate::options::ConnectOptions;
use crate::shared::{Calls, Shared};

/// Where a call's reply comes from.
type Receiver<E> = oneshot::Receiver<Result<E, ClientError>>;
use crate::spec::{ClientSpec, PushHandler};

/// A connection to a hub. Cheap to clone (one reference count); the connection
/// closes (cleanly, after the server answers what was sent) when the last clone is
/// dropped.
pub struct HubClient<S: ClientSpec> {
    inner: Arc<Inner<S>>,
}

/// What the clones of a [`HubClient`] share.
struct Inner<S: ClientSpec> {
    /// The request stream; dropped with the last clone, which ends it.
    tx: mpsc::Sender<S::Request>,
    shared: Arc<Shared<S>>,
    next_id: AtomicU64,
    info: ConnectionInfo,
}

impl<S: ClientSpec> Clone for HubClient<S> {
    fn clone(&self) -> Self {
        HubClient {
            inner: self.inner.clone(),
        }
    }
}

impl<S: ClientSpec> std::fmt::Debug for HubClient<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("connection_id", &self.inner.info.connection_id)
            .field("hub", &self.inner.info.hub)
            .finish()
    }
}

impl<S: ClientSpec> HubClient<S> {
    /// Opens the `Connect` stream on `service` (a tonic `Channel`, possibly wrapped
    /// in interceptors) and waits for the server's hello.
    pub async fn connect<T>(
        service: T,
        options: ConnectOptions,
        handler: Arc<dyn PushHandler<S::Event, S::Answer>>,
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
            calls: Mutex::new(Some(Calls::new())),
            call_timeout: options.call_timeout,
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
        // Unconstrained by tokio's task budget: the reader polls its timer only once
        // per reset and then reads its state (see `Reader::run`), which needs that
        // poll to register the timer; with no budget left, a `Sleep` would return
        // `Pending` without registering. The reader yields whenever its stream has
        // nothing ready, which the budget would not change (h2 streams use none).
        tokio::spawn(tokio::task::unconstrained(reader.run(stream)));
        Ok(HubClient {
            inner: Arc::new(Inner {
                tx,
                shared,
                next_id: AtomicU64::new(0),
                info,
            }),
        })
    }

    /// What the server said about this connection in its hello.
    pub fn info(&self) -> &ConnectionInfo {
        &self.inner.info
    }

    /// This connection's id on the server.
    pub fn connection_id(&self) -> &str {
        &self.inner.info.connection_id
    }

    /// The last measured round-trip time to the server, if any.
    pub fn latency(&self) -> Option<Duration> {
        *self
            .inner
            .shared
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.borrow().is_some()
    }

    /// Waits for the connection to end and tells why.
    pub async fn closed(&self) -> CloseStatus {
        let mut rx = self.inner.shared.closed.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_else(gone),
            Err(_) => gone(),
        }
    }

    fn reason(&self) -> CloseStatus {
        self.inner
            .shared
            .closed
            .borrow()
            .clone()
            .unwrap_or_else(gone)
    }

    /// Makes a call with the default timeout and waits for its reply.
    pub async fn call(&self, call: S::Call) -> Result<S::Event, ClientError> {
        self.call_with_timeout(call, self.inner.shared.call_timeout)
            .await
    }

    /// Makes a call with its own timeout (`None`: none).
    ///
    /// A call with the client's default timeout ([`ConnectOptions::call_timeout`]) is
    /// timed by the connection's reader task (one timer for all of them); a call with
    /// another timeout has a timer of its own.
    pub async fn call_with_timeout(
        &self,
        call: S::Call,
        timeout: Option<Duration>,
    ) -> Result<S::Event, ClientError> {
        match timeout {
            Some(t) if timeout != self.inner.shared.call_timeout => {
                // Boxed, like every path but the common one, so that the future of a
                // call (often kept in a `FuturesUnordered` or a task) stays small.
                Box::pin(async move {
                    let (id, reply) = self.register(None)?;
                    let exchange = self.exchange(id, reply, call);
                    tokio::time::timeout(t, exchange).await.unwrap_or_else(|_| {
                        self.forget(id);
                        Err(ClientError::Timeout(t))
                    })
                })
                .await
            }
            _ => {
                // Nothing of the call is kept across an await but its reply's receiver.
                // (No temporary of a `?` or an `if let` may live across an await: a
                // `ClientError` holds a `tonic::Status`, 176 bytes.)
                let (id, mut reply) = self.register(timeout)?;
                let full = self.try_send(id, call)?;
                if let Some(frame) = full {
                    let wait = Box::pin(self.wait_for_room(id, frame, &mut reply));
                    if let Some(done) = wait.await {
                        return done;
                    }
                }
                self.answer(reply.await)
            }
        }
    }

    /// Takes a call id and a place for its reply; with `deadline_in`, the reader task
    /// times the call out then.
    fn register(
        &self,
        deadline_in: Option<Duration>,
    ) -> Result<(u64, Receiver<S::Event>), ClientError> {
        let id = self.inner.next_id.fetch_add(1, Relaxed) + 1;
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut calls = self
            .inner
            .shared
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(calls) = calls.as_mut() else {
            return Err(ClientError::Disconnected(self.reason()));
        };
        if let Some(t) = deadline_in {
            // The clock is read under the lock, so deadlines are queued in order.
            calls.deadlines.push_back((Instant::now() + t, id));
        }
        calls.waiting.insert(id, reply_tx);
        Ok((id, reply_rx))
    }

    /// Forgets call `id`: its reply, if one comes, goes nowhere.
    fn forget(&self, id: u64) {
        if let Some(calls) = self
            .inner
            .shared
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            calls.take(id);
        }
    }

    /// The reply, or why there is none.
    fn answer(
        &self,
        r: Result<Result<S::Event, ClientError>, RecvError>,
    ) -> Result<S::Event, ClientError> {
        r.unwrap_or_else(|_| Err(ClientError::Disconnected(self.reason())))
    }

    /// Sends call `id` and waits for its reply.
    async fn exchange(
        &self,
        id: u64,
        mut reply: Receiver<S::Event>,
        call: S::Call,
    ) -> Result<S::Event, ClientError> {
        let full = self.try_send(id, call)?;
        if let Some(frame) = full {
            let wait = self.wait_for_room(id, frame, &mut reply);
            if let Some(done) = wait.await {
                return done;
            }
        }
        self.answer(reply.await)
    }

    /// Queues call `id` if there is room (`None`); gives the frame back if the queue is full.
    fn try_send(&self, id: u64, call: S::Call) -> Result<Option<S::Request>, ClientError> {
        match self.inner.tx.try_send(S::request(id, Some(call), None)) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(frame)) => Ok(Some(frame)),
            Err(TrySendError::Closed(_)) => {
                self.forget(id);
                Err(ClientError::Disconnected(self.reason()))
            }
        }
    }

    /// Waits for room in the queue for `frame` (`None` once it is queued), or for the
    /// answer first: the reader's timeout, or the end of the connection.
    async fn wait_for_room(
        &self,
        id: u64,
        frame: S::Request,
        reply: &mut Receiver<S::Event>,
    ) -> Option<Result<S::Event, ClientError>> {
        tokio::select! {
            biased;
            r = reply => Some(self.answer(r)),
            sent = self.inner.tx.send(frame) => match sent {
                Ok(()) => None,
                Err(_) => {
                    self.forget(id);
                    Some(Err(ClientError::Disconnected(self.reason())))
                }
            },
        }
    }

    /// How many calls wait for their reply.
    #[cfg(test)]
    pub(crate) fn pending_calls(&self) -> usize {
        self.inner
            .shared
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |c| c.waiting.len())
    }

    /// Sends a fire-and-forget call (id 0): no reply; a failure comes back as an
    /// error frame to [`PushHandler::on_error`].
    pub async fn send(&self, call: S::Call) -> Result<(), ClientError> {
        self.inner
            .tx
            .send(S::request(0, Some(call), None))
            .await
            .map_err(|_| ClientError::Disconnected(self.reason()))
    }
}
