//! Sessions: a connection that outlives its stream.
//!
//! On a hub with sessions ([`HubConfig::sessions`](crate::HubConfig::sessions)), a
//! connection whose stream breaks (the transport dropped: a reset, a dead TCP
//! connection, a heartbeat timeout) is *detached* rather than ended: it keeps its id,
//! its identity and its group memberships, and its outbound queue keeps taking pushes
//! within its budget. A new `Connect` stream that presents the connection's resume
//! credential (`hub-resume` metadata) and the last push it saw (`hub-resume-seq`)
//! within [`SessionConfig::grace`] *attaches* to it: the pushes the client missed are
//! sent again with their `seq`, in order, then live frames follow.
//!
//! What the client missed is of two kinds: pushes still queued (never written; they
//! wait in the outbound queue, bounded by its budget), and pushes written to the old
//! stream that the client may not have read (kept in a replay buffer of
//! [`SessionConfig::replay_bytes`]). A resume whose `hub-resume-seq` is older than the
//! replay buffer reaches is refused as a gap.
//!
//! On a backplane that shares sessions (`Backplane::save_session`: Redis, NATS with
//! JetStream, the in-process bus), the server holding a session also keeps its record there (id,
//! a hash of the credential's secret, identity, groups, which server holds it),
//! written when the session opens and on every join and leave. A resume that reaches
//! another server ([`restore`]) checks the record, tells the old holder to let go
//! (a takeover command, if it is alive) and *restores* the session there: the same
//! id, identity and groups, `seq` going on after `hub-resume-seq`, outcome
//! `RESTORED`. The pushes missed while no stream was attached are not recovered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use hub_core::frame::OutFrame;
use hub_core::proto::{ResumeOutcome, Resumption};
use hub_core::session::hash_secret;
use hub_core::{CloseReason, ConnectionId, GroupName, HubMetrics, NodeId, Outbox, OutboxReceiver};
use tokio::sync::mpsc;
use tonic::Streaming;

use crate::rate::{Bucket, RateLimit, bucket};

/// How a hub keeps sessions for connections whose stream dropped. Every bound says
/// what happens when it is hit.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionConfig {
    /// How long a detached session waits for a resume. Past it the session ends as a
    /// disconnect does (it leaves its groups, `on_disconnect` runs with
    /// [`DisconnectReason::SessionExpired`](crate::DisconnectReason::SessionExpired)),
    /// counted in `sessions_expired`. Default 2 minutes.
    pub grace: Duration,
    /// Bytes of pushes already written to a stream that the server keeps to send again
    /// after a resume (frames whose delivery the client has not confirmed by its
    /// `hub-resume-seq`). Older ones are forgotten; a resume that needs them is refused
    /// with `GAP`. Pushes not yet written are not counted here: they wait in the
    /// outbound queue within its budget
    /// ([`HubConfig::outbound_queue_bytes`](crate::HubConfig::outbound_queue_bytes)),
    /// and a detached session whose queue goes over it ends as a slow consumer does.
    /// Default 256 KiB.
    pub replay_bytes: usize,
    /// Sessions one identity (user id) may hold at once. A new connection of an
    /// identity at the limit ends that identity's oldest detached session; if none is
    /// detached, the new connection gets no session (its hello carries no
    /// credential). Connections without an identity are bounded by
    /// [`SessionConfig::max_detached`] only. Default 16.
    pub max_per_identity: usize,
    /// Detached sessions the hub keeps at once on this server. A stream that drops when
    /// this many wait ends its session at once (counted in `sessions_expired`).
    /// Default 10,000.
    pub max_detached: usize,
    /// Lookups of session records on the backplane, per hub and server: a resume of a
    /// session this server does not hold reads its record (one backplane read, then a
    /// claim), and any client can present a well-shaped credential, so these reads
    /// are bounded here, for all clients together. A resume past the bound fails with
    /// the status `UNAVAILABLE` ("too many sessions restoring; retry"), before any
    /// read: the session is not touched, so the client's retry (with backoff, the same
    /// credential) can restore it. Counted in `resume_lookups_throttled`. A resume of
    /// a session this server holds reads nothing and is not bounded here; `None`: no
    /// bound.
    ///
    /// Default 1,000 a second, bursts of 4,000: when a server dies, its clients
    /// come back at once, spread over the servers left, and each should restore on
    /// its first or second attempt (the 1,000 clients of `hub-bench resume --clients
    /// 1000` fit in the burst); of 10,000 moving onto one server at once, 4,000
    /// restore at once and the others at 1,000 a second as they retry (about 6 s
    /// more, plus their backoff). A Redis or NATS serves such reads at tens of
    /// thousands a second: a sustained 1,000 a second of forged resumes is a small
    /// share of it.
    pub restore_lookups: Option<RateLimit>,
    /// Whether pushes to a connection id (`HubHandle::connection`,
    /// `Context::connection`, `Context::caller`, and an emitter's with the same
    /// setting) go through a group of the connection's own, `$conn/<id>`, which every
    /// connection of the hub joins when it opens, instead of straight to the server
    /// holding it. With a backplane that keeps group history (Redis `history`, NATS
    /// JetStream history), those pushes then get the group's offsets and history like
    /// any group push: a session restored on another server (`RESTORED`) gets the
    /// ones it missed replayed, once and in order, even those sent while no server
    /// held it; what history no longer holds is told (`pushes_lost`). Without group
    /// history on the backplane it changes nothing.
    ///
    /// The cost: one more group per connection (a join when it opens: a subscription
    /// and a presence entry on the backplane, and the group's keys or subjects), and
    /// each push to a connection makes a round trip through the backplane even to a
    /// connection on the same server. Every server of the hub, and every emitter
    /// pushing to its connections (`Emitter::connection_groups`), must agree on it: a
    /// push from one with it on goes to `$conn/<id>`, which a connection on a server
    /// with it off does not listen to (lost, unseen); a push from one with it off
    /// goes to the holding server, which still delivers it (without history).
    /// Asks and commands (disconnect) still go to the server holding the connection.
    /// Default off.
    pub connection_history: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            grace: Duration::from_secs(120),
            replay_bytes: 256 * 1024,
            max_per_identity: 16,
            max_detached: 10_000,
            restore_lookups: Some(RateLimit::new(1_000, 4_000)),
            connection_history: false,
        }
    }
}

