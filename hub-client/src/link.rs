//! The streams of one client over time: opening a `Connect` stream (the first, and
//! each reconnect, with `hub-resume` when there is a session to resume), and the
//! task that reads each stream and, when one drops, reconnects with backoff.
//!
//! The request frames go through one queue for the client's life ([`Outbox`]); each
//! stream's request body reads it while that stream is the current one. Frames still
//! queued when a stream drops are dropped with it (their calls failed with
//! `ConnectionLost`): nothing is sent twice.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hub_core::BoxFuture;
use hub_core::proto::{self, ConnectionInfo, ResumeOutcome, server_control};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};

use crate::connection::{Ended, Reader};
use crate::error::{ClientError, CloseStatus};
use crate::options::{ConnectOptions, ReconnectMode, random_unit};
use crate::shared::Positions;
use crate::spec::ClientSpec;
use crate::state::ConnectionState;

/// The request queue, shared by the request bodies of the client's streams.
pub(crate) struct Outbox<R> {
    rx: mpsc::Receiver<R>,
    /// The stream whose body may read `rx`: a body of an older one never polls it
    /// again (it would take over the receiver's waker).
    epoch: u64,
}

impl<R> Outbox<R> {
    pub(crate) fn new(rx: mpsc::Receiver<R>) -> Self {
        Outbox { rx, epoch: 0 }
    }

    /// Makes a new stream the current one; frames queued for the old one are dropped.
    fn begin(&mut self) -> u64 {
        self.epoch += 1;
        while self.rx.try_recv().is_ok() {}
        self.epoch
    }

