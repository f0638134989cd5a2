//! The client handle: [`HubClient`] opens the stream and makes calls.

use std::collections::hash_map::Entry;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use hub_core::proto::ConnectionInfo;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::codegen::{Body, StdError};

use crate::connection::Reader;
use crate::error::{ClientError, CloseStatus, gone};
use crate::link::{self, Opener, Outbox, Supervisor};
use crate::options::ConnectOptions;
use crate::shared::{Calls, Shared, Slot};
use crate::spec::{ClientSpec, PushHandler};
use crate::state::ConnectionState;

/// A connection to a hub. Cheap to clone (one reference count); the connection
/// closes (cleanly, after the server answers what was sent) when the last clone is
/// dropped.
pub struct HubClient<S: ClientSpec> {
    inner: Arc<Inner<S>>,
}

/// What the clones of a [`HubClient`] share.
struct Inner<S: ClientSpec> {
    /// The request queue; dropped with the last clone, which ends the stream.
    tx: mpsc::Sender<S::Request>,
    shared: Arc<Shared<S>>,
    next_id: AtomicU64,
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
        let info = self.info();
        f.debug_struct("HubClient")
            .field("connection_id", &info.connection_id)
            .field("hub", &info.hub)
            .field("state", &*self.inner.shared.state.borrow())
            .finish()
    }
}

impl<S: ClientSpec> HubClient<S> {
    /// Opens the `Connect` stream on `service` (a tonic `Channel`, possibly wrapped
    /// in interceptors) and waits for the server's hello.
    ///
    /// The first stream is opened once: an error is returned as is. Later, when the
    /// stream drops, the client opens new ones on the same `service` as
    /// [`ConnectOptions::reconnect`] says (a tonic `Channel` reconnects its transport
    /// by itself); see [`HubClient::state`].
    pub async fn connect<T>(
        service: T,
        options: ConnectOptions,
        handler: Arc<dyn PushHandler<S::Event, S::Answer>>,
    ) -> Result<Self, ClientError>
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Send + 'static,
        T::Future: Send,
        T::Error: Into<StdError>,
        T::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    {
        let (tx, rx) = mpsc::channel::<S::Request>(options.send_queue.max(1));
        let grpc = Arc::new(tokio::sync::Mutex::new(
            tonic::client::Grpc::new(service).max_decoding_message_size(options.max_message_bytes),
        ));
        let mut opener: Opener<S> = Box::new(move |request| {
            let grpc = grpc.clone();
            Box::pin(async move {
                let mut grpc = grpc.lock().await;
                grpc.ready().await.map_err(|e| {
                    ClientError::Connect(tonic::Status::unavailable(format!(
                        "service not ready: {}",
                        e.into()
                    )))
                })?;
                let path = http::uri::PathAndQuery::from_static(S::PATH);
                let codec = tonic_prost::ProstCodec::<S::Request, S::Response>::default();
                let response = grpc
                    .streaming(request, path, codec)
                    .await
                    .map_err(ClientError::Connect)?;
                Ok(response.into_inner())
            })
        });
        let outbox = Arc::new(Mutex::new(Outbox::new(rx)));
        let opened = link::open(&mut opener, &options, &outbox, None).await?;
        let (closed, _) = watch::channel(None);
        let (state, _) = watch::channel(ConnectionState::Connected);
        let shared = Arc::new(Shared {
            calls: Mutex::new(Calls::new()),
            call_timeout: options.call_timeout,
            closed,
            latency: Mutex::new(None),
            state,
            info: Mutex::new(Arc::new(opened.info.clone())),
            last_seq: AtomicU64::new(0),
            positions: Mutex::default(),
        });
        let reader = Reader::<S> {
            shared: shared.clone(),
            tx: tx.downgrade(),
            handler,
            ping_interval: options.ping_interval,
        };
        let supervisor = Supervisor {
            reader,
            opener,
            options,
            outbox,
        };
        // Unconstrained by tokio's task budget: the reader polls its timer only once
        // per reset and then reads its state (see `Reader::run`), which needs that
        // poll to register the timer; with no budget left, a `Sleep` would return
        // `Pending` without registering. The reader yields whenever its stream has
        // nothing ready, which the budget would not change (h2 streams use none).
        tokio::spawn(tokio::task::unconstrained(supervisor.run(opened)));
        Ok(HubClient {
            inner: Arc::new(Inner {
                tx,
                shared,
                next_id: AtomicU64::new(0),
            }),
        })
    }