impl SessionConfig {
    /// Sets [`SessionConfig::grace`].
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Sets [`SessionConfig::replay_bytes`].
    pub fn replay_bytes(mut self, bytes: usize) -> Self {
        self.replay_bytes = bytes;
        self
    }

    /// Sets [`SessionConfig::max_per_identity`].
    pub fn max_per_identity(mut self, sessions: usize) -> Self {
        self.max_per_identity = sessions.max(1);
        self
    }

    /// Sets [`SessionConfig::max_detached`].
    pub fn max_detached(mut self, sessions: usize) -> Self {
        self.max_detached = sessions;
        self
    }

    /// Sets [`SessionConfig::restore_lookups`].
    pub fn restore_lookups(mut self, limit: Option<RateLimit>) -> Self {
        self.restore_lookups = limit;
        self
    }

    /// Sets [`SessionConfig::connection_history`].
    pub fn connection_history(mut self, on: bool) -> Self {
        self.connection_history = on;
        self
    }
}

/// The request metadata key carrying a resume credential.
pub const RESUME_KEY: &str = "hub-resume";
/// The request metadata key carrying the last push sequence number the client saw.
pub const RESUME_SEQ_KEY: &str = "hub-resume-seq";
/// The binary request metadata key carrying the last position the client saw of each
/// group (`hub.v1.ResumePositions`), for a resume on another server.
pub const RESUME_POSITIONS_KEY: &str = "hub-resume-positions-bin";
/// The most group positions read from [`RESUME_POSITIONS_KEY`]; the rest are ignored
/// (their groups replay from where the session joined them).
pub const MAX_RESUME_POSITIONS: usize = 1024;

/// The sessions of one hub on one server.
pub(crate) struct Sessions {
    pub(crate) config: SessionConfig,
    metrics: Arc<HubMetrics>,
    registry: Mutex<Registry>,
    /// [`SessionConfig::restore_lookups`].
    lookups: Option<Bucket>,
}

#[derive(Default)]
struct Registry {
    /// Live sessions by connection id (ids of other servers too: sessions restored
    /// here).
    by_id: HashMap<ConnectionId, Arc<Session>>,
    /// Live sessions of each identity, oldest first.
    by_user: HashMap<Arc<str>, VecDeque<ConnectionId>>,
    /// Sessions detached now.
    detached: usize,
}

