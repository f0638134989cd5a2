//! State shared by the [`HubClient`](crate::HubClient) handles and the connection's
//! reader task.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use hub_core::proto::ConnectionInfo;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{ClientError, CloseStatus};
use crate::spec::ClientSpec;
use crate::state::ConnectionState;

/// Hashes call ids: they are small, distinct and sequential, so one multiplication
/// spreads them well (SipHash was 4% of the client's instructions per call).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits (hashbrown's tag) and the low bits (its
        // bucket) both vary from one id to the next.
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A waiting call's place in [`Calls`]: the caller's future polls it.
pub(crate) enum Slot<E> {
    /// No answer yet; the waker of the task awaiting it, once it has polled.
    Waiting(Option<Waker>),
    /// The answer, for the caller to take (the error boxed: it is rare and large).
    Done(Result<E, Box<ClientError>>),
}

/// The calls waiting for their reply.
///
/// Each call has a [`Slot`] here from its registration until its future takes the
/// answer (or is dropped, which frees the slot: a late reply then goes nowhere). The
/// reader task puts replies, timeouts and the end of a stream into the slots and
/// wakes their callers; no channel per call.
///
/// Calls with the client's default timeout are timed by the reader task, not by a
/// timer each: their deadlines are `now + the same timeout`, taken under this lock, so
/// they are queued in deadline order and the reader's one timer only has to look at
/// the front. Calls with another timeout keep a timer of their own.
pub(crate) struct Calls<E> {
    /// Whether a stream is up: calls may register. `state` changes under the same
    /// lock, so a call that finds no stream up finds `Reconnecting` or `Closed` there.
    pub(crate) up: bool,
    /// The slots of the calls by id: waiting ones, and answered ones not yet taken.
    pub(crate) slots: HashMap<u64, Slot<E>, BuildHasherDefault<IdHasher>>,
    /// (deadline, id) of calls timed by the reader, in call (= deadline) order. Ids
    /// no longer waiting are dropped from the front as replies come (the server
    /// answers a connection's calls in order), and by a sweep if they pile up.
    pub(crate) deadlines: VecDeque<(Instant, u64)>,
}

impl<E> Calls<E> {
    pub(crate) fn new() -> Self {
        Calls {
            up: true,
            slots: HashMap::default(),
            deadlines: VecDeque::new(),
        }
    }

    /// Answers call `id` if it still waits, and returns the waker to wake (after the
    /// lock is let go). `Err(answer)`: no call waits for it.
    pub(crate) fn answer(
        &mut self,
        id: u64,
        answer: Result<E, Box<ClientError>>,
    ) -> Result<Option<Waker>, Result<E, Box<ClientError>>> {
        let Some(slot) = self.slots.get_mut(&id) else {
            return Err(answer);
        };
        let Slot::Waiting(waker) = slot else {
            return Err(answer);
        };
        let waker = waker.take();
        *slot = Slot::Done(answer);
        self.trim(id);
        Ok(waker)
    }

    /// Call `id` waits no more: drops its deadline if it is the front one (the server
    /// answers a connection's calls in order, so it usually is), and then sweeps.
    /// Looks no slot up: a deadline of a call no longer waiting left at the front
    /// costs the reader one early wake-up, whose expiry drops it.
    pub(crate) fn trim(&mut self, id: u64) {
        if self
            .deadlines
            .front()
            .is_some_and(|&(_, front)| front == id)
        {
            self.deadlines.pop_front();
        }
        self.sweep();
    }

    /// Drops the deadlines of calls no longer waiting if they outnumber the slots
    /// (replies out of order, calls dropped early).
    fn sweep(&mut self) {
        if self.deadlines.len() > 2 * self.slots.len() + 64 {
            let slots = &self.slots;
            self.deadlines
                .retain(|(_, id)| matches!(slots.get(id), Some(Slot::Waiting(_))));
        }
    }

    /// Fails the reader-timed calls whose deadline is not after `now` with `Timeout(t)`,
    /// and adds their wakers to `out`.
    pub(crate) fn expire(&mut self, now: Instant, t: Duration, out: &mut Vec<Waker>) {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(slot) = self.slots.get_mut(&id)
                && let Slot::Waiting(w) = slot
            {
                out.extend(w.take());
                *slot = Slot::Done(Err(Box::new(ClientError::Timeout(t))));
            }
        }
        self.sweep();
    }

    /// Fails every waiting call with `error()` and adds their wakers to `out` (the
    /// stream is gone). Answers not yet taken stay for their callers.
    pub(crate) fn fail_all(&mut self, error: impl Fn() -> ClientError, out: &mut Vec<Waker>) {
        self.deadlines.clear();
        for slot in self.slots.values_mut() {
            if let Slot::Waiting(w) = slot {
                out.extend(w.take());
                *slot = Slot::Done(Err(Box::new(error())));
            }
        }
    }

    /// The earliest deadline of a reader-timed call still waiting.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.front().map(|&(d, _)| d)
    }
}

/// The last position seen of each group, by group: its offset, its epoch, and the
/// `seq` of the push that carried it (how recently it was updated).
pub(crate) type Positions = HashMap<String, (u64, u64, u64)>;

/// The most group positions a client keeps and presents on a resume (request
/// metadata must stay small: about 7 KiB at this count); a group beyond it is replayed
/// from where the session joined it, so pushes may come twice, never go missing.
pub const MAX_POSITIONS: usize = 128;

pub(crate) struct Shared<S: ClientSpec> {
    /// Calls waiting for their reply (and whether a stream is up to make them on).
    pub(crate) calls: Mutex<Calls<S::Event>>,
    /// The default call timeout: calls with it are timed by the reader task.
    pub(crate) call_timeout: Option<Duration>,
    /// Why the connection ended, once it has.
    pub(crate) closed: watch::Sender<Option<CloseStatus>>,
    /// The last measured round trip.
    pub(crate) latency: Mutex<Option<Duration>>,
    /// Where the connection stands.
    pub(crate) state: watch::Sender<ConnectionState>,
    /// The hello of the stream up now (or of the last one).
    pub(crate) info: Mutex<Arc<ConnectionInfo>>,
    /// The `seq` of the last push handed to the receiver on this connection (0: none),
    /// presented on a resume; pushes at or below it are not handed again.
    pub(crate) last_seq: AtomicU64,
    /// The last position of each group a push handed over came from (groups whose
    /// backplane keeps history), presented on a resume so that another server replays
    /// exactly what was missed: at most [`MAX_POSITIONS`], the least recently updated
    /// dropped.
    pub(crate) positions: Mutex<Positions>,
}
