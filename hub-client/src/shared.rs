//! State shared by the [`HubClient`](crate::HubClient) handles and the connection's
//! reader task.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hub_core::proto::ConnectionInfo;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::error::{ClientError, CloseStatus};
use crate::spec::ClientSpec;
use crate::state::ConnectionState;

/// Where a call's reply goes.
pub(crate) type Reply<E> = oneshot::Sender<Result<E, ClientError>>;

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

/// The calls waiting for their reply.
///
/// Calls with the client's default timeout are timed by the reader task, not by a
/// timer each: their deadlines are `now + the same timeout`, taken under this lock, so
/// they are queued in deadline order and the reader's one timer only has to look at
/// the front. Calls with another timeout keep a timer of their own.
pub(crate) struct Calls<E> {
    /// Waiting calls by id.
    pub(crate) waiting: HashMap<u64, Reply<E>, BuildHasherDefault<IdHasher>>,
    /// (deadline, id) of calls timed by the reader, in call (= deadline) order. Ids
    /// no longer waiting are dropped from the front as replies come (the server
    /// answers a connection's calls in order), and by a sweep if they pile up.
    pub(crate) deadlines: VecDeque<(Instant, u64)>,
}

impl<E> Calls<E> {
    pub(crate) fn new() -> Self {
        Calls {
            waiting: HashMap::default(),
            deadlines: VecDeque::new(),
        }
    }

    /// Takes the waiter of call `id`, if it still waits.
    pub(crate) fn take(&mut self, id: u64) -> Option<Reply<E>> {
        let waiter = self.waiting.remove(&id)?;
        self.trim();
        Some(waiter)
    }

    /// Drops deadlines of calls no longer waiting: from the front, and all of them if
    /// they outnumber the waiting calls (replies out of order, calls dropped early).
    fn trim(&mut self) {
        while let Some(&(_, id)) = self.deadlines.front() {
            if self.waiting.contains_key(&id) {
                break;
            }
            self.deadlines.pop_front();
        }
        if self.deadlines.len() > 2 * self.waiting.len() + 64 {
            let waiting = &self.waiting;
            self.deadlines.retain(|(_, id)| waiting.contains_key(id));
        }
    }

    /// Takes the waiters of reader-timed calls whose deadline is not after `now`.
    pub(crate) fn expire(&mut self, now: Instant, out: &mut Vec<Reply<E>>) {
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            if let Some(w) = self.waiting.remove(&id) {
                out.push(w);
            }
        }
        self.trim();
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
    /// Calls waiting for their reply; `None` while no stream is up (reconnecting, or
    /// closed). `state` changes under this lock, so a call that finds `None` here
    /// finds `Reconnecting` or `Closed` there.
    pub(crate) calls: Mutex<Option<Calls<S::Event>>>,
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
