//! The life of one connection: read frames, run calls in order, heartbeat, clean up.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use hub_core::frame::{
    FIELD_CONTROL, FIELD_ID, MAX_SAFE_INTEGER, OutFrame, call_error_frame, clamp_safe,
    control_frame, frame_error_frame, request_head, top_level_fields,
};
use hub_core::proto::{self, client_control, server_control::Kind};
use hub_core::{BoxFuture, CloseReason, HubMetrics, MemberInfo};
use prost::Message;
use tokio::time::{Instant, Sleep};
use tonic::{Code, Streaming};

use crate::ask_table::{CALL, CallState};
use crate::context::ConnState;
use crate::gate::Gate;
use crate::hub::{HubCore, HubShared};
use crate::inbound::{InboundLimits, Verdict};
use crate::session::Attachments;
use crate::{Context, DisconnectReason, Dispatch, Inbound};

/// What a finished call hands back: its id, call case, name, start, and its outcome
/// (`Err(())`: it panicked).
type Finished = (
    u64,
    u32,
    &'static str,
    Instant,
    Result<Result<Bytes, tonic::Status>, ()>,
);

/// A call being run: its handler's future, polled inside the call's span with its
/// ask state as the task-local `CALL`, its panics caught. (One allocation per call,
/// the handler's future; the combinators this replaces boxed a second.)
struct Running {
    fut: BoxFuture<'static, Result<Bytes, tonic::Status>>,
    /// Whether `fut` finished (and was dropped).
    done: bool,
    state: Arc<CallState>,
    span: tracing::Span,
    id: u64,
    field: u32,
    name: &'static str,
    started: Instant,
}

impl Future for Running {
    type Output = Finished;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Finished> {
        let this = &mut *self;
        if this.done {
            // Polled after it finished: never ready again (a `FuturesUnordered` does not).
            return Poll::Pending;
        }
        let _entered = this.span.enter();
        let fut = &mut this.fut;
        let polled = CALL.sync_scope(this.state.clone(), || {
            let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
            if !matches!(polled, Ok(Poll::Pending)) {
                // Dropped where it ran: in its span, with `CALL` set.
                *fut = Box::pin(std::future::pending());
            }
            polled
        });
        let result = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(r)) => Ok(r),
            Err(_) => Err(()),
        };
        this.done = true;
        Poll::Ready((this.id, this.field, this.name, this.started, result))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.done {
            // A call dropped before it finished (its connection went): dropped as it
            // ran, in its span and with `CALL` set.
            let _entered = self.span.enter();
            let fut = std::mem::replace(&mut self.fut, Box::pin(std::future::pending()));
            CALL.sync_scope(self.state.clone(), || drop(fut));
        }
    }
}

struct Conn<D: Dispatch> {
    shared: Arc<HubShared<D>>,
    state: Arc<ConnState>,
    ctx: Context<D::Push>,
    /// Calls waiting behind the running one, in arrival order, with their call case.
    queue: VecDeque<(u64, u32, D::Call)>,
    /// The call being run.
    running: Option<Running>,
    /// When the frame being handled arrived (read once for the heartbeat too): the
    /// start of a call it runs at once. `None` outside `on_frame`.
    frame_at: Option<Instant>,
    /// What the running call shares with its asks.
    call_state: Option<Arc<CallState>>,
    /// Calls parked while they wait on an answer from this connection's client: they
    /// finish on their own, while the next calls run.
    parked: futures_util::stream::FuturesUnordered<Running>,
    /// Last ping sent: nonce and when.
    ping: Option<(u64, Instant)>,
    /// Nonce of the last ping sent (each ping gets a new one, so a late pong cannot
    /// match a newer ping).
    nonce: u64,
    /// Round trip of the last answered ping, in microseconds.
    last_rtt_us: u64,
    /// Frames and bytes per second, and the refusals allowed before a flood close.
    limits: InboundLimits,
    /// Whether the close asked for by `Context::close` was applied.
    kick_applied: bool,
}