    /// No stream any more: later sends fail.
    fn close(&mut self) {
        self.epoch += 1;
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream's request body: the queue, while the stream is the current one. It
/// ends (a clean half-close) only when every `HubClient` is gone.
pub(crate) struct OutboxStream<R> {
    outbox: Arc<Mutex<Outbox<R>>>,
    epoch: u64,
}

impl<R> futures_util::Stream for OutboxStream<R> {
    type Item = R;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<R>> {
        let mut outbox = lock(&self.outbox);
        if outbox.epoch != self.epoch {
            // A stream given up: never ended cleanly, which would end its session on
            // the server (see `open`).
            return Poll::Pending;
        }
        outbox.rx.poll_recv(cx)
    }
}

/// Opens a `Connect` stream with this request (the transport, type-erased).
pub(crate) type Opener<S> = Box<
    dyn FnMut(
            tonic::Request<OutboxStream<<S as ClientSpec>::Request>>,
        ) -> BoxFuture<
            'static,
            Result<tonic::Streaming<<S as ClientSpec>::Response>, ClientError>,
        > + Send,
>;

/// A stream that said hello.
pub(crate) struct Opened<S: ClientSpec> {
    pub(crate) stream: tonic::Streaming<S::Response>,
    pub(crate) info: ConnectionInfo,
}

fn connect_error(code: tonic::Code, message: &str) -> ClientError {
    ClientError::Connect(tonic::Status::new(code, message.to_owned()))
}

/// Opens a stream and reads its hello, within `options.connect_timeout` in all.
/// `resume`: the credential, the last push seq and the groups' positions to present.
pub(crate) async fn open<S: ClientSpec>(
    opener: &mut Opener<S>,
    options: &ConnectOptions,
    outbox: &Arc<Mutex<Outbox<S::Request>>>,
    resume: Option<(&str, u64, &Positions)>,
) -> Result<Opened<S>, ClientError> {
    let deadline = Instant::now() + options.connect_timeout;
    let epoch = lock(outbox).begin();
    let mut request = tonic::Request::new(OutboxStream {
        outbox: outbox.clone(),
        epoch,
    });
    *request.metadata_mut() = options.metadata.clone();
    if let Some((credential, seq, positions)) = resume
        && let Ok(value) = credential.parse::<AsciiMetadataValue>()
    {
        let md = request.metadata_mut();
        md.insert("hub-resume", value);
        md.insert("hub-resume-seq", AsciiMetadataValue::from(seq));
        if !positions.is_empty() {
            md.insert_bin(
                "hub-resume-positions-bin",
                BinaryMetadataValue::from_bytes(&encode_positions(positions)),
            );
        }
    }
    // A stream given up is left as it is, not cancelled: tonic's server takes a
    // client's RST_STREAM(CANCEL) for a clean end of the request stream, which would
    // end the session. The server ends it when the new stream takes the session over
    // (or at its heartbeat timeout); its body never reads the queue again.
    let opened = async {
        let mut stream = tokio::time::timeout_at(deadline, opener(request))
            .await
            .map_err(|_| {
                connect_error(tonic::Code::DeadlineExceeded, "no response to Connect")
            })??;
        let first = tokio::time::timeout_at(deadline, stream.message())
            .await
            .map_err(|_| connect_error(tonic::Code::DeadlineExceeded, "no hello from the server"))?
            .map_err(ClientError::Connect)?
            .ok_or_else(|| connect_error(tonic::Code::Unavailable, "stream ended before hello"))?;
        match S::split(first).control.and_then(|c| c.kind) {
            Some(server_control::Kind::Hello(info)) => Ok((stream, info)),
            _ => Err(connect_error(
                tonic::Code::Internal,
                "the server's first frame was not a hello: is this a hub?",
            )),
        }
    }
    .await;
    opened.map(|(stream, info)| Opened { stream, info })
}

/// `hub.v1.ResumePositions` of `positions` (group to offset and epoch), sorted by
/// group.
fn encode_positions(positions: &Positions) -> Vec<u8> {
    use prost::Message as _;
    let mut list: Vec<proto::Position> = positions
        .iter()
        .map(|(group, &(offset, epoch, _))| proto::Position {
            group: group.clone(),
            offset,
            epoch,
        })
        .collect();
    list.sort_by(|a, b| a.group.cmp(&b.group));
    proto::ResumePositions { positions: list }.encode_to_vec()
}

/// Whether a hello offers a session to resume.
fn has_session(info: &ConnectionInfo) -> bool {
    info.session_grace_ms > 0 && !info.resume_credential.is_empty()
}

/// Codes a new attempt would only meet again: no reconnect after them.
fn is_final(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Ok
            | tonic::Code::Unauthenticated
            | tonic::Code::PermissionDenied
            | tonic::Code::InvalidArgument
            | tonic::Code::Unimplemented
            | tonic::Code::OutOfRange
    )
}

fn status_of(e: &ClientError) -> CloseStatus {
    match e {
        ClientError::Status(s) | ClientError::Connect(s) => CloseStatus {
            code: s.code(),
            message: s.message().to_owned(),
        },
        ClientError::Disconnected(r) | ClientError::ConnectionLost(r) => r.clone(),
        other => CloseStatus {
            code: other.code(),
            message: other.to_string(),
        },
    }
}

/// The task behind a client: reads the current stream and, when it drops,
/// reconnects (or closes the client).
pub(crate) struct Supervisor<S: ClientSpec> {
    pub(crate) reader: Reader<S>,
    pub(crate) opener: Opener<S>,
    pub(crate) options: ConnectOptions,
    pub(crate) outbox: Arc<Mutex<Outbox<S::Request>>>,
}

impl<S: ClientSpec> Supervisor<S> {
    pub(crate) async fn run(mut self, mut opened: Opened<S>) {
        loop {
            let dead_after = self.options.dead_after.or_else(|| {
                (opened.info.heartbeat_interval_ms > 0)
                    .then(|| Duration::from_millis(opened.info.heartbeat_interval_ms * 3))
            });
            let Opened { stream, info } = opened;
            let ended = self.reader.run(stream, dead_after).await;
            if !self.should_reconnect(&ended, &info) {
                return self.finish(ended.status);
            }
            tracing::info!(reason = %ended.status, "hub stream dropped, reconnecting");
            self.lost(&ended.status);
            match self.reconnect(ended.status).await {
                Ok(next) => {
                    self.connected(&next.info);
                    opened = next;
                }
                Err(reason) => return self.finish(reason),
            }
        }
    }

    fn should_reconnect(&self, ended: &Ended, info: &ConnectionInfo) -> bool {
        let wanted = match self.options.reconnect.mode {
            ReconnectMode::Never => false,
            ReconnectMode::IfSession => has_session(info),
            ReconnectMode::Always => true,
        };
        // No reconnect for a client no one holds any more.
        // A goodbye with UNAVAILABLE is a server going away (shutting down, draining,
        // or it stopped hearing us): another one may take the connection. Any other
        // goodbye closed it on purpose.
        wanted
            && (!ended.goodbye || ended.status.code == tonic::Code::Unavailable)
            && !is_final(ended.status.code)
            && self.reader.tx.upgrade().is_some()
    }

    fn set_state(&self, state: ConnectionState) {
        self.reader.shared.state.send_replace(state.clone());
        self.reader.handler.on_state(&state);
    }

