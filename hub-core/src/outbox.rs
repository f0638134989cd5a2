//! One connection's outbound queue, bounded in frames and bytes, and the server-wide
//! byte budget all queues share.
//!
//! # Budgets
//!
//! Pushes (broadcasts, direct sends) count against the connection's budget
//! ([`OutboxLimits::frames`], [`OutboxLimits::bytes`]). A connection over its budget is
//! *behind*. What happens then is the [`SlowConsumerPolicy`]:
//!
//! - `Disconnect`: pushes are still queued, up to [`HARD_LIMIT_FACTOR`] times the
//!   budget; a connection that stays behind for [`OutboxLimits::grace`] (a client that
//!   stopped reading), or reaches the hard limit, is closed with `RESOURCE_EXHAUSTED`.
//!   A client that is briefly behind (a burst, a network hiccup) catches up and misses
//!   nothing.
//! - `DropNewest`: pushes over the budget are dropped and the client sees a gap in `seq`.
//!
//! Replies, errors and control frames are not pushes: they never count against the
//! budget and never close a connection. They are bounded by their producer instead: the
//! connection stops reading new calls while [`Outbox::replies_backlogged`] (replies are
//! backpressure).
//!
//! Every queued byte also counts in the server's [`OutboundBudget`], shared by all
//! connections of the hubs of one server. It counts memory: a broadcast's bytes, shared
//! by its recipients, count once ([`Outbox::account`]). When the total is over its limit,
//! a connection holding more than its fair share (limit / connections) is treated as
//! over its hard limit; connections within their share are not touched.
//!
//! A frame into an empty queue is always accepted (a frame larger than the budget must
//! still get through to a client that reads).
//!
//! # Cost
//!
//! A lock-free queue and relaxed atomic counters: no lock and no clock read per frame
//! (the clock is read only when a connection is behind).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use crossbeam_queue::SegQueue;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::HubMetrics;
use crate::frame::OutFrame;

/// What happens when a connection's outbound queue is over its budget (the client
/// stopped reading, or reads slower than it is sent to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Keep queueing (up to [`HARD_LIMIT_FACTOR`] times the budget) for the grace
    /// period; close the connection with `RESOURCE_EXHAUSTED` if it is still over
    /// budget then, or at once when it reaches the hard limit. Other members are never
    /// slowed: delivery never waits for a queue. A connection is either up to date or
    /// closed, never silently missing pushes. This is the default.
    #[default]
    Disconnect,
    /// Drop pushes over the budget and count them (`pushes_dropped`). The client sees a
    /// gap in the push sequence numbers. Replies are never dropped.
    DropNewest,
}

/// While within its grace period, a queue over budget may grow to this many times its
/// budget (frames and bytes); reaching that applies the policy at once.
pub const HARD_LIMIT_FACTOR: usize = 2;

/// What each queued frame costs beyond its bytes (its slot, its handle), in the byte
/// counts: a flood of tiny frames is bounded in bytes too.
pub const FRAME_OVERHEAD: usize = 64;

/// The bounds of one connection's outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Pushes queued beyond which the connection is behind.
    pub frames: usize,
    /// Bytes of queued pushes (plus [`FRAME_OVERHEAD`] each) beyond which it is behind.
    pub bytes: usize,
    /// How long a connection may stay behind before `Disconnect` closes it. Zero: at once.
    pub grace: Duration,
    /// Replies, errors and control frames waiting to be written at which the
    /// connection should stop reading calls ([`Outbox::replies_backlogged`]).
    pub replies: usize,
    /// Bytes of waiting replies at which the connection should stop reading calls.
    pub reply_bytes: usize,
}

impl OutboxLimits {
    /// A budget of `frames` pushes, no byte budget, no grace: the policy applies as soon
    /// as the queue holds more than `frames` pushes.
    pub fn frames(frames: usize) -> Self {
        OutboxLimits {
            frames: frames.max(1),
            bytes: usize::MAX / (2 * HARD_LIMIT_FACTOR),
            grace: Duration::ZERO,
            replies: 64,
            reply_bytes: usize::MAX / 2,
        }
    }
}

/// The bytes queued for all connections of one server (all hubs built from one
/// `Hubs`), with a limit. Cheap to share; the counters are relaxed atomics.
#[derive(Debug)]
pub struct OutboundBudget {
    /// The limit in bytes.
    limit: usize,
    /// Bytes queued now.
    used: AtomicUsize,
    /// The most bytes queued at once so far.
    peak: AtomicUsize,
    /// Open outboxes, for the fair share.
    connections: AtomicUsize,
}

