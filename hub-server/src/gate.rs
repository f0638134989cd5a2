//! Wake-ups of the connection loop's rarely ready futures, told apart without
//! polling them.
//!
//! The loop waits on many futures at once, most of which are ready once in a
//! connection's life (its close, the server's shutdown, a kick) or seldom (the
//! heartbeat, a queue going behind). Polling each of them on every pass costs a lock
//! for a `Notify` or a `CancellationToken` and a timer poll for the heartbeat, several
//! times per call. Instead each of them is polled with a waker of its own, a *lane*,
//! which marks its bit in the [`Gate`] and wakes the task: a pass polls only the
//! futures whose bit is marked, and the others cost one atomic load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// The bits of the futures woken since they were last polled, and the task to wake.
#[derive(Default)]
pub(crate) struct Gate {
    marked: AtomicU32,
    task: AtomicWaker,
}

/// The waker of one lane: marks its bit, then wakes the task.
struct Lane {
    gate: Arc<Gate>,
    bit: u32,
}

impl Wake for Lane {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.gate.marked.fetch_or(self.bit, Ordering::AcqRel);
        self.gate.task.wake();
    }
}

impl Gate {
    /// A gate with every bit of `lanes` marked: each lane's future is polled on the
    /// first pass (which registers its waker).
    pub(crate) fn new(lanes: u32) -> Arc<Gate> {
        Arc::new(Gate {
            marked: AtomicU32::new(lanes),
            task: AtomicWaker::new(),
        })
    }

    /// The waker of lane `bit`.
    pub(crate) fn lane(self: &Arc<Self>, bit: u32) -> Waker {
        Waker::from(Arc::new(Lane {
            gate: self.clone(),
            bit,
        }))
    }

    /// Registers the task's waker; call once per pass, before [`Gate::poll`].
    pub(crate) fn register(&self, cx: &Context<'_>) {
        self.task.register(cx.waker());
    }

    /// Marks `bit`, so that its future is polled on the next pass (after replacing a
    /// future that must be polled once to register its waker).
    pub(crate) fn arm(&self, bit: u32) {
        self.marked.fetch_or(bit, Ordering::AcqRel);
    }

    /// Polls `fut` with the waker of its lane if the lane was marked (unmarking it
    /// first, so that a wake-up during the poll marks it again); `Pending` otherwise.
    pub(crate) fn poll<T>(
        &self,
        bit: u32,
        lane: &Waker,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        if self.marked.load(Ordering::Acquire) & bit == 0 {
            return Poll::Pending;
        }
        self.marked.fetch_and(!bit, Ordering::AcqRel);
        poll(&mut Context::from_waker(lane))
    }

    /// Whether lane `bit` is marked.
    #[cfg(test)]
    pub(crate) fn is_marked(&self, bit: u32) -> bool {
        self.marked.load(Ordering::Acquire) & bit != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::{Pin, pin};
    use tokio::sync::futures::Notified;

    /// One pass of a loop waiting on `notified` through lane 1: whether it was ready.
    fn pass(gate: &Gate, lane: &Waker, notified: Pin<&mut Notified<'_>>, polls: &mut u32) -> bool {
        let task = futures_util::task::noop_waker();
        gate.register(&Context::from_waker(&task));
        gate.poll(1, lane, |cx| {
            *polls += 1;
            notified.poll(cx)
        })
        .is_ready()
    }

    #[test]
    fn a_lane_is_polled_only_after_its_wake_up() {
        let gate = Gate::new(1);
        let lane = gate.lane(1);
        let notify = tokio::sync::Notify::new();
        let mut notified = pin!(notify.notified());
        let mut polls = 0;
        // The first pass polls it (registering the lane), the next ones do not.
        assert!(!pass(&gate, &lane, notified.as_mut(), &mut polls));
        assert!(!pass(&gate, &lane, notified.as_mut(), &mut polls));
        assert_eq!(polls, 1);
        assert!(!gate.is_marked(1));
        notify.notify_one();
        assert!(gate.is_marked(1));
        assert!(pass(&gate, &lane, notified.as_mut(), &mut polls));
        assert_eq!(polls, 2);
    }
}
