//! The client handle: [`HubClient`] opens the stream and makes calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hub_core::proto::{ConnectionInfo, server_control};
use tokio::sync::{mpsc, oneshot, watch};
use tonic::codegen::{Body, StdError};

use crate::connection::Reader;
use crate::error::{ClientError, DisconnectReason, gone};
use crate::options::ConnectOptions;
use crate::shared::Shared;
use crate::spec::{ClientSpec, PushHandler};

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

    /// How many calls wait for their reply.
    #[cfg(test)]
    pub(crate) fn pending_calls(&self) -> usize {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |p| p.len())
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