impl OutboundBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        OutboundBudget {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
        }
    }

    /// A budget without a limit.
    pub fn unlimited() -> Self {
        Self::new(usize::MAX / 2)
    }

    /// The limit, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes queued now (a gauge).
    pub fn used(&self) -> usize {
        self.used.load(Relaxed)
    }

    /// The most bytes that were queued at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }

    /// The number of open outboxes.
    pub fn connections(&self) -> usize {
        self.connections.load(Relaxed)
    }

    #[inline]
    fn add(&self, n: usize) -> usize {
        let now = self.used.fetch_add(n, Relaxed) + n;
        if now > self.peak.load(Relaxed) {
            self.peak.fetch_max(now, Relaxed);
        }
        now
    }

    #[inline]
    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Relaxed);
    }

    /// Whether the total is over the limit and a queue holding `backlog` bytes holds
    /// more than its fair share.
    #[inline]
    fn squeezes(&self, backlog: usize) -> bool {
        self.used.load(Relaxed) > self.limit
            && backlog > self.limit / self.connections.load(Relaxed).max(1)
    }
}

/// A buffer whose bytes count in an [`OutboundBudget`] while any clone of it lives.
struct Accounted {
    bytes: Bytes,
    budget: Arc<OutboundBudget>,
}

impl AsRef<[u8]> for Accounted {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Accounted {
    fn drop(&mut self) {
        self.budget.sub(self.bytes.len());
    }
}

/// Why a connection is being closed by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The gRPC status code the stream ends with.
    pub code: tonic::Code,
    /// Why, in words.
    pub message: String,
    /// Send what is already queued before closing (graceful shutdown) rather than discarding it.
    pub drain: bool,
}

impl CloseReason {
    /// A reason that discards queued frames.
    pub fn new(code: tonic::Code, message: impl Into<String>) -> Self {
        CloseReason {
            code,
            message: message.into(),
            drain: false,
        }
    }

    /// A reason that sends queued frames first.
    pub fn draining(code: tonic::Code, message: impl Into<String>) -> Self {
        CloseReason {
            code,
            message: message.into(),
            drain: true,
        }
    }
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushRejected {
    /// The queue was over its budget (and the connection was closed or the push
    /// dropped, per policy).
    #[error("outbound queue full")]
    Full,
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
}

struct Shared {
    /// Frames for the connection's writer. Lock-free, unbounded as a structure: the
    /// counters below bound it. Both sides may pop, so a close can free what a stalled
    /// writer will never send.
    queue: SegQueue<OutFrame>,
    /// The writer's waker.
    waker: AtomicWaker,
    /// Fired once when the connection must end.
    closed: CancellationToken,
    /// Why it ended, set by whoever fired `closed` first.
    reason: OnceLock<CloseReason>,
    /// Pushes dropped since the last queued push, carried by the next one as `skipped`.
    dropped: AtomicU64,
    /// What a queue over budget means.
    policy: SlowConsumerPolicy,
    /// The budget.
    limits: OutboxLimits,
    /// Pushes queued.
    push_frames: AtomicUsize,
    /// Bytes of pushes queued (with [`FRAME_OVERHEAD`] each); broadcasts count in full.
    push_bytes: AtomicUsize,
    /// Replies, errors and control frames queued.
    reply_frames: AtomicUsize,
    /// Their bytes (with [`FRAME_OVERHEAD`] each).
    reply_bytes: AtomicUsize,
    /// Frames queued by [`Outbox::offer`] (heartbeats, refusals), bounded by `limits.replies`.
    control_frames: AtomicUsize,
    /// When the queue went over budget, in nanoseconds since `epoch`, plus one; 0: it is not.
    behind_since: AtomicU64,
    /// The origin of `behind_since`.
    epoch: Instant,
    /// Wakes the connection task when the queue goes over budget (to time the grace).
    went_behind: Notify,
    /// Wakes the connection task when replies drain below the backlog limit.
    replies_drained: Notify,
    /// The server-wide byte budget.
    budget: Arc<OutboundBudget>,
    /// Where drops and slow-consumer closes are counted.
    metrics: Arc<HubMetrics>,
}

impl Shared {
    /// Whether [`Outbox::close`] was called. `close` sets the reason before it cancels
    /// `closed`, so this is true no later than the token; it is one atomic load,
    /// where `CancellationToken::is_cancelled` takes a mutex: it runs once per frame
    /// and recipient of every broadcast.
    #[inline]
    fn closing(&self) -> bool {
        self.reason.get().is_some()
    }

    #[inline]
    fn hard_frames(&self) -> usize {
        self.limits.frames.saturating_mul(HARD_LIMIT_FACTOR)
    }

    #[inline]
    fn hard_bytes(&self) -> usize {
        self.limits.bytes.saturating_mul(HARD_LIMIT_FACTOR)
    }

    #[inline]
    fn replies_over(&self, frames: usize, bytes: usize) -> bool {
        frames >= self.limits.replies || bytes >= self.limits.reply_bytes
    }