    /// The stream dropped: calls in flight fail with `ConnectionLost`; calls made from
    /// now on wait for the next stream.
    fn lost(&self, cause: &CloseStatus) {
        let state = ConnectionState::Reconnecting {
            attempt: 1,
            cause: cause.clone(),
        };
        let mut wakers = Vec::new();
        {
            let mut calls = lock(&self.reader.shared.calls);
            self.reader.shared.state.send_replace(state.clone());
            calls.up = false;
            calls.fail_all(|| ClientError::ConnectionLost(cause.clone()), &mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
        self.reader.handler.on_state(&state);
    }

    /// Attempts until a stream says hello, or gives up with the reason to close.
    async fn reconnect(&mut self, cause: CloseStatus) -> Result<Opened<S>, CloseStatus> {
        let policy = self.options.reconnect.clone();
        let started = Instant::now();
        let mut last = cause;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let gave_up = |why: String, last: &CloseStatus| CloseStatus {
                code: last.code,
                message: format!("{why}; last: {}", last.message),
            };
            if policy.max_attempts.is_some_and(|max| attempt > max) {
                return Err(gave_up(
                    format!("gave up reconnecting after {} attempts", attempt - 1),
                    &last,
                ));
            }
            let delay = policy.delay(attempt, random_unit());
            if let Some(max) = policy.max_elapsed
                && started.elapsed() + delay > max
            {
                return Err(gave_up(
                    format!("gave up reconnecting after {max:?}"),
                    &last,
                ));
            }
            if attempt > 1 {
                self.set_state(ConnectionState::Reconnecting {
                    attempt,
                    cause: last.clone(),
                });
            }
            tokio::time::sleep(delay).await;
            if self.reader.tx.upgrade().is_none() {
                return Err(CloseStatus {
                    code: tonic::Code::Cancelled,
                    message: "the client was dropped while reconnecting".into(),
                });
            }
            let info = lock(&self.reader.shared.info).clone();
            let last_seq = self.reader.shared.last_seq.load(Relaxed);
            let positions = lock(&self.reader.shared.positions).clone();
            let resume =
                has_session(&info).then(|| (info.resume_credential.as_str(), last_seq, &positions));
            match open(&mut self.opener, &self.options, &self.outbox, resume).await {
                Ok(opened) => return Ok(opened),
                Err(e) => {
                    let status = status_of(&e);
                    tracing::debug!(attempt, error = %status, "reconnect attempt failed");
                    if matches!(
                        status.code,
                        tonic::Code::Unauthenticated
                            | tonic::Code::PermissionDenied
                            | tonic::Code::InvalidArgument
                            | tonic::Code::Unimplemented
                    ) {
                        return Err(status);
                    }
                    last = status;
                }
            }
        }
    }

    /// A new stream said hello: calls go to it.
    fn connected(&self, info: &ConnectionInfo) {
        let shared = &self.reader.shared;
        let outcome = info
            .resumption
            .as_ref()
            .map_or(ResumeOutcome::Unspecified, |r| r.outcome());
        let state = if outcome == ResumeOutcome::Resumed {
            ConnectionState::Resumed
        } else {
            let reason = match &info.resumption {
                Some(r) if !r.reason.is_empty() => r.reason.clone(),
                Some(_) => format!("not resumed: {}", outcome.as_str_name()),
                None => "the server offered no session to resume".into(),
            };
            // A new connection numbers its pushes from the start; a restored session
            // (another server took it over) numbers on after the seq presented.
            if outcome != ResumeOutcome::Restored {
                shared.last_seq.store(0, Relaxed);
                // A new connection: no group of the old one goes on.
                lock(&shared.positions).clear();
            }
            ConnectionState::ResyncNeeded { outcome, reason }
        };
        tracing::info!(?state, connection_id = %info.connection_id, "hub stream up again");
        *lock(&shared.info) = Arc::new(info.clone());
        {
            let mut calls = lock(&shared.calls);
            calls.up = true;
            shared.state.send_replace(state.clone());
        }
        self.reader.handler.on_state(&state);
    }

    /// The end: calls fail with `Disconnected(reason)`, and so do later ones.
    fn finish(&self, reason: CloseStatus) {
        tracing::debug!(%reason, "hub connection ended");
        let shared = &self.reader.shared;
        let state = ConnectionState::Closed(reason.clone());
        let mut wakers = Vec::new();
        {
            let mut calls = lock(&shared.calls);
            shared.closed.send_replace(Some(reason.clone()));
            shared.state.send_replace(state.clone());
            calls.up = false;
            calls.fail_all(|| ClientError::Disconnected(reason.clone()), &mut wakers);
        }
        lock(&self.outbox).close();
        wakers.into_iter().for_each(Waker::wake);
        self.reader.handler.on_state(&state);
    }
}

impl<S: ClientSpec> Drop for Supervisor<S> {
    /// After [`Supervisor::finish`] no call waits. A task dropped before (a panic in
    /// the reader, the runtime shutting down) fails the calls still waiting, which
    /// nothing else would answer.
    fn drop(&mut self) {
        let shared = &self.reader.shared;
        let mut wakers = Vec::new();
        {
            let reason = shared
                .closed
                .borrow()
                .clone()
                .unwrap_or_else(crate::error::gone);
            lock(&shared.calls).fail_all(|| ClientError::Disconnected(reason.clone()), &mut wakers);
        }
        wakers.into_iter().for_each(Waker::wake);
    }
}