    /// What the server said about this connection in the hello of the current
    /// stream (after a reconnect, the new stream's: a new `connection_id` after a
    /// resync).
    pub fn info(&self) -> Arc<ConnectionInfo> {
        self.inner
            .shared
            .info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// This connection's id on the server (it changes when a reconnect could not
    /// resume: [`ConnectionState::ResyncNeeded`]).
    pub fn connection_id(&self) -> String {
        self.info().connection_id.clone()
    }

    /// Where the connection stands now.
    pub fn state(&self) -> ConnectionState {
        self.inner.shared.state.borrow().clone()
    }

    /// A watch of [`HubClient::state`]: `changed()` / `wait_for(...)` await its
    /// changes. A watch keeps only the latest state; to see every change in order
    /// with the pushes, use [`PushHandler::on_state`] (the generated receivers'
    /// `on_connection_state`).
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.shared.state.subscribe()
    }

    /// The `seq` of the last push handed to the receiver on this connection (0:
    /// none yet), which a resume presents to the server.
    pub fn last_seq(&self) -> u64 {
        self.inner.shared.last_seq.load(Relaxed)
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

    /// Whether the connection has ended for good (not while it reconnects).
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.borrow().is_some()
    }

    /// Waits for the connection to end for good and tells why (a drop the client
    /// reconnects after is no end).
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

    /// Waits while the client reconnects; the end of the connection is an error.
    async fn until_up(&self) -> Result<(), ClientError> {
        let mut rx = self.inner.shared.state.subscribe();
        let closed = match rx.wait_for(|s| !s.is_reconnecting()).await {
            Ok(state) => match &*state {
                ConnectionState::Closed(reason) => Some(reason.clone()),
                _ => None,
            },
            Err(_) => Some(gone()),
        };
        closed.map_or(Ok(()), |reason| Err(ClientError::Disconnected(reason)))
    }