    /// Books a frame leaving the queue (written, or discarded).
    #[inline]
    fn taken(&self, frame: &OutFrame) {
        let cost = frame.bytes.len() + FRAME_OVERHEAD;
        self.metrics.queued_bytes.decrement(cost as f64);
        if frame.push {
            let frames = self.push_frames.fetch_sub(1, Relaxed) - 1;
            let bytes = self.push_bytes.fetch_sub(cost, Relaxed) - cost;
            if frames <= self.limits.frames
                && bytes <= self.limits.bytes
                && self.behind_since.load(Relaxed) != 0
            {
                self.behind_since.store(0, Relaxed);
            }
            // A push's bytes count in the server budget through `Outbox::account`
            // (once per buffer), not per queue: no shared counter is touched per
            // recipient of a broadcast.
        } else if frame.control {
            self.control_frames.fetch_sub(1, Relaxed);
            self.budget.sub(cost);
        } else {
            let frames = self.reply_frames.fetch_sub(1, Relaxed);
            let bytes = self.reply_bytes.fetch_sub(cost, Relaxed);
            if self.replies_over(frames, bytes) && !self.replies_over(frames - 1, bytes - cost) {
                self.replies_drained.notify_one();
            }
            self.budget.sub(cost);
        }
    }

    /// Frees every queued frame (a close that does not drain, or no writer left).
    fn discard(&self) {
        while let Some(frame) = self.queue.pop() {
            self.taken(&frame);
        }
    }