pub(crate) async fn run<D: Dispatch>(
    shared: Arc<HubShared<D>>,
    state: Arc<ConnState>,
    inbound: Streaming<Bytes>,
    mut session: Option<Attachments>,
) {
    // The stream being read; `None` while the session is detached.
    let mut inbound = Some(inbound);
    // While detached: when the session's grace ends, and how the stream broke.
    let mut detached: Option<(Instant, String)> = None;
    let core = shared.core.clone();
    let config = core.config.clone();
    let mut conn = Conn {
        ctx: Context::new(state.clone()),
        shared,
        state: state.clone(),
        queue: VecDeque::new(),
        running: None,
        frame_at: None,
        call_state: None,
        parked: Default::default(),
        ping: None,
        nonce: 0,
        last_rtt_us: 0,
        limits: InboundLimits::new(&config),
        kick_applied: false,
    };
    tracing::debug!("connected");
    let mut closed = std::pin::pin!(state.outbox.closed());
    let shutdown = core.shutdown.clone();
    let mut shutdown = std::pin::pin!(shutdown.cancelled_owned());
    // Kept across passes of the loop: a `Notified` made and dropped in every pass
    // registers and unregisters itself under the `Notify`'s lock. All are
    // `notify_one`, whose permit waits for the next one.
    let mut kicked = std::pin::pin!(state.kicked.notified());
    let mut went_behind = std::pin::pin!(state.outbox.went_behind());
    let mut ask_wait = std::pin::pin!(state.ask_wait.notified());
    let mut drained = std::pin::pin!(state.outbox.replies_drained());
    // These and the heartbeat are seldom ready: each is polled only after its own
    // waker fired (see `gate.rs`), not on every pass.
    let gate = Gate::new(lane::ALL);
    let lanes = lane::wakers(&gate);
    // Ping every `heartbeat_interval`; without pings, still check the timeout (a
    // client's own pings keep it alive). Never a zero period: `interval` panics on it.
    let heartbeat = config.heartbeat_interval.is_some() || config.heartbeat_timeout.is_some();
    let period = config
        .heartbeat_interval
        .or(config.heartbeat_timeout.map(|t| t / 4))
        .unwrap_or(Duration::from_secs(3600))
        .max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut reading = true;
    // Replies are backpressure: while they wait to be written, read no new frame.
    let mut paused = false;
    // The end of the grace of an outbound queue over budget, while it is, and its
    // timer (made when first needed).
    let mut grace: Option<Instant> = None;
    let mut grace_timer: Option<Pin<Box<Sleep>>> = None;
    // The timer of a detached session's grace, made when first needed.
    let mut detach_timer: Option<Pin<Box<Sleep>>> = None;

    let reason = loop {
        if detached.is_none()
            && !reading
            && conn.running.is_none()
            && conn.queue.is_empty()
            && conn.parked.is_empty()
        {
            // Reading may have stopped because the server closed the stream (a frame
            // too large, a broken request stream): that reason, not a clean client
            // close, is what `on_disconnect` must see.
            break match state.outbox.close_reason() {
                Some(r) => DisconnectReason::Server {
                    code: r.code,
                    message: r.message,
                },
                None => DisconnectReason::ClientClosed,
            };
        }
        let backlogged = reading && state.outbox.replies_backlogged();
        if backlogged != paused {
            paused = backlogged;
            if paused {
                HubMetrics::incr(&core.metrics.reads_paused);
                // The heartbeat timeout now counts from here: the client is not
                // reading, so it cannot be heard.
                last_heard = last_heard.max(Instant::now());
            }
        }
        // One pass: the first of these that is ready, in this order.
        let event = std::future::poll_fn(|cx| {
            gate.register(cx);
            if gate
                .poll(lane::CLOSED, &lanes[0], |cx| closed.as_mut().poll(cx))
                .is_ready()
            {
                return Poll::Ready(Event::Closed);
            }
            if gate
                .poll(lane::SHUTDOWN, &lanes[1], |cx| shutdown.as_mut().poll(cx))
                .is_ready()
            {
                return Poll::Ready(Event::Shutdown);
            }
            if let Some(running) = conn.running.as_mut() {
                if let Poll::Ready(done) = Pin::new(running).poll(cx) {
                    return Poll::Ready(Event::Finished(done));
                }
                if gate
                    .poll(lane::ASK_WAIT, &lanes[2], |cx| ask_wait.as_mut().poll(cx))
                    .is_ready()
                {
                    return Poll::Ready(Event::AskWait);
                }
            }
            if !conn.parked.is_empty()
                && let Poll::Ready(Some(done)) = conn.parked.poll_next_unpin(cx)
            {
                return Poll::Ready(Event::Parked(done));
            }
            if gate
                .poll(lane::KICKED, &lanes[3], |cx| kicked.as_mut().poll(cx))
                .is_ready()
            {
                return Poll::Ready(Event::Kicked);
            }
            if grace.is_none()
                && gate
                    .poll(lane::BEHIND, &lanes[4], |cx| went_behind.as_mut().poll(cx))
                    .is_ready()
            {
                return Poll::Ready(Event::WentBehind);
            }
            if let Some(at) = grace
                && timer_at(&mut grace_timer, at).poll(cx).is_ready()
            {
                return Poll::Ready(Event::GraceOver);
            }
            if paused
                && gate
                    .poll(lane::DRAINED, &lanes[5], |cx| drained.as_mut().poll(cx))
                    .is_ready()
            {
                return Poll::Ready(Event::Drained);
            }
            if reading
                && !paused
                && let Some(stream) = inbound.as_mut()
                && let Poll::Ready(msg) = stream.poll_next_unpin(cx)
            {
                return Poll::Ready(Event::Frame(msg));
            }
            if let Some(att) = session.as_mut()
                && let Poll::Ready(new) = att.rx.poll_recv(cx)
            {
                return Poll::Ready(Event::Resumed(new));
            }
            if let Some((at, _)) = &detached
                && timer_at(&mut detach_timer, *at).poll(cx).is_ready()
            {
                return Poll::Ready(Event::DetachOver);
            }
            if heartbeat
                && detached.is_none()
                && gate
                    .poll(lane::TICK, &lanes[6], |cx| ticker.poll_tick(cx))
                    .is_ready()
            {
                return Poll::Ready(Event::Tick);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Closed => {
                let r = state.outbox.close_reason();
                break DisconnectReason::Server {
                    code: r.as_ref().map_or(Code::Unavailable, |r| r.code),
                    message: r.map(|r| r.message).unwrap_or_default(),
                };
            }
            Event::Shutdown => {
                let why = core
                    .shutdown_reason
                    .get()
                    .map_or("server shutting down", String::as_str);
                state
                    .outbox
                    .close(CloseReason::draining(Code::Unavailable, why));
            }
            Event::Finished(done) => {
                conn.running = None;
                conn.finish(done);
                if !conn.apply_kick() {
                    conn.start_next();
                }
            }
            Event::AskWait => {
                ask_wait.set(state.ask_wait.notified());
                gate.arm(lane::ASK_WAIT);
                // The running call waits on its own client's answer: park it, so the
                // client's calls made to answer it are not stuck behind it.
                if conn
                    .call_state
                    .as_ref()
                    .is_some_and(|c| c.self_asks.load(std::sync::atomic::Ordering::Acquire) > 0)
                {
                    let running = conn.running.take().expect("polled while running");
                    conn.parked.push(running);
                    conn.start_next();
                }
            }
            Event::Parked(done) => conn.finish(done),
            Event::Kicked => {
                kicked.set(state.kicked.notified());
                gate.arm(lane::KICKED);
                // During a call, the kick waits for its reply (checked when it finishes).
                if conn.running.is_none() {
                    conn.apply_kick();
                }
            }
            Event::WentBehind => {
                went_behind.set(state.outbox.went_behind());
                gate.arm(lane::BEHIND);
                grace = state.outbox.enforce_grace();
            }
            Event::GraceOver => grace = state.outbox.enforce_grace(),
            Event::Drained => {
                drained.set(state.outbox.replies_drained());
                gate.arm(lane::DRAINED);
            }
            Event::Frame(msg) => match msg {
                Some(Ok(frame)) => {
                    last_heard = Instant::now();
                    conn.frame_at = Some(last_heard);
                    conn.on_frame(frame);
                    conn.frame_at = None;
                }
                None => reading = false,
                Some(Err(status)) => {
                    reading = false;
                    if let Some(reason) = stream_error(&status) {
                        HubMetrics::incr(&core.metrics.frames_rejected);
                        state.outbox.close(reason);
                    } else {
                        let why = status.message().to_owned();
                        if !conn.detach(session.as_ref(), &why).await {
                            break DisconnectReason::Transport(why);
                        }
                        inbound = None;
                        detached = Some((Instant::now() + conn.grace(), why));
                    }
                }
            },
            Event::Resumed(_) | Event::DetachOver => {
                let new = match event {
                    Event::Resumed(new) => new,
                    _ => {
                        let sessions = core.sessions.as_ref().expect("detached with sessions");
                        let att = session.as_mut().expect("detached with a session");
                        // The grace is over unless a stream resumed at that moment.
                        let Some(new) = sessions.end_unless_resumed(att) else {
                            HubMetrics::incr(&core.metrics.sessions_expired);
                            let why = detached.take().map(|d| d.1).unwrap_or_default();
                            break DisconnectReason::SessionExpired(why);
                        };
                        Some(new)
                    }
                };
                if let Some(new) = new {
                    conn.attached(
                        new,
                        &mut inbound,
                        &mut detached,
                        &mut reading,
                        &mut last_heard,
                    )
                    .await;
                }
            }
            Event::Tick => {
                // The interval registers its next deadline when polled again.
                gate.arm(lane::TICK);
                if let Some(timeout) = config.heartbeat_timeout
                    && last_heard.elapsed() >= timeout
                {
                    HubMetrics::incr(&core.metrics.heartbeat_timeouts);
                    let why = if paused {
                        format!("heartbeat timeout: the client read no reply for {timeout:?}")
                    } else {
                        format!(
                            "heartbeat timeout: nothing received from the client for {timeout:?}"
                        )
                    };
                    // With a session, a silent peer is a dropped stream: detach.
                    if conn.detach(session.as_ref(), &why).await {
                        inbound = None;
                        reading = false;
                        detached = Some((Instant::now() + conn.grace(), why));
                    } else {
                        state.outbox.close(CloseReason::new(Code::Unavailable, why));
                    }
                    continue;
                }
                if config.heartbeat_interval.is_some() {
                    conn.send_ping();
                }
            }
        }
    };

    // The session (if any) ends with the connection: no stream attaches any more.
    let mut taken_over = false;
    if let (Some(sessions), Some(att)) = (&core.sessions, &session) {
        sessions.end(&att.session);
        taken_over = att.session.was_taken_over();
    }
    // End the outbound stream: after a clean client close, send what is queued and
    // finish with OK; otherwise the first close reason set above stands.
    state.outbox.close(CloseReason::draining(Code::Ok, ""));
    tracing::debug!(%reason, "disconnected");
    // Leave first, so that whoever hears of it from `on_disconnect` (an `on_leave`
    // push) and asks for the members no longer sees this connection, on any server.
    leave_everything(&core, &state).await;
    // A server shutting down with shared sessions hands them off (a rolling restart):
    // the record stays for another server to restore the session from, within its
    // grace, and the session has not ended.
    let handed_off = !taken_over
        && session.is_some()
        && core.shares_sessions()
        && core.shutdown.is_cancelled()
        && matches!(
            &reason,
            DisconnectReason::Server {
                code: Code::Unavailable,
                ..
            } | DisconnectReason::Transport(_)
                | DisconnectReason::SessionExpired(_)
        );
    if handed_off {
        HubMetrics::incr(&core.metrics.sessions_handed_off);
    } else if session.is_some() {
        // Its record in the backplane, unless another server holds it now.
        crate::session_record::drop_record(&core, state.id).await;
    }
    // A session another server took over (or will restore) goes on there: it did
    // not end.
    if !taken_over && !handed_off {
        let hook = AssertUnwindSafe(conn.shared.dispatch.on_disconnect(conn.ctx.clone(), reason));
        if hook.catch_unwind().await.is_err() {
            tracing::error!("the hub's on_disconnect hook panicked");
        }
    }
    HubMetrics::incr(&core.metrics.connections_closed);
    core.metrics.connections.decrement(1.0);
    core.conn_closed.notify_waiters();
}

/// What one pass of the connection loop found ready.
enum Event {
    /// The outbox was closed.
    Closed,
    /// The server is shutting down.
    Shutdown,
    /// The running call finished.
    Finished(Finished),
    /// An ask of the running call may wait on this connection's client.
    AskWait,
    /// A parked call finished.
    Parked(Finished),
    /// `Context::close` asked for the connection to end.
    Kicked,
    /// The outbound queue went over its budget.
    WentBehind,
    /// The grace of a queue over its budget ended.
    GraceOver,
    /// The reply backlog fell below its limit.
    Drained,
    /// What the request stream gave.
    Frame(Option<Result<Bytes, tonic::Status>>),
    /// A resuming stream for the session (or the end of the session's channel).
    Resumed(Option<Streaming<Bytes>>),
    /// A detached session's grace ended.
    DetachOver,
    /// The heartbeat ticked.
    Tick,
}

/// The connection loop's gated futures (see `gate.rs`): one bit and one waker each.
mod lane {
    use std::sync::Arc;
    use std::task::Waker;

    use crate::gate::Gate;

    pub(super) const CLOSED: u32 = 1;
    pub(super) const SHUTDOWN: u32 = 1 << 1;
    pub(super) const ASK_WAIT: u32 = 1 << 2;
    pub(super) const KICKED: u32 = 1 << 3;
    pub(super) const BEHIND: u32 = 1 << 4;
    pub(super) const DRAINED: u32 = 1 << 5;
    pub(super) const TICK: u32 = 1 << 6;
    pub(super) const ALL: u32 = (1 << 7) - 1;

    /// The wakers, in the order of the bits.
    pub(super) fn wakers(gate: &Arc<Gate>) -> [Waker; 7] {
        std::array::from_fn(|i| gate.lane(1 << i))
    }
}

/// The timer in `slot` set to `at` (made on first use).
fn timer_at(slot: &mut Option<Pin<Box<Sleep>>>, at: Instant) -> Pin<&mut Sleep> {
    let timer = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if timer.deadline() != at {
        timer.as_mut().reset(at);
    }
    timer.as_mut()
}

/// Removes a connection from the registry and tells the backplane about each group it
/// left. `Context::groups` keeps listing them (for `on_disconnect`).
pub(crate) async fn leave_everything(core: &HubCore, state: &ConnState) {
    let first = state.departed.set(core.local.groups_of(state.id)).is_ok();
    let left = core.local.unregister(state.id);
    if first {
        // A session restored here from another server: its id's server's channel is
        // listened on no more for it.
        crate::session_record::release(core, state.id).await;
    }
    core.asks.connection_closed(state.id);
    core.count_groups();
    let info = MemberInfo {
        connection: state.id,
        user: state
            .user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_deref()
            .map(str::to_owned),
    };
    for (group, last) in left {
        if let Some(fut) = core.backplane.left(&group, &info, last)
            && let Err(e) = fut.await
        {
            HubMetrics::incr(&core.metrics.backplane_errors);
            tracing::warn!(%group, error = %e, "backplane leave failed");
        }
    }
    core.conn_closed.notify_waiters();
}

/// A stream error the client caused (and should be told about), or `None` for a broken transport.
///
/// tonic's request decoder makes its errors (frame too large, a compressed-flag it
/// cannot honour, a frame cut short by the end of the stream) from the bytes the
/// client sent, with no error source; errors of the transport underneath (h2, hyper)
/// always carry their source. Only the first kind is worth a goodbye: after the
/// second there is no one left to read it.
fn stream_error(status: &tonic::Status) -> Option<CloseReason> {
    if std::error::Error::source(status).is_some() {
        return None;
    }
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted => Some(CloseReason::new(
            Code::ResourceExhausted,
            format!("request frame too large: {}", status.message()),
        )),
        _ => Some(CloseReason::new(
            Code::InvalidArgument,
            format!("bad request stream: {}", status.message()),
        )),
    }
}

impl<D: Dispatch> Conn<D> {
    fn core(&self) -> &HubCore {
        &self.shared.core
    }

    /// The grace period of a detached session.
    fn grace(&self) -> Duration {
        self.core()
            .sessions
            .as_ref()
            .map_or(Duration::ZERO, |s| s.config.grace)
    }

    /// The stream broke (`why`): detaches the session, if the connection has one and
    /// there is room for another detached session, and runs `on_transport_lost`.
    /// Returns whether it did (else the connection ends).
    async fn detach(&mut self, session: Option<&Attachments>, why: &str) -> bool {
        let (Some(sessions), Some(att)) = (&self.core().sessions, session) else {
            return false;
        };
        if !sessions.detach(&att.session) {
            HubMetrics::incr(&self.core().metrics.sessions_expired);
            tracing::info!(
                detached = sessions.detached(),
                "stream broke; too many sessions detached to keep this one"
            );
            return false;
        }
        HubMetrics::incr(&self.core().metrics.sessions_detached);
        tracing::debug!(%why, "stream broke; the session waits for a resume");
        let reason = DisconnectReason::Transport(why.to_owned());
        let hook = AssertUnwindSafe(
            self.shared
                .dispatch
                .on_transport_lost(self.ctx.clone(), reason),
        );
        if hook.catch_unwind().await.is_err() {
            tracing::error!("the hub's on_transport_lost hook panicked");
        }
        true
    }

    /// A resuming stream attached: read it from now on, and run `on_resumed`.
    async fn attached(
        &mut self,
        new: Streaming<Bytes>,
        inbound: &mut Option<Streaming<Bytes>>,
        detached: &mut Option<(Instant, String)>,
        reading: &mut bool,
        last_heard: &mut Instant,
    ) {
        *inbound = Some(new);
        *detached = None;
        *reading = true;
        *last_heard = Instant::now();
        self.ping = None;
        tracing::debug!("session resumed");
        let hook = AssertUnwindSafe(self.shared.dispatch.on_resumed(self.ctx.clone()));
        if hook.catch_unwind().await.is_err() {
            tracing::error!("the hub's on_resumed hook panicked");
        }
    }

    /// Applies a close asked for by `Context::close`, if any (once).
    fn apply_kick(&mut self) -> bool {
        match self.state.kick.get() {
            Some(reason) if !self.kick_applied => {
                self.kick_applied = true;
                self.queue.clear();
                self.state.outbox.close(reason.clone());
                true
            }
            _ => false,
        }
    }

    fn send(&self, frame: Bytes) {
        // A full queue closes the connection (or is counted); the loop sees the close.
        let _ = self.state.outbox.push(OutFrame::reply(frame));
    }

    /// Refuses a frame. With an id or a call case it is that call's answer (scope
    /// CALL); without either it answers nothing (scope FRAME).
    fn reject(&self, id: u64, call: Option<u32>, code: Code, message: String) {
        HubMetrics::incr(&self.core().metrics.frames_rejected);
        tracing::debug!(id, ?code, %message, "frame rejected");
        self.send(if id == 0 && call.is_none() {
            frame_error_frame(0, 0, code, message)
        } else {
            call_error_frame(id, call.unwrap_or(0), code, message)
        });
    }

    fn on_frame(&mut self, frame: Bytes) {
        let head = request_head(&frame);
        match self.limits.admit(frame.len()) {
            Verdict::Pass => {}
            Verdict::Refused(message) => {
                let metrics = &self.core().metrics;
                HubMetrics::incr(&metrics.inbound_rate_limited);
                tracing::debug!(id = head.id, %message, "frame refused by the rate limit");
                // A call gets its answer; a control frame over the limit is dropped.
                // Offered, not queued as a reply: refusals must not stop the reading
                // that counts them (a flooder that does not read is still caught), and
                // a client that reads none of them misses some.
                if head.id > MAX_SAFE_INTEGER {
                    // Its id cannot go back on the wire (see below): nothing to answer.
                } else if head.call.is_some() || head.id != 0 {
                    let refusal = call_error_frame(
                        head.id,
                        head.call.unwrap_or(0),
                        Code::ResourceExhausted,
                        message,
                    );
                    let _ = self.state.outbox.offer(OutFrame::reply(refusal));
                }
                return;
            }
            Verdict::Flooding(message) => {
                let metrics = &self.core().metrics;
                HubMetrics::incr(&metrics.inbound_rate_limited);
                HubMetrics::incr(&metrics.flood_disconnects);
                tracing::info!(%message, "flooding client disconnected");
                self.queue.clear();
                self.state
                    .outbox
                    .close(CloseReason::new(Code::ResourceExhausted, message));
                return;
            }
        }
        if head.id > MAX_SAFE_INTEGER {
            // Refused with id 0 (scope FRAME): no frame from the server carries a
            // number above 2^53-1, so a JavaScript client can decode every one.
            HubMetrics::incr(&self.core().metrics.frames_rejected);
            return self.send(frame_error_frame(
                0,
                head.call.unwrap_or(0),
                Code::InvalidArgument,
                format!(
                    "call id {} is above 2^53-1 (the largest call id); the call was not run",
                    head.id
                ),
            ));
        }
        let request = match D::Request::decode(frame.clone()) {
            Ok(r) => r,
            Err(e) => {
                HubMetrics::incr(&self.core().metrics.frames_rejected);
                return self.send(frame_error_frame(
                    0,
                    0,
                    Code::InvalidArgument,
                    format!("malformed frame: {e}"),
                ));
            }
        };
        let Inbound { id, control, call } = D::split(request);
        let had_control = control.is_some();
        if let Some(c) = control {
            self.on_control(c, &frame);
        }
        match call {
            Some(call) => self.enqueue(id, head.call.unwrap_or(0), call),
            None if had_control => {}
            None => {
                let unknown = top_level_fields(&frame)
                    .into_iter()
                    .find(|f| *f != FIELD_ID && *f != FIELD_CONTROL);
                match unknown {
                    Some(field) => self.reject(
                        id,
                        Some(field),
                        Code::Unimplemented,
                        format!(
                            "unknown call (field {field}) for {}: the client's proto may be newer than the server's",
                            D::SERVICE
                        ),
                    ),
                    None => self.reject(id, None, Code::InvalidArgument, "frame carries no call".into()),
                }
            }
        }
    }

    fn on_control(&mut self, control: proto::ClientControl, frame: &Bytes) {
        match control.kind {
            Some(client_control::Kind::Answer(a)) => {
                // Routed to the waiting ask at once: never queued behind calls.
                let core = self.core();
                core.asks
                    .answered(&core.metrics, self.state.id, a, frame.clone());
            }
            Some(client_control::Kind::Pong(p)) => {
                if let Some((nonce, sent)) = self.ping
                    && nonce == p.nonce
                {
                    self.last_rtt_us = clamp_safe(sent.elapsed().as_micros());
                    self.ping = None;
                }
            }
            Some(client_control::Kind::Ping(p)) if p.nonce > MAX_SAFE_INTEGER => {
                // Echoing it would put a number above 2^53-1 on the wire.
                HubMetrics::incr(&self.core().metrics.frames_rejected);
                self.send(frame_error_frame(
                    0,
                    0,
                    Code::InvalidArgument,
                    format!("ping nonce {} is above 2^53-1; no pong sent", p.nonce),
                ));
            }
            Some(client_control::Kind::Ping(p)) => {
                // Optional, like our own pings: not worth closing a slow reader over.
                let pong = control_frame(Kind::Pong(proto::Pong { nonce: p.nonce }));
                let _ = self.state.outbox.offer(OutFrame::reply(pong));
            }
            None => {}
        }
    }

    fn send_ping(&mut self) {
        self.nonce += 1;
        let nonce = self.nonce;
        let ping = control_frame(Kind::Ping(proto::Ping {
            nonce,
            last_rtt_us: self.last_rtt_us,
        }));
        // A ping only asks for an answer; liveness is judged by what the client sends.
        // When the queue is full (a slow reader), skip it: sending it as a reply would
        // apply the slow-consumer policy and close even a `DropNewest` connection.
        if self.state.outbox.offer(OutFrame::reply(ping)).is_ok() {
            self.ping = Some((nonce, Instant::now()));
        }
    }

    fn enqueue(&mut self, id: u64, field: u32, call: D::Call) {
        if id != 0 && self.in_use(id) {
            // Not the answer of the call that holds the id (it gets its own): scope FRAME.
            HubMetrics::incr(&self.core().metrics.frames_rejected);
            return self.send(frame_error_frame(
                id,
                field,
                Code::AlreadyExists,
                format!(
                    "call id {id} is already in use by a call queued or running on this connection"
                ),
            ));
        }
        let max = self.core().config.max_queued_calls;
        if self.running.is_some() && self.queue.len() >= max {
            return self.reject(
                id,
                Some(field),
                Code::ResourceExhausted,
                format!("too many calls queued ({max}); wait for replies before sending more"),
            );
        }
        self.queue.push_back((id, field, call));
        if self.running.is_none() {
            self.start_next();
        }
    }

    /// Whether call id `id` is held by a call queued, running or parked. (Scanned:
    /// the queue is bounded by `max_queued_calls`, parked calls by the ask limits,
    /// and a connection's calls are few; no hashing per call.)
    fn in_use(&self, id: u64) -> bool {
        self.running.as_ref().is_some_and(|r| r.id == id)
            || self.queue.iter().any(|q| q.0 == id)
            || self.parked.iter().any(|r| r.id == id)
    }

    fn start_next(&mut self) {
        let Some((id, field, call)) = self.queue.pop_front() else {
            return;
        };
        let name = D::call_name(&call);
        HubMetrics::incr(&self.core().metrics.calls);
        let span = tracing::info_span!("call", call = name, id);
        // The last call's state, if nothing holds it any more (its asks are over).
        let state = match self.call_state.take() {
            Some(mut state) => match Arc::get_mut(&mut state) {
                Some(s) => {
                    *s.self_asks.get_mut() = 0;
                    state
                }
                None => Arc::new(CallState::default()),
            },
            None => Arc::new(CallState::default()),
        };
        self.call_state = Some(state.clone());
        let fut = self.shared.dispatch.dispatch(self.ctx.clone(), id, call);
        self.running = Some(Running {
            fut,
            done: false,
            state,
            span,
            id,
            field,
            name,
            // A call run as its frame arrives starts then (no second clock read);
            // one that waited in the queue starts now.
            started: self.frame_at.take().unwrap_or_else(Instant::now),
        });
    }

    fn finish(&mut self, (id, field, name, started, result): Finished) {
        let metrics = &self.core().metrics;
        metrics.call_seconds.record(started.elapsed());
        match result {
            Ok(Ok(reply)) => {
                let max = self.core().max_outbound();
                if id == 0 {
                    // Fire-and-forget: no reply.
                } else if reply.len() > max {
                    HubMetrics::incr(&metrics.calls_failed);
                    HubMetrics::incr(&metrics.frames_too_large);
                    self.send(call_error_frame(
                        id,
                        field,
                        Code::OutOfRange,
                        format!(
                            "reply to `{name}` is {} bytes; the limit is {max}",
                            reply.len()
                        ),
                    ));
                } else {
                    self.send(reply);
                }
            }
            Ok(Err(status)) => {
                HubMetrics::incr(&metrics.calls_failed);
                tracing::debug!(call = name, id, %status, "call failed");
                // Sent for fire-and-forget calls too (with id 0 and the call case), so
                // failures are never silent.
                self.send(call_error_frame(id, field, status.code(), status.message()));
            }
            Err(()) => {
                HubMetrics::incr(&metrics.calls_failed);
                tracing::error!(call = name, id, "hub handler panicked");
                self.send(call_error_frame(
                    id,
                    field,
                    Code::Internal,
                    format!("the hub's `{name}` handler panicked"),
                ));
            }
        }
    }
}