/// One connection's session: its credential, and the outbound side its streams share.
pub(crate) struct Session {
    pub(crate) id: ConnectionId,
    /// The identity the session is bound to (`None`: unauthenticated).
    pub(crate) user: Option<Arc<str>>,
    /// The outbound queue's reader, the replay buffer, and which stream writes now.
    pub(crate) io: Arc<Mutex<SessionIo>>,
    /// The connection's outbound queue (to close it).
    outbox: Outbox,
    /// Hands a resuming stream's request side to the connection task.
    attach: mpsc::UnboundedSender<Streaming<Bytes>>,
    /// What the backplane's record keeps of the credential's secret.
    pub(crate) secret_sha256: [u8; 32],
    /// Held while the record is written, so that writes of one session land in order;
    /// holds where the session joined each group with history (offset, epoch), which
    /// the record keeps.
    pub(crate) record: tokio::sync::Mutex<HashMap<GroupName, (u64, u64)>>,
    /// Another server resumed the session: it ends here without `on_disconnect`.
    taken_over: std::sync::atomic::AtomicBool,
}

/// What the streams of one session share.
pub(crate) struct SessionIo {
    /// The connection's outbound queue.
    pub(crate) rx: OutboxReceiver,
    /// The stream allowed to write: each attach (and each detach) takes a new number,
    /// and a stream with an older one ends.
    pub(crate) generation: u64,
    /// The waker of the stream writing now, to end it when another takes over.
    pub(crate) waker: Option<Waker>,
    /// Frames the current stream writes before the queue (the hello, the replayed
    /// pushes), with their `seq`.
    pub(crate) first: VecDeque<(OutFrame, u64)>,
    /// Pushes written, with their `seq`, oldest first, within `replay_limit` bytes.
    ring: VecDeque<(OutFrame, u64)>,
    ring_bytes: usize,
    replay_limit: usize,
    /// The secret of the session's credential (the same for its whole life, so that a
    /// stream that breaks before its hello is read can still be resumed).
    secret: u128,
    /// The session ended: no stream attaches any more.
    pub(crate) ended: bool,
    /// The stream broke and no other is attached.
    detached: bool,
}

impl SessionIo {
    /// Keeps a push just written, for a resume that needs it again.
    pub(crate) fn written(&mut self, frame: &OutFrame, seq: u64) {
        if seq == 0 {
            return;
        }
        self.ring_bytes += frame.bytes.len();
        self.ring.push_back((frame.clone(), seq));
        while self.ring_bytes > self.replay_limit
            && let Some((old, _)) = self.ring.pop_front()
        {
            self.ring_bytes -= old.bytes.len();
        }
    }
}

/// A resume credential as the client presents it: `<connection id>.<32 hex digits>`.
fn credential(id: ConnectionId, secret: u128) -> String {
    format!("{id}.{secret:032x}")
}

fn parse_credential(s: &str) -> Option<(ConnectionId, u128)> {
    let (id, secret) = s.trim().rsplit_once('.')?;
    if secret.len() != 32 {
        return None;
    }
    Some((id.parse().ok()?, u128::from_str_radix(secret, 16).ok()?))
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: u128, b: u128) -> bool {
    let x = a ^ b;
    std::hint::black_box((x as u64) | ((x >> 64) as u64)) == 0
}

/// What a resuming stream presents: its credential, the last `seq` it saw (as sent)
/// and the identity it is authenticated as.
pub(crate) struct ResumeAsk<'a> {
    pub(crate) credential: &'a str,
    pub(crate) seq: Option<&'a str>,
    pub(crate) user: Option<&'a str>,
}

/// A refused resume: the outcome and why.
pub(crate) struct Refusal {
    pub(crate) outcome: ResumeOutcome,
    pub(crate) reason: String,
    /// Not a session of this server: the backplane's record may know it.
    pub(crate) elsewhere: Option<Elsewhere>,
}

/// A well-formed resume of a session this server does not hold.
pub(crate) struct Elsewhere {
    pub(crate) id: ConnectionId,
    pub(crate) secret: u128,
    pub(crate) seq: u64,
}

impl Refusal {
    pub(crate) fn new(outcome: ResumeOutcome, reason: impl Into<String>) -> Self {
        Refusal {
            outcome,
            reason: reason.into(),
            elsewhere: None,
        }
    }

    /// A resume refused for a reason of the request or the hub.
    pub(crate) fn refused(reason: &str) -> Self {
        Refusal::new(ResumeOutcome::Refused, reason)
    }