    fn now_nanos(&self) -> u64 {
        (Instant::now()
            .saturating_duration_since(self.epoch)
            .as_nanos() as u64)
            .saturating_add(1)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.discard();
        self.budget.connections.fetch_sub(1, Relaxed);
    }
}

/// The sending side of one connection's bounded outbound queue. Cheap to clone.
///
/// Senders never wait: [`Outbox::push`] either queues the frame or applies the
/// [`SlowConsumerPolicy`] at once, so one slow client never slows a broadcast.
#[derive(Clone)]
pub struct Outbox(Arc<Shared>);

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("limits", &self.0.limits)
            .field("queued_bytes", &self.queued_bytes())
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Outbox {
    /// A new queue with a budget of `capacity` pushes and no grace (see
    /// [`OutboxLimits::frames`]), counting in a budget of its own without a limit.
    pub fn new(
        capacity: usize,
        policy: SlowConsumerPolicy,
        metrics: Arc<HubMetrics>,
    ) -> (Outbox, OutboxReceiver) {
        Self::with_limits(
            OutboxLimits::frames(capacity),
            policy,
            metrics,
            Arc::new(OutboundBudget::unlimited()),
        )
    }

    /// A new queue with these limits, counting in the server-wide `budget`.
    pub fn with_limits(
        limits: OutboxLimits,
        policy: SlowConsumerPolicy,
        metrics: Arc<HubMetrics>,
        budget: Arc<OutboundBudget>,
    ) -> (Outbox, OutboxReceiver) {
        budget.connections.fetch_add(1, Relaxed);
        let shared = Arc::new(Shared {
            queue: SegQueue::new(),
            waker: AtomicWaker::new(),
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
            dropped: AtomicU64::new(0),
            policy,
            limits: OutboxLimits {
                frames: limits.frames.max(1),
                bytes: limits.bytes.max(1),
                replies: limits.replies.max(1),
                reply_bytes: limits.reply_bytes.max(1),
                grace: limits.grace,
            },
            push_frames: AtomicUsize::new(0),
            push_bytes: AtomicUsize::new(0),
            reply_frames: AtomicUsize::new(0),
            reply_bytes: AtomicUsize::new(0),
            control_frames: AtomicUsize::new(0),
            behind_since: AtomicU64::new(0),
            epoch: Instant::now(),
            went_behind: Notify::new(),
            replies_drained: Notify::new(),
            budget,
            metrics,
        });
        let rx = OutboxReceiver {
            shared: shared.clone(),
            seq: 0,
            closing: None,
        };
        (Outbox(shared), rx)
    }

    /// Makes `frame` count in this outbox's server budget while any clone of it lives.
    /// Call it once per buffer before handing clones to many outboxes of the same
    /// server (a broadcast): its bytes then count once, as memory does. A push whose
    /// buffer was not accounted does not count in the total (only in its queue's
    /// budget); per-frame overhead is bounded by the per-connection limits.
    pub fn account(&self, frame: &Bytes) -> Bytes {
        self.0.budget.add(frame.len());
        Bytes::from_owner(Accounted {
            bytes: frame.clone(),
            budget: self.0.budget.clone(),
        })
    }

    /// Queues a frame without waiting. A push (`frame.push`) counts against the budget
    /// and the [`SlowConsumerPolicy`] applies to it; any other frame (a reply, an error,
    /// a control frame) is always queued while the connection is open.
    pub fn push(&self, mut frame: OutFrame) -> Result<(), PushRejected> {
        let s = &*self.0;
        if s.closing() {
            return Err(PushRejected::Closed);
        }
        if !frame.push {
            return self.queue_reply(frame);
        }
        let cost = frame.bytes.len() + FRAME_OVERHEAD;
        let frames = s.push_frames.fetch_add(1, Relaxed) + 1;
        let bytes = s.push_bytes.fetch_add(cost, Relaxed) + cost;
        // The only frame in the queue is always accepted.
        let alone = frames == 1;
        let squeezed = !alone && s.budget.squeezes(bytes);
        let hard = !alone && (frames > s.hard_frames() || bytes > s.hard_bytes()) || squeezed;
        let soft = !alone && (frames > s.limits.frames || bytes > s.limits.bytes);
        if hard || (soft && s.policy == SlowConsumerPolicy::DropNewest) {
            s.push_frames.fetch_sub(1, Relaxed);
            s.push_bytes.fetch_sub(cost, Relaxed);
            if squeezed {
                HubMetrics::incr(&s.metrics.outbound_total_hits);
            }
            return Err(self.refuse(&frame, squeezed));
        }
        if soft && self.behind_too_long() {
            s.push_frames.fetch_sub(1, Relaxed);
            s.push_bytes.fetch_sub(cost, Relaxed);
            return Err(PushRejected::Full);
        }
        if s.policy == SlowConsumerPolicy::DropNewest {
            frame.skipped = s.dropped.swap(0, Relaxed);
        }
        s.metrics.queued_bytes.increment(cost as f64);
        s.queue.push(frame);
        s.waker.wake();
        HubMetrics::incr(&s.metrics.frames_queued);
        if s.closing() {
            // Closed while this frame went in: a non-draining close frees it now.
            self.discard_if_closed();
        }
        Ok(())
    }

    fn queue_reply(&self, mut frame: OutFrame) -> Result<(), PushRejected> {
        let s = &*self.0;
        frame.control = false;
        let cost = frame.bytes.len() + FRAME_OVERHEAD;
        s.reply_frames.fetch_add(1, Relaxed);
        s.reply_bytes.fetch_add(cost, Relaxed);
        s.budget.add(cost);
        s.metrics.queued_bytes.increment(cost as f64);
        s.queue.push(frame);
        s.waker.wake();
        HubMetrics::incr(&s.metrics.frames_queued);
        if s.closing() {
            self.discard_if_closed();
        }
        Ok(())
    }

    /// Applies the policy to a push that did not fit.
    fn refuse(&self, frame: &OutFrame, squeezed: bool) -> PushRejected {
        let s = &*self.0;
        if s.policy == SlowConsumerPolicy::DropNewest {
            s.dropped.fetch_add(1 + frame.skipped, Relaxed);
            HubMetrics::incr(&s.metrics.pushes_dropped);
            return PushRejected::Full;
        }
        let why = if squeezed {
            format!(
                "outbound queue full: the server's outbound budget ({} bytes) is spent and this connection holds more than its share; the client is not reading fast enough",
                s.budget.limit
            )
        } else {
            format!(
                "outbound queue full: {HARD_LIMIT_FACTOR} times its budget of {} frames or {} bytes; the client is not reading fast enough",
                s.limits.frames, s.limits.bytes
            )
        };
        self.slow_consumer(why);
        PushRejected::Full
    }

    fn slow_consumer(&self, why: String) {
        let s = &*self.0;
        if self.close(CloseReason::new(tonic::Code::ResourceExhausted, why)) {
            HubMetrics::incr(&s.metrics.slow_consumer_disconnects);
        }
        HubMetrics::incr(&s.metrics.pushes_dropped);
    }

    /// Marks the queue behind (if it was not) and closes the connection if it has been
    /// behind for longer than the grace. Returns whether it closed it.
    fn behind_too_long(&self) -> bool {
        let s = &*self.0;
        let now = s.now_nanos();
        let since = match s.behind_since.compare_exchange(0, now, Relaxed, Relaxed) {
            Ok(_) => {
                HubMetrics::incr(&s.metrics.slow_consumer_behind);
                s.went_behind.notify_one();
                now
            }
            Err(since) => since,
        };
        if Duration::from_nanos(now - since.min(now)) >= s.limits.grace {
            self.slow_consumer(format!(
                "outbound queue over budget ({} frames, {} bytes) for {:?}: the client is not reading",
                s.limits.frames, s.limits.bytes, s.limits.grace
            ));
            return true;
        }
        false
    }

    /// When the queue went over its budget, if it is over it now.
    pub fn behind_since(&self) -> Option<Instant> {
        match self.0.behind_since.load(Relaxed) {
            0 => None,
            n => Some(self.0.epoch + Duration::from_nanos(n - 1)),
        }
    }

    /// Resolves after the queue went over its budget (a wake-up to time the grace; the
    /// connection task calls [`Outbox::enforce_grace`] then).
    pub fn went_behind(&self) -> Notified<'_> {
        self.0.went_behind.notified()
    }

