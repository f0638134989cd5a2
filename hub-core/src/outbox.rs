use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::HubMetrics;
use crate::frame::OutFrame;

/// What happens when a connection's outbound queue is full (the client stopped reading,
/// or reads slower than it is sent to).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection with `RESOURCE_EXHAUSTED` ("outbound queue full"). The
    /// queue bound is the grace: a client may fall that many frames behind. Other
    /// members are never slowed: delivery never waits for a queue. This is the default,
    /// because a client that silently misses pushes is harder to reason about than one
    /// that reconnects.
    #[default]
    Disconnect,
    /// Drop the push and count it (`pushes_dropped`). The client sees a gap in the
    /// push sequence numbers. Replies are never dropped: a full queue on a reply
    /// closes the connection as with `Disconnect`. (Under either policy, heartbeat
    /// pings and pongs that find the queue full are skipped: see [`Outbox::offer`].)
    DropNewest,
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
    /// The queue was full (and the connection was closed or the push dropped, per policy).
    #[error("outbound queue full")]
    Full,
    /// The connection is closed or closing.
    #[error("connection closed")]
    Closed,
}

struct Shared {
    /// Frames for the connection's writer; bounded, never awaited by senders.
    tx: mpsc::Sender<OutFrame>,
    /// Fired once when the connection must end.
    closed: CancellationToken,
    /// Why it ended, set by whoever fired `closed` first.
    reason: OnceLock<CloseReason>,
    /// Pushes dropped since the last queued push, carried by the next one as `skipped`.
    dropped: AtomicU64,
    /// What a full queue means.
    policy: SlowConsumerPolicy,
    /// The queue bound, for error messages.
    capacity: usize,
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
            .field("capacity", &self.0.capacity)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Outbox {
    /// A new queue holding at most `capacity` frames.
    pub fn new(
        capacity: usize,
        policy: SlowConsumerPolicy,
        metrics: Arc<HubMetrics>,
    ) -> (Outbox, OutboxReceiver) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let shared = Arc::new(Shared {
            tx,
            closed: CancellationToken::new(),
            reason: OnceLock::new(),
            dropped: AtomicU64::new(0),
            policy,
            capacity: capacity.max(1),
            metrics,
        });
        let cancelled = Box::pin(shared.closed.clone().cancelled_owned());
        let rx = OutboxReceiver {
            rx,
            shared: shared.clone(),
            cancelled,
            seq: 0,
            closing: None,
        };
        (Outbox(shared), rx)
    }

    /// Queues a frame without waiting.
    pub fn push(&self, mut frame: OutFrame) -> Result<(), PushRejected> {
        if self.0.closing() {
            return Err(PushRejected::Closed);
        }
        let push = frame.push;
        if push && self.0.policy == SlowConsumerPolicy::DropNewest {
            frame.skipped = self.0.dropped.swap(0, Relaxed);
        }
        let skipped = frame.skipped;
        match self.0.tx.try_send(frame) {
            Ok(()) => {
                HubMetrics::incr(&self.0.metrics.frames_queued);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(PushRejected::Closed),
            Err(TrySendError::Full(_)) => {
                if push && self.0.policy == SlowConsumerPolicy::DropNewest {
                    self.0.dropped.fetch_add(1 + skipped, Relaxed);
                    HubMetrics::incr(&self.0.metrics.pushes_dropped);
                } else if self.close(CloseReason::new(
                    tonic::Code::ResourceExhausted,
                    format!(
                        "outbound queue full ({} frames): the client is not reading fast enough",
                        self.0.capacity
                    ),
                )) {
                    HubMetrics::incr(&self.0.metrics.slow_consumer_disconnects);
                    HubMetrics::incr(&self.0.metrics.pushes_dropped);
                }
                Err(PushRejected::Full)
            }
        }
    }

    /// Queues a frame the connection can do without (a heartbeat ping, a pong) if
    /// there is room, without applying the [`SlowConsumerPolicy`] when there is not:
    /// a full queue returns [`PushRejected::Full`] and changes nothing. Otherwise a
    /// heartbeat meeting the queue of a slow reader would close a connection the
    /// policy means to keep (`DropNewest`).
    pub fn offer(&self, frame: OutFrame) -> Result<(), PushRejected> {
        if self.0.closing() {
            return Err(PushRejected::Closed);
        }
        match self.0.tx.try_send(frame) {
            Ok(()) => {
                HubMetrics::incr(&self.0.metrics.frames_queued);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(PushRejected::Closed),
            Err(TrySendError::Full(_)) => Err(PushRejected::Full),
        }
    }

    /// Asks the connection to end. Returns `false` if it was already ending (the first reason wins).
    pub fn close(&self, reason: CloseReason) -> bool {
        if self.0.reason.set(reason).is_ok() {
            self.0.closed.cancel();
            true
        } else {
            false
        }
    }

    /// Whether the connection is ending.
    pub fn is_closed(&self) -> bool {
        self.0.closing() || self.0.tx.is_closed()
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
    rx: mpsc::Receiver<OutFrame>,
    shared: Arc<Shared>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    /// The last push sequence number handed out.
    seq: u64,
    /// Set once closing: the reason, returned after the drain (if any).
    closing: Option<CloseReason>,
}

impl OutboxReceiver {
    /// The next frame, or the close reason, or `None` once every sender is gone.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Next>> {
        // The close flag is checked with one atomic load before each frame; the
        // cancellation future (which takes a lock when polled) is only polled to
        // register for a wake-up once the queue is empty.
        if self.closing.is_none() && self.shared.closing() {
            self.start_closing();
        }
        if self.closing.is_none() {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(frame)) => return Poll::Ready(Some(self.number(frame))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    if self.cancelled.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    self.start_closing();
                }
            }
        }
        if let Some(reason) = &self.closing {
            if reason.drain
                && let Ok(frame) = self.rx.try_recv()
            {
                return Poll::Ready(Some(self.number(frame)));
            }
            return Poll::Ready(self.closing.take().map(Next::Close));
        }
        Poll::Ready(None)
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
        if !frame.push {
            return Next::Frame(frame, 0);
        }
        self.seq += 1 + frame.skipped;
        Next::Frame(frame, self.seq)
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::future::poll_fn;

    fn frame() -> OutFrame {
        OutFrame::push(Bytes::from_static(b"x"))
    }

    async fn next(rx: &mut OutboxReceiver) -> Option<Next> {
        poll_fn(|cx| rx.poll_next(cx)).await
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
            let (tx, mut rx) = Outbox::new(1, policy, metrics.clone());
            tx.push(frame()).unwrap();
            assert_eq!(
                tx.offer(OutFrame::reply(Bytes::from_static(b"ping"))),
                Err(PushRejected::Full)
            );
            assert!(!tx.is_closed(), "{policy:?}");
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 1))));
            tx.offer(OutFrame::reply(Bytes::from_static(b"ping")))
                .unwrap();
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 0))));
            // Nothing was counted as dropped: the next push is not numbered past a gap.
            tx.push(frame()).unwrap();
            assert!(matches!(next(&mut rx).await, Some(Next::Frame(_, 2))));
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
}