    /// The hello's `resumption` field for it.
    pub(crate) fn resumption(&self) -> Resumption {
        Resumption {
            outcome: self.outcome as i32,
            reason: self.reason.clone(),
            replayed: 0,
        }
    }

    /// Counts it.
    pub(crate) fn count(&self, metrics: &HubMetrics) {
        HubMetrics::incr(match self.outcome {
            ResumeOutcome::Expired => &metrics.resumes_failed_expired,
            ResumeOutcome::Gap => &metrics.resumes_failed_gap,
            ResumeOutcome::IdentityMismatch => &metrics.resumes_failed_identity,
            ResumeOutcome::Unknown => &metrics.resumes_failed_unknown,
            _ => &metrics.resumes_failed_refused,
        });
    }
}

/// A resume that was accepted: the session, and the generation of the stream that writes.
pub(crate) struct Resumed {
    pub(crate) session: Arc<Session>,
    pub(crate) generation: u64,
}

/// What the connection task holds of its session.
pub(crate) struct Attachments {
    pub(crate) session: Arc<Session>,
    pub(crate) rx: mpsc::UnboundedReceiver<Streaming<Bytes>>,
}

impl Sessions {
    pub(crate) fn new(config: SessionConfig, metrics: Arc<HubMetrics>) -> Self {
        Sessions {
            lookups: config.restore_lookups.map(bucket),
            config,
            metrics,
            registry: Mutex::new(Registry::default()),
        }
    }