    /// Under `Disconnect`, closes the connection if it has been over budget for the
    /// grace period. Returns when to check again: the end of the grace of a queue that
    /// is behind and not yet closed, or `None`.
    pub fn enforce_grace(&self) -> Option<Instant> {
        let s = &*self.0;
        if s.policy != SlowConsumerPolicy::Disconnect || s.closing() {
            return None;
        }
        let since = self.behind_since()?;
        let deadline = since + s.limits.grace;
        if Instant::now() >= deadline {
            self.slow_consumer(format!(
                "outbound queue over budget ({} frames, {} bytes) for {:?}: the client is not reading",
                s.limits.frames, s.limits.bytes, s.limits.grace
            ));
            return None;
        }
        Some(deadline)
    }

    /// Whether replies, errors and control frames wait in the queue in such numbers
    /// (or bytes) that the connection should read no new call until some are written.
    pub fn replies_backlogged(&self) -> bool {
        let s = &*self.0;
        s.replies_over(s.reply_frames.load(Relaxed), s.reply_bytes.load(Relaxed))
    }

    /// Resolves after the reply backlog fell below its limit (check
    /// [`Outbox::replies_backlogged`] again: wake-ups may be stale).
    pub fn replies_drained(&self) -> Notified<'_> {
        self.0.replies_drained.notified()
    }

    /// Bytes queued for this connection now (pushes and replies, with the per-frame
    /// overhead; a broadcast's bytes count in full in each recipient's queue; offered
    /// frames are not included).
    pub fn queued_bytes(&self) -> usize {
        self.0.push_bytes.load(Relaxed) + self.0.reply_bytes.load(Relaxed)
    }

    /// Frames queued for this connection now.
    pub fn queued_frames(&self) -> usize {
        self.0.push_frames.load(Relaxed)
            + self.0.reply_frames.load(Relaxed)
            + self.0.control_frames.load(Relaxed)
    }

    /// The server-wide budget this queue counts in.
    pub fn budget(&self) -> &Arc<OutboundBudget> {
        &self.0.budget
    }

    /// Queues a frame the connection can do without (a heartbeat ping, a pong, the
    /// refusal of a frame over the rate limit) if the connection is not behind and
    /// fewer than [`OutboxLimits::replies`] such frames wait; otherwise returns
    /// [`PushRejected::Full`] and changes nothing (no policy applies). These frames
    /// never count in [`Outbox::replies_backlogged`]: they cannot stop the reading that
    /// tells a flooder.
    pub fn offer(&self, mut frame: OutFrame) -> Result<(), PushRejected> {
        let s = &*self.0;
        if s.closing() {
            return Err(PushRejected::Closed);
        }
        if self.behind_since().is_some() {
            return Err(PushRejected::Full);
        }
        if s.control_frames.fetch_add(1, Relaxed) >= s.limits.replies {
            s.control_frames.fetch_sub(1, Relaxed);
            return Err(PushRejected::Full);
        }
        frame.push = false;
        frame.control = true;
        s.budget.add(frame.bytes.len() + FRAME_OVERHEAD);
        s.metrics
            .queued_bytes
            .increment((frame.bytes.len() + FRAME_OVERHEAD) as f64);
        s.queue.push(frame);
        s.waker.wake();
        HubMetrics::incr(&s.metrics.frames_queued);
        if s.closing() {
            self.discard_if_closed();
        }
        Ok(())
    }

    /// Asks the connection to end. Returns `false` if it was already ending (the first
    /// reason wins). A reason that does not drain frees what is queued at once, so a
    /// client that stopped reading does not keep it alive.
    pub fn close(&self, reason: CloseReason) -> bool {
        if self.0.reason.set(reason).is_ok() {
            self.0.closed.cancel();
            self.0.waker.wake();
            self.discard_if_closed();
            true
        } else {
            false
        }
    }

    fn discard_if_closed(&self) {
        let s = &*self.0;
        if s.reason.get().is_some_and(|r| !r.drain) {
            s.discard();
        }
    }

    /// Whether the connection is ending.
    pub fn is_closed(&self) -> bool {
        self.0.closing()
    }

    /// Why the connection is ending, if it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.0.reason.get().cloned()
    }

    /// Resolves when [`Outbox::close`] has been called.
    pub fn closed(&self) -> WaitForCancellationFutureOwned {
        self.0.closed.clone().cancelled_owned()
    }
}