    /// [`HubClient::register`], waiting while the client reconnects.
    async fn register_when_up(
        &self,
        deadline_in: Option<Duration>,
    ) -> Result<Answer<'_, S>, ClientError> {
        loop {
            match self.register(deadline_in, None) {
                Ok(registered) => return Ok(registered),
                Err(e) if self.is_closed() => return Err(e),
                Err(_) => self.until_up().await?,
            }
        }
    }

    /// A call that found no stream up: it waits for the next one within its timeout,
    /// or fails as the connection ended.
    async fn call_when_up(
        &self,
        call: S::Call,
        timeout: Option<Duration>,
        error: ClientError,
    ) -> Result<S::Event, ClientError> {
        if self.is_closed() {
            return Err(error);
        }
        match timeout {
            Some(t) => self.call_timed(call, t).await,
            None => {
                let answer = self.register_when_up(None).await?;
                self.exchange(answer, call).await
            }
        }
    }

    /// A call with a timer of its own: the time waiting for a stream (while the
    /// client reconnects) counts.
    async fn call_timed(&self, call: S::Call, t: Duration) -> Result<S::Event, ClientError> {
        let deadline = Instant::now() + t;
        let Ok(registered) = tokio::time::timeout_at(deadline, self.register_when_up(None)).await
        else {
            return Err(ClientError::Timeout(t));
        };
        // On the timeout the exchange is dropped, and its answer's slot with it.
        let exchange = self.exchange(registered?, call);
        tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout(t)))
    }

    /// Makes a call with the default timeout and waits for its reply.
    ///
    /// A call made while the client reconnects waits for the new stream, within its
    /// timeout (then `Timeout`), and is sent there once; if the client closes
    /// instead, it fails with `Disconnected`. A call waiting for its reply when the
    /// stream drops fails with [`ClientError::ConnectionLost`] and is not sent again.
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
                Box::pin(self.call_timed(call, t)).await
            }
            _ => {
                // Nothing of the call is kept across an await but its answer (a slot
                // id). (No temporary of a `?` or an `if let` may live across an await:
                // a `ClientError` holds a `tonic::Status`, 176 bytes.) The slot gets
                // this task's waker at once, so the first poll of the answer, in this
                // same pass, need not look at it.
                let waker = std::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
                let mut answer = match self.register(timeout, Some(waker)) {
                    Ok(registered) => registered,
                    // No stream up: reconnecting (or closed). Boxed, off the common path.
                    Err(e) => return Box::pin(self.call_when_up(call, timeout, e)).await,
                };
                let full = self.try_send(answer.id, call)?;
                if let Some(frame) = full {
                    let wait = Box::pin(self.wait_for_room(frame, &mut answer));
                    if let Some(done) = wait.await {
                        return done;
                    }
                }
                answer.await
            }
        }
    }

    /// Takes a call id and a slot for its answer; with `deadline_in`, the reader task
    /// times the call out then. `waker`: the task's that will poll the answer first,
    /// in the same pass (that poll then returns `Pending` without looking).
    fn register(
        &self,
        deadline_in: Option<Duration>,
        waker: Option<Waker>,
    ) -> Result<Answer<'_, S>, ClientError> {
        let id = self.inner.next_id.fetch_add(1, Relaxed) + 1;
        let fresh = waker.is_some();
        let mut calls = lock(&self.inner.shared.calls);
        if !calls.up {
            drop(calls);
            return Err(ClientError::Disconnected(self.reason()));
        }
        if let Some(t) = deadline_in {
            // The clock is read under the lock, so deadlines are queued in order.
            calls.deadlines.push_back((Instant::now() + t, id));
        }
        calls.slots.insert(id, Slot::Waiting(waker));
        Ok(Answer {
            client: self,
            id,
            fresh,
            taken: false,
        })
    }

    /// Sends call `id` and waits for its reply.
    async fn exchange(
        &self,
        mut answer: Answer<'_, S>,
        call: S::Call,
    ) -> Result<S::Event, ClientError> {
        let full = self.try_send(answer.id, call)?;
        if let Some(frame) = full {
            let wait = self.wait_for_room(frame, &mut answer);
            if let Some(done) = wait.await {
                return done;
            }
        }
        answer.await
    }

    /// Queues call `id` if there is room (`None`); gives the frame back if the queue is
    /// full. (On an error the caller drops the call's answer, which frees its slot.)
    fn try_send(&self, id: u64, call: S::Call) -> Result<Option<S::Request>, ClientError> {
        match self.inner.tx.try_send(S::request(id, Some(call), None)) {
            Ok(()) => Ok(None),
            Err(TrySendError::Full(frame)) => Ok(Some(frame)),
            Err(TrySendError::Closed(_)) => Err(ClientError::Disconnected(self.reason())),
        }
    }

    /// Waits for room in the queue for `frame` (`None` once it is queued), or for the
    /// answer first: the reader's timeout, or the end of the connection.
    async fn wait_for_room(
        &self,
        frame: S::Request,
        answer: &mut Answer<'_, S>,
    ) -> Option<Result<S::Event, ClientError>> {
        tokio::select! {
            biased;
            r = answer => Some(r),
            sent = self.inner.tx.send(frame) => match sent {
                Ok(()) => None,
                // The caller drops the answer, which frees its slot.
                Err(_) => Some(Err(ClientError::Disconnected(self.reason()))),
            },
        }
    }

    /// How many calls wait for their reply.
    #[cfg(test)]
    pub(crate) fn pending_calls(&self) -> usize {
        lock(&self.inner.shared.calls).slots.len()
    }

    /// Sends a fire-and-forget call (id 0): no reply; a failure comes back as an
    /// error frame to [`PushHandler::on_error`].
    ///
    /// While the client reconnects, it waits for the new stream; a frame queued when
    /// the stream drops may or may not have been sent, and is not sent again.
    pub async fn send(&self, call: S::Call) -> Result<(), ClientError> {
        if !self.inner.shared.state.borrow().is_connected() {
            self.until_up().await?;
        }
        self.inner
            .tx
            .send(S::request(0, Some(call), None))
            .await
            .map_err(|_| ClientError::Disconnected(self.reason()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A registered call's answer: polls the call's slot in [`Calls`]. Dropped before it
/// has the answer, it frees the slot, so a late reply goes nowhere.
struct Answer<'a, S: ClientSpec> {
    client: &'a HubClient<S>,
    id: u64,
    /// The slot holds the waker of this poll's task, registered in this same pass
    /// with nothing awaited since: an answer that comes will wake it, so this poll
    /// need not look.
    fresh: bool,
    /// The answer was taken, and the slot with it.
    taken: bool,
}

impl<S: ClientSpec> Future for Answer<'_, S> {
    type Output = Result<S::Event, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if std::mem::take(&mut this.fresh) {
            return Poll::Pending;
        }
        let mut calls = lock(&this.client.inner.shared.calls);
        let Entry::Occupied(mut slot) = calls.slots.entry(this.id) else {
            // Only the answer frees its slot: not a path, a defence.
            drop(calls);
            this.taken = true;
            return Poll::Ready(Err(ClientError::Disconnected(this.client.reason())));
        };
        if let Slot::Waiting(waker) = slot.get_mut() {
            let old = match waker {
                Some(w) if w.will_wake(cx.waker()) => None,
                _ => waker.replace(cx.waker().clone()),
            };
            // A waker is dropped with no lock held.
            drop(calls);
            drop(old);
            return Poll::Pending;
        }
        let Slot::Done(answer) = slot.remove() else {
            return Poll::Pending;
        };
        drop(calls);
        this.taken = true;
        Poll::Ready(answer.map_err(|e| *e))
    }
}

impl<S: ClientSpec> Drop for Answer<'_, S> {
    fn drop(&mut self) {
        if !self.taken {
            // Dropped after the lock is let go (a waker, or an answer).
            let slot = {
                let mut calls = lock(&self.client.inner.shared.calls);
                let slot = calls.slots.remove(&self.id);
                calls.trim(self.id);
                slot
            };
            drop(slot);
        }
    }
}