    /// Takes a token for one lookup of a session record on the backplane
    /// ([`SessionConfig::restore_lookups`]); `false` (counted in
    /// `resume_lookups_throttled`) if there is none left.
    pub(crate) fn admit_lookup(&self) -> bool {
        let admitted = self.lookups.as_ref().is_none_or(|b| b.check().is_ok());
        if !admitted {
            HubMetrics::incr(&self.metrics.resume_lookups_throttled);
        }
        admitted
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for a new connection, unless its identity holds as many as it
    /// may and none of them is detached (then the new connection gets no
    /// credential). Returns what the connection task keeps and the credential; the
    /// receiver back when no session was opened.
    pub(crate) fn open(
        &self,
        id: ConnectionId,
        user: Option<Arc<str>>,
        outbox: &Outbox,
        rx: OutboxReceiver,
        secret: Option<u128>,
    ) -> Result<(Attachments, String), OutboxReceiver> {
        // Locks are taken session first, registry second, never the other way: the
        // identity's sessions are copied out before each is looked at.
        let held: Vec<Arc<Session>> = match &user {
            Some(user) => {
                let reg = self.registry();
                reg.by_user.get(user).map_or_else(Vec::new, |list| {
                    list.iter()
                        .filter_map(|n| reg.by_id.get(n).cloned())
                        .collect()
                })
            }
            None => Vec::new(),
        };
        let mut evicted = None;
        if held.len() >= self.config.max_per_identity {
            match held.into_iter().find(|s| s.io().detached) {
                Some(oldest) => evicted = Some(oldest),
                None => return Err(rx),
            }
        }
        if let Some(old) = &evicted {
            HubMetrics::incr(&self.metrics.sessions_evicted);
            self.close(
                old,
                "session evicted: its identity opened too many sessions",
            );
        }
        let secret = secret.unwrap_or_else(rand::random::<u128>);
        let (tx, attach_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session {
            id,
            user: user.clone(),
            io: Arc::new(Mutex::new(SessionIo {
                rx,
                generation: 1,
                waker: None,
                first: VecDeque::new(),
                ring: VecDeque::new(),
                ring_bytes: 0,
                replay_limit: self.config.replay_bytes,
                secret,
                ended: false,
                detached: false,
            })),
            outbox: outbox.clone(),
            attach: tx,
            secret_sha256: hash_secret(secret),
            record: tokio::sync::Mutex::new(HashMap::new()),
            taken_over: Default::default(),
        });
        let mut reg = self.registry();
        reg.by_id.insert(id, session.clone());
        if let Some(user) = user {
            reg.by_user.entry(user).or_default().push_back(id);
        }
        Ok((
            Attachments {
                session,
                rx: attach_rx,
            },
            credential(id, secret),
        ))
    }

    /// Checks a resume request and, if it holds, attaches `inbound` to the session (it
    /// is taken): the connection task reads it next, and the returned generation
    /// writes. `next_local` is the next connection number this hub would give (to
    /// tell an ended session from a made-up one).
    pub(crate) fn resume(
        &self,
        node: NodeId,
        next_local: u64,
        ask: ResumeAsk<'_>,
        inbound: &mut Option<Streaming<Bytes>>,
        hello: impl FnOnce(ConnectionId, &str, u64) -> OutFrame,
    ) -> Result<Resumed, Refusal> {
        let ResumeAsk {
            credential,
            seq,
            user,
        } = ask;
        let refuse = |outcome, reason: &str, _: ()| Err(Refusal::new(outcome, reason));
        let Some(seq) = seq.and_then(|s| s.trim().parse::<u64>().ok()) else {
            return refuse(
                ResumeOutcome::Refused,
                "hub-resume-seq is missing or not a number (send the last seq received, 0 if none)",
                (),
            );
        };
        // A restored session numbers on after it: no seq the server sends passes
        // 2^53-1 (the wire's integer limit), whatever a client presents.
        if seq > hub_core::frame::MAX_SAFE_INTEGER {
            return refuse(
                ResumeOutcome::Refused,
                "hub-resume-seq is above 2^53-1: no push was ever numbered so",
                (),
            );
        }
        let Some((id, secret)) = parse_credential(credential) else {
            return refuse(ResumeOutcome::Unknown, "not a resume credential", ());
        };
        let session = self.registry().by_id.get(&id).cloned();
        let Some(session) = session else {
            let mut refusal = if id.node != node {
                Refusal::new(
                    ResumeOutcome::Unknown,
                    "the credential was issued by another server",
                )
            } else if id.local >= 1 && id.local < next_local {
                Refusal::new(
                    ResumeOutcome::Expired,
                    "the session ended (its grace period passed, or it closed)",
                )
            } else {
                Refusal::new(ResumeOutcome::Unknown, "no such session")
            };
            refusal.elsewhere = Some(Elsewhere { id, secret, seq });
            return Err(refusal);
        };
        let mut io = session.io();
        if !same_secret(io.secret, secret) {
            return refuse(
                ResumeOutcome::Unknown,
                "the credential does not match the session",
                (),
            );
        }
        if session.user.as_deref() != user {
            return refuse(
                ResumeOutcome::IdentityMismatch,
                "the stream is authenticated as another identity than the session",
                (),
            );
        }
        if io.ended {
            return refuse(ResumeOutcome::Expired, "the session ended", ());
        }
        let last = io.rx.last_seq();
        let covered = seq == last
            || (seq < last && io.ring.front().is_some_and(|(_, first)| *first <= seq + 1));
        if !covered {
            let reason = if seq > last {
                format!("hub-resume-seq {seq} names a push never sent (the last was {last})")
            } else {
                format!(
                    "pushes after seq {seq} are no longer held (the replay buffer starts at {})",
                    io.ring.front().map_or(last + 1, |(_, s)| *s)
                )
            };
            drop(io);
            // The session cannot be made whole: it ends, and the client resyncs.
            self.close(&session, "resumed with a gap");
            return refuse(ResumeOutcome::Gap, &reason, ());
        }
        let Some(stream) = inbound.take() else {
            return refuse(ResumeOutcome::Refused, "no stream to attach", ());
        };
        if let Err(back) = session.attach.send(stream) {
            *inbound = Some(back.0);
            return refuse(ResumeOutcome::Expired, "the session ended", ());
        }
        let replay: Vec<(OutFrame, u64)> =
            io.ring.iter().filter(|(_, s)| *s > seq).cloned().collect();
        let fresh = self::credential(id, io.secret);
        io.generation += 1;
        let generation = io.generation;
        io.first.clear();
        io.first
            .push_back((hello(id, &fresh, replay.len() as u64), 0));
        io.first.extend(replay);
        if io.detached {
            io.detached = false;
            self.registry().detached -= 1;
        }
        if let Some(w) = io.waker.take() {
            w.wake();
        }
        drop(io);
        Ok(Resumed {
            session,
            generation,
        })
    }

    /// Marks a session detached (its stream broke). Returns `false` if too many are
    /// detached already: the session must end.
    pub(crate) fn detach(&self, session: &Session) -> bool {
        let mut io = session.io();
        if io.detached || io.ended {
            return true;
        }
        let mut reg = self.registry();
        if reg.detached >= self.config.max_detached {
            return false;
        }
        reg.detached += 1;
        io.detached = true;
        // The broken stream writes no more.
        io.generation += 1;
        if let Some(w) = io.waker.take() {
            w.wake();
        }
        true
    }

    /// Ends a session unless a resume is waiting in `attach` (checked under the lock a
    /// resume takes). Returns a waiting stream instead of ending, if there is one.
    pub(crate) fn end_unless_resumed(&self, att: &mut Attachments) -> Option<Streaming<Bytes>> {
        let io = att.session.io();
        if let Ok(inbound) = att.rx.try_recv() {
            return Some(inbound);
        }
        drop(io);
        self.end(&att.session);
        None
    }

    /// Ends a session: no stream attaches to it any more.
    pub(crate) fn end(&self, session: &Session) {
        let mut io = session.io();
        if io.ended {
            return;
        }
        io.ended = true;
        let was_detached = std::mem::replace(&mut io.detached, false);
        drop(io);
        let mut reg = self.registry();
        if was_detached {
            reg.detached -= 1;
        }
        reg.by_id.remove(&session.id);
        if let Some(user) = &session.user
            && let Some(list) = reg.by_user.get_mut(user)
        {
            list.retain(|n| *n != session.id);
            if list.is_empty() {
                reg.by_user.remove(user);
            }
        }
    }

    /// Ends a session and closes its connection.
    fn close(&self, session: &Session, why: &str) {
        self.end(session);
        session
            .outbox
            .close(CloseReason::new(tonic::Code::Unavailable, why));
    }

    /// Detached sessions now.
    pub(crate) fn detached(&self) -> usize {
        self.registry().detached
    }

    /// The live session of `id` on this server.
    pub(crate) fn get(&self, id: ConnectionId) -> Option<Arc<Session>> {
        self.registry().by_id.get(&id).cloned()
    }

    /// Another server resumed the session of `id`: it ends here, and its
    /// connection closes (its `on_disconnect` does not run). Returns whether this
    /// server held it.
    pub(crate) fn taken_over(&self, id: ConnectionId, by: NodeId) -> bool {
        let Some(session) = self.get(id) else {
            return false;
        };
        session
            .taken_over
            .store(true, std::sync::atomic::Ordering::Release);
        HubMetrics::incr(&self.metrics.sessions_taken_over);
        self.end(&session);
        // ABORTED, not UNAVAILABLE: a client must not come back here to resume (the
        // session goes on there).
        session.outbox.close(CloseReason::new(
            tonic::Code::Aborted,
            format!("the session was resumed on another server ({by})"),
        ));
        true
    }
}

impl Session {
    pub(crate) fn io(&self) -> MutexGuard<'_, SessionIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether another server resumed this session (its connection ends here
    /// without `on_disconnect`).
    pub(crate) fn was_taken_over(&self) -> bool {
        self.taken_over.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sessions(limit: Option<RateLimit>) -> (Sessions, Arc<HubMetrics>) {
        let metrics = Arc::new(HubMetrics::default());
        let config = SessionConfig::default().restore_lookups(limit);
        (Sessions::new(config, metrics.clone()), metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_past_the_burst_are_throttled_and_counted_then_refill() {
        let (s, metrics) = sessions(Some(RateLimit::new(10, 2)));
        assert!(s.admit_lookup());
        assert!(s.admit_lookup());
        assert!(!s.admit_lookup());
        assert!(!s.admit_lookup());
        assert_eq!(metrics.snapshot().resume_lookups_throttled, 2);
        // One token per 100 ms.
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(s.admit_lookup());
        assert!(!s.admit_lookup());
        assert_eq!(metrics.snapshot().resume_lookups_throttled, 3);
        // No more than the burst after a long quiet.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(s.admit_lookup());
        assert!(s.admit_lookup());
        assert!(!s.admit_lookup());
    }

    #[tokio::test(start_paused = true)]
    async fn the_default_lets_a_failover_of_4000_through_at_once_then_1000_a_second() {
        let (s, metrics) = sessions(SessionConfig::default().restore_lookups);
        assert_eq!((0..4_000).filter(|_| s.admit_lookup()).count(), 4_000);
        assert!(!s.admit_lookup());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!((0..2_000).filter(|_| s.admit_lookup()).count(), 1_000);
        assert_eq!(metrics.snapshot().resume_lookups_throttled, 1_001);
    }

    #[test]
    fn no_bound_admits_every_lookup() {
        let (s, metrics) = sessions(None);
        assert!((0..10_000).all(|_| s.admit_lookup()));
        assert_eq!(metrics.snapshot().resume_lookups_throttled, 0);
    }
}