/// What the writer gets next.
#[derive(Debug)]
pub enum Next {
    /// A frame and the sequence number to write with it (0 for non-push frames).
    Frame(OutFrame, u64),
    /// The connection is closing for this reason; nothing follows.
    Close(CloseReason),
}

/// The receiving side of an [`Outbox`]: read by the connection's writer.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
    /// The last push sequence number handed out.
    seq: u64,
    /// Set once closing: the reason, returned after the drain (if any).
    closing: Option<CloseReason>,
}

impl OutboxReceiver {
    /// The next frame, or the close reason, or `None` once it was returned.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Next>> {
        let s = &*self.shared;
        if self.closing.is_none() {
            if s.closing() {
                self.start_closing();
            } else {
                if let Some(frame) = s.queue.pop() {
                    return Poll::Ready(Some(self.number(frame)));
                }
                s.waker.register(cx.waker());
                // Re-check after registering: a frame or a close may have come between.
                if let Some(frame) = s.queue.pop() {
                    return Poll::Ready(Some(self.number(frame)));
                }
                if !s.closing() {
                    return Poll::Pending;
                }
                self.start_closing();
            }
        }
        if let Some(reason) = &self.closing {
            if reason.drain
                && let Some(frame) = self.shared.queue.pop()
            {
                return Poll::Ready(Some(self.number(frame)));
            }
            return Poll::Ready(self.closing.take().map(Next::Close));
        }
        Poll::Ready(None)
    }

    /// Numbers the next pushes after `seq`, as if `seq` pushes had been handed out:
    /// a session restored on another server goes on from the last push its client saw.
    pub fn continue_after(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// The sequence number of the last push handed out (0: none yet). The next push
    /// gets a larger one.
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    fn start_closing(&mut self) {
        let reason = self
            .shared
            .reason
            .get()
            .cloned()
            .unwrap_or_else(|| CloseReason::new(tonic::Code::Unavailable, "connection closed"));
        self.closing = Some(reason);
    }

    fn number(&mut self, frame: OutFrame) -> Next {
        self.shared.taken(&frame);
        if !frame.push {
            return Next::Frame(frame, 0);
        }
        self.seq += 1 + frame.skipped;
        Next::Frame(frame, self.seq)
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        // No writer is left: end the connection and free what it will never send.
        let s = &*self.shared;
        if s.reason
            .set(CloseReason::new(
                tonic::Code::Unavailable,
                "connection closed",
            ))
            .is_ok()
        {
            s.closed.cancel();
        }
        s.discard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn frame() -> OutFrame {
        OutFrame::push(Bytes::from_static(b"x"))
    }

    async fn next(rx: &mut OutboxReceiver) -> Option<Next> {
        poll_fn(|cx| rx.poll_next(cx)).await
    }

    fn limits(frames: usize, bytes: usize, grace: Duration) -> OutboxLimits {
        OutboxLimits {
            frames,
            bytes,
            grace,
            replies: 4,
            reply_bytes: 1 << 20,
        }
    }

    #[tokio::test]
    async fn full_queue_disconnects_by_default() {
        let metrics = Arc::new(HubMetrics::default());
        let (tx, mut rx) = Outbox::new(2, SlowConsumerPolicy::Disconnect, metrics.clone());
        tx.push(frame()).unwrap();
        tx.push(frame()).unwrap();
        assert_eq!(tx.push(frame()), Err(PushRejected::Full));
        assert_eq!(tx.push(frame()), Err(PushRejected::Closed));
        match next(&mut rx).await {
            Some(Next::Close(r)) => assert_eq!(r.code, tonic::Code::ResourceExhausted),
            other => panic!("expected close, got {other:?}"),
        }
        assert_eq!(metrics.snapshot().slow_consumer_disconnects, 1);
    }

    #[tokio::test]
    async fn drop_policy_shows_a_gap_in_seq() {
        let metrics = Arc::new(HubMetrics::default());
        let (tx, mut rx) = Outbox::new(1, SlowConsumerPolicy::DropNewest, metrics.clone());
        tx.push(frame()).unwrap();
        assert_eq!(tx.push(frame()), Err(PushRejected::Full));
        assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 1))));
        tx.push(frame()).unwrap();
        assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 3))));
        assert_eq!(metrics.snapshot().pushes_dropped, 1);
    }

    #[tokio::test]
    async fn an_offer_to_a_full_queue_changes_nothing() {
        for policy in [
            SlowConsumerPolicy::Disconnect,
            SlowConsumerPolicy::DropNewest,
        ] {
            let metrics = Arc::new(HubMetrics::default());
            let (tx, mut rx) = Outbox::with_limits(
                limits(1, 1 << 20, Duration::from_secs(60)),
                policy,
                metrics.clone(),
                Arc::new(OutboundBudget::unlimited()),
            );
            tx.push(frame()).unwrap();
            if policy == SlowConsumerPolicy::Disconnect {
                // Over budget, within the grace.
                tx.push(frame()).unwrap();
                assert_eq!(
                    tx.offer(OutFrame::reply(Bytes::from_static(b"ping"))),
                    Err(PushRejected::Full)
                );
                assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 1))));
            }
            assert!(!tx.is_closed(), "{policy:?}");
            let seq = if policy == SlowConsumerPolicy::Disconnect {
                2
            } else {
                1
            };
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, s)) if s == seq));
            tx.offer(OutFrame::reply(Bytes::from_static(b"ping")))
                .unwrap();
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 0))));
            // Nothing was counted as dropped: the next push is not numbered past a gap.
            tx.push(frame()).unwrap();
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, s)) if s == seq + 1));
            let m = metrics.snapshot();
            assert_eq!(
                (m.pushes_dropped, m.slow_consumer_disconnects),
                (0, 0),
                "{policy:?}"
            );
        }
    }

    #[tokio::test]
    async fn draining_close_sends_queued_frames_first() {
        let (tx, mut rx) = Outbox::new(4, SlowConsumerPolicy::Disconnect, Default::default());
        tx.push(frame()).unwrap();
        tx.push(OutFrame::reply(Bytes::from_static(b"r"))).unwrap();
        tx.close(CloseReason::draining(tonic::Code::Unavailable, "bye"));
        assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 1))));
        assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 0))));
        assert!(matches!(next(&mut rx).await, Some(Next::Close(r)) if r.message == "bye"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_brief_burst_over_budget_is_absorbed() {
        let metrics = Arc::new(HubMetrics::default());
        let (tx, mut rx) = Outbox::with_limits(
            limits(4, 1 << 20, Duration::from_secs(2)),
            SlowConsumerPolicy::Disconnect,
            metrics.clone(),
            Arc::new(OutboundBudget::unlimited()),
        );
        // Twice the budget: behind, within the grace, nothing lost.
        for _ in 0..8 {
            tx.push(frame()).unwrap();
        }
        assert!(tx.behind_since().is_some());
        let deadline = tx.enforce_grace().expect("behind");
        assert_eq!(deadline, Instant::now() + Duration::from_secs(2));
        tokio::time::advance(Duration::from_secs(1)).await;
        for seq in 1..=8 {
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, s)) if s == seq));
        }
        // Caught up: the grace ends without a close, and the next burst starts afresh.
        assert_eq!(tx.behind_since(), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(tx.enforce_grace(), None);
        assert!(!tx.is_closed());
        let m = metrics.snapshot();
        assert_eq!(
            (m.slow_consumer_behind, m.slow_consumer_disconnects),
            (1, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_queue_over_budget_for_the_grace_is_closed_and_freed() {
        let metrics = Arc::new(HubMetrics::default());
        let budget = Arc::new(OutboundBudget::unlimited());
        let (tx, mut rx) = Outbox::with_limits(
            limits(2, 1 << 20, Duration::from_secs(2)),
            SlowConsumerPolicy::Disconnect,
            metrics.clone(),
            budget.clone(),
        );
        for _ in 0..3 {
            tx.push(frame()).unwrap();
        }
        let went_behind = tx.went_behind();
        tokio::time::timeout(Duration::from_millis(1), went_behind)
            .await
            .expect("woken when the queue went behind");
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert!(tx.enforce_grace().is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(tx.enforce_grace(), None);
        assert!(tx.is_closed());
        // Freed at once, though the writer never read.
        assert_eq!((tx.queued_bytes(), budget.used()), (0, 0));
        assert!(
            matches!(next(&mut rx).await, Some(Next::Close(r)) if r.code == tonic::Code::ResourceExhausted)
        );
        assert_eq!(metrics.snapshot().slow_consumer_disconnects, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hard_limit_closes_within_the_grace() {
        let metrics = Arc::new(HubMetrics::default());
        let (tx, _rx) = Outbox::with_limits(
            limits(100, 1000, Duration::from_secs(60)),
            SlowConsumerPolicy::Disconnect,
            metrics.clone(),
            Arc::new(OutboundBudget::unlimited()),
        );
        let big = || OutFrame::push(Bytes::from(vec![0u8; 400]));
        // 464 bytes each with the overhead: the fifth passes twice the budget.
        for _ in 0..4 {
            tx.push(big()).unwrap();
        }
        assert!(!tx.is_closed());
        assert_eq!(tx.push(big()), Err(PushRejected::Full));
        assert!(tx.is_closed());
        assert_eq!(tx.queued_bytes(), 0);
    }

    #[tokio::test]
    async fn a_frame_larger_than_the_budget_goes_into_an_empty_queue() {
        for policy in [
            SlowConsumerPolicy::Disconnect,
            SlowConsumerPolicy::DropNewest,
        ] {
            let (tx, mut rx) = Outbox::with_limits(
                limits(10, 100, Duration::ZERO),
                policy,
                Default::default(),
                Arc::new(OutboundBudget::unlimited()),
            );
            tx.push(OutFrame::push(Bytes::from(vec![0u8; 1000])))
                .unwrap();
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 1))));
            tx.push(OutFrame::push(Bytes::from(vec![0u8; 1000])))
                .unwrap();
            assert_eq!(
                tx.push(frame()),
                Err(PushRejected::Full),
                "{policy:?}: over budget"
            );
        }
    }

    #[tokio::test]
    async fn replies_never_close_and_report_a_backlog() {
        let metrics = Arc::new(HubMetrics::default());
        let (tx, mut rx) = Outbox::with_limits(
            limits(1, 100, Duration::ZERO),
            SlowConsumerPolicy::Disconnect,
            metrics.clone(),
            Arc::new(OutboundBudget::unlimited()),
        );
        for _ in 0..10 {
            tx.push(OutFrame::reply(Bytes::from(vec![0u8; 500])))
                .unwrap();
        }
        assert!(!tx.is_closed());
        assert!(tx.replies_backlogged());
        // Pushes still have their own budget.
        tx.push(frame()).unwrap();
        for _ in 0..6 {
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 0))));
        }
        assert!(tx.replies_backlogged());
        let drained = tx.replies_drained();
        assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 0))));
        assert!(!tx.replies_backlogged());
        tokio::time::timeout(Duration::from_millis(100), drained)
            .await
            .expect("woken when the backlog drained");
        assert_eq!(metrics.snapshot().slow_consumer_disconnects, 0);
    }

    #[tokio::test]
    async fn offers_are_bounded_and_never_backlog_replies() {
        let (tx, mut rx) = Outbox::with_limits(
            limits(10, 1 << 20, Duration::ZERO),
            SlowConsumerPolicy::Disconnect,
            Default::default(),
            Arc::new(OutboundBudget::unlimited()),
        );
        for _ in 0..4 {
            tx.offer(OutFrame::reply(Bytes::from_static(b"ping")))
                .unwrap();
        }
        assert_eq!(
            tx.offer(OutFrame::reply(Bytes::from_static(b"ping"))),
            Err(PushRejected::Full)
        );
        assert!(!tx.replies_backlogged());
        assert!(matches!(next(&mut rx).await, Some(Next::Frame(f, 0)) if f.control));
        tx.offer(OutFrame::reply(Bytes::from_static(b"ping")))
            .unwrap();
        assert_eq!(tx.queued_frames(), 4);
        assert!(!tx.is_closed());
    }

    #[tokio::test]
    async fn the_server_budget_squeezes_the_biggest_queue_only() {
        let metrics = Arc::new(HubMetrics::default());
        let budget = Arc::new(OutboundBudget::new(4000));
        let open = || {
            Outbox::with_limits(
                limits(1000, 1 << 20, Duration::from_secs(60)),
                SlowConsumerPolicy::Disconnect,
                metrics.clone(),
                budget.clone(),
            )
        };
        let (stalled, _stalled_rx) = open();
        let (reader, mut reader_rx) = open();
        let payload = Bytes::from(vec![0u8; 500]);
        let mut pushed = 0;
        while !stalled.is_closed() {
            // One buffer for both, counted once.
            let shared = stalled.account(&payload);
            let _ = stalled.push(OutFrame::push(shared.clone()));
            reader.push(OutFrame::push(shared)).unwrap();
            assert!(matches!(next(&mut reader_rx).await, Some(Next::Frame(..))));
            pushed += 1;
            assert!(pushed < 100, "never squeezed");
        }
        assert!(!reader.is_closed());
        assert!(budget.peak() <= 4000 + 564 * 2, "{}", budget.peak());
        assert_eq!(metrics.snapshot().outbound_total_hits, 1);
        // The stalled queue was freed, and so was the memory.
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn a_dropped_receiver_frees_the_queue() {
        let budget = Arc::new(OutboundBudget::unlimited());
        let (tx, rx) = Outbox::with_limits(
            limits(10, 1 << 20, Duration::ZERO),
            SlowConsumerPolicy::Disconnect,
            Default::default(),
            budget.clone(),
        );
        tx.push(frame()).unwrap();
        tx.push(OutFrame::reply(Bytes::from_static(b"r"))).unwrap();
        assert!(budget.used() > 0);
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(budget.used(), 0);
        assert_eq!(budget.connections(), 1);
        drop(tx);
        assert_eq!(budget.connections(), 0);
    }
}
