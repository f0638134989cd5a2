//! Gaps in a group's offsets: seen, filled from the backplane's history when it keeps
//! one, told to the group's local members when not.
//!
//! Per group, the last offset delivered and its epoch. An envelope with the next
//! offset is delivered at once. One after a gap starts a fill: a task reads the
//! missing offsets from the history (never the reader, which goes on with other
//! groups) while the group's later envelopes wait in a bounded queue; the fill
//! delivers what it read in order, tells the members of what it could not
//! (`ServerControl.pushes_lost`), then releases the queue. Deliveries of one group
//! happen under its lock, so the order is the offsets' order whichever task delivers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;

use prost::Message as _;

use super::{Inbox, Received};
use crate::history::{GroupHistory, HistoryQuery};
use crate::{ConnectionId, GroupName, HubMetrics, Member, proto};

/// How long a fill may take before its gap is told as lost.
pub(crate) const FILL_TIMEOUT: Duration = Duration::from_secs(3);
/// The most envelopes of one group held back behind a fill; past it the fill is
/// given up (its gap told) and the queue delivered.
pub(crate) const MAX_HELD: usize = 4096;
/// The largest gap read from history; a larger one is told at once.
pub(crate) const MAX_FILL: u64 = 10_000;

/// Where fills read, and the runtime their tasks run on.
pub(crate) struct HistorySource {
    pub(crate) store: Arc<dyn GroupHistory>,
    pub(crate) runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for HistorySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HistorySource")
    }
}

/// The sequence of one subscribed group.
#[derive(Debug)]
pub(crate) struct GroupSeq {
    /// Cleared when the group is forgotten: a fill still running is dropped.
    live: AtomicBool,
    state: Mutex<Seq>,
}

#[derive(Debug)]
struct Seq {
    /// The epoch of `last`; 0: none (the next envelope starts the sequence at
    /// offset 1 of its epoch, its loss already told).
    epoch: u64,
    /// The last offset delivered or told lost.
    last: u64,
    /// The fill running, if any.
    fill: Option<Fill>,
    /// The id of the last fill started.
    fills: u64,
    /// Nothing delivered since the subscription began (or the group was forgotten
    /// under a replay hold): the next envelope starts the sequence.
    fresh: bool,
}

#[derive(Debug)]
struct Fill {
    id: u64,
    /// The last offset to read, or `None` to read up to the group's latest (a catch-up
    /// after a subscription came back).
    to: Option<u64>,
    /// Later envelopes of the group, in arrival order.
    held: VecDeque<Held>,
    /// Replays to resumed sessions holding the group back ([`ReplayHold`]); a hold
    /// without a gap to read (`to` unset) is released when the last one is done.
    replays: u32,
}

#[derive(Debug)]
struct Held {
    offset: u64,
    /// The group's offset before it (`offset - 1` where offsets are contiguous).
    prev: u64,
    epoch: u64,
    payload: Bytes,
}

impl GroupSeq {
    /// A sequence that nothing was delivered in yet: its next envelope starts it.
    fn fresh() -> Arc<Self> {
        Arc::new(GroupSeq {
            live: AtomicBool::new(true),
            state: Mutex::new(Seq {
                epoch: 0,
                last: 0,
                fill: None,
                fills: 0,
                fresh: true,
            }),
        })
    }
}

impl Seq {
    /// Starts a fill (`replays`: the replay holds it starts with); returns its id.
    fn start_fill(&mut self, to: Option<u64>, held: VecDeque<Held>, replays: u32) -> u64 {
        self.fills += 1;
        let id = self.fills;
        self.fill = Some(Fill {
            id,
            to,
            held,
            replays,
        });
        id
    }
}

/// What to do, in order, under the group's lock.
enum Out {
    /// An envelope, its offset and epoch.
    Deliver(Bytes, u64, u64),
    Recovered(Bytes, u64, u64),
    Lost {
        missed: u64,
        reason: String,
    },
    Fill {
        id: u64,
        query: HistoryQuery,
    },
}

/// What became of one envelope in the sequence.
enum Fate {
    Delivered,
    Held,
    Duplicate,
}

const RESTARTED: &str =
    "the group's offsets restarted (the broker lost its state): pushes may be lost";

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn never_reached(from: u64, to: u64) -> String {
    let missed = to - from + 1;
    format!("{missed} push(es) to the group (offsets {from} to {to}) never reached this server")
}

/// How many pushes lie after offset `last` up to offset `to` (both the group's): known
/// where offsets are contiguous, 0 (unknown) where they are a shared sequence.
fn count(contiguous: bool, last: u64, to: u64) -> u64 {
    if contiguous {
        to.saturating_sub(last)
    } else {
        0
    }
}

/// Why pushes after `last` up to `to` are told lost: the offsets if contiguous.
fn gap_text(contiguous: bool, last: u64, to: u64, why: &str) -> String {
    if contiguous {
        format!(
            "{} push(es) to the group (offsets {} to {to}) {why}",
            to - last,
            last + 1
        )
    } else {
        format!("push(es) to the group (after offset {last}, up to {to}) {why}")
    }
}

impl Inbox {
    /// Fills gaps in group offsets from `history` from now on. Call inside the Tokio
    /// runtime the fills should run on ([`crate::relay::Relay::new`] does); a second
    /// call is ignored.
    pub fn set_history(&self, history: Arc<dyn GroupHistory>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                hub = self.hub,
                "group history given outside a Tokio runtime: gaps will be told, not filled"
            );
            return;
        };
        let _ = self.history.set(HistorySource {
            store: history,
            runtime,
        });
    }

    /// The history gaps are filled from, if any.
    pub fn history(&self) -> Option<Arc<dyn GroupHistory>> {
        self.history.get().map(|h| h.store.clone())
    }

    /// Group offsets are from now on a sequence shared by all the groups (a NATS
    /// JetStream stream's), not contiguous per group: a gap is seen by an envelope's
    /// `prev` ([`Inbox::receive_chained`]) and how many pushes it holds is unknown
    /// (told as 0) unless read from history.
    pub fn set_shared_offsets(&self) {
        self.shared_offsets.store(true, Ordering::Release);
    }

    /// Whether group offsets are contiguous per group (the default).
    fn contiguous(&self) -> bool {
        !self.shared_offsets.load(Ordering::Acquire)
    }

    /// Handles one envelope of `group`'s channel that the broker numbered `offset` of
    /// `epoch` and whose previous envelope in the group is `prev` (0: none): it goes
    /// through the group's sequence like an envelope with its offset in front
    /// ([`Inbox::receive`]), a gap being `prev` above the last offset delivered.
    pub fn receive_chained(
        &self,
        payload: Bytes,
        group: &str,
        offset: u64,
        prev: u64,
        epoch: u64,
    ) -> Received {
        self.sequenced(group, offset, prev, epoch, payload)
    }

    /// Forgets the offsets (and the origins' push numbers) seen of `group`: its subscription is new (or gone), and what
    /// was published while this server was not subscribed is none of its business. A
    /// fill of the group still running is dropped.
    pub fn forget(&self, group: &str) {
        let mut groups = lock(&self.groups);
        if let Some(seq) = groups.get(group).cloned() {
            let mut st = lock(&seq.state);
            if st.fill.as_ref().is_some_and(|f| f.replays > 0) {
                // A resumed session's replay holds the group: it stays, afresh (the
                // replay reads where the sequence starts).
                st.fresh = true;
                st.epoch = 0;
                st.last = 0;
            } else {
                drop(st);
                groups.remove(group);
                seq.live.store(false, Ordering::Release);
            }
        }
        drop(groups);
        lock(&self.origins).remove(group);
    }

    /// The position of `group` on this server: the offset (and its epoch) of the last
    /// push delivered to its members here, or told lost. A member that joins now gets
    /// every push after it. `None`: no sequence yet (no envelope since the
    /// subscription began).
    pub fn position(&self, group: &str) -> Option<(u64, u64)> {
        let seq = lock(&self.groups).get(group).cloned()?;
        let st = lock(&seq.state);
        (!st.fresh && st.epoch != 0).then_some((st.last, st.epoch))
    }

    /// Holds back this server's deliveries of `group` (they queue, as behind a gap
    /// fill) until the returned hold replays to a resumed session what it missed, so
    /// that the session gets the replayed pushes, then the live ones, each once and in
    /// offset order. Take it before the session joins the group here. Waits for a gap
    /// fill of the group to end first (at most 4 s). `None`:
    /// no history, or the group stayed busy.
    pub async fn hold(&self, group: &GroupName) -> Option<ReplayHold> {
        self.history.get()?;
        let deadline = tokio::time::Instant::now() + FILL_TIMEOUT + Duration::from_secs(1);
        loop {
            let seq = {
                let mut groups = lock(&self.groups);
                groups
                    .entry(group.as_str().to_owned())
                    .or_insert_with(GroupSeq::fresh)
                    .clone()
            };
            {
                let mut st = lock(&seq.state);
                match &mut st.fill {
                    Some(f) if f.replays > 0 => {
                        f.replays += 1;
                        let id = f.id;
                        drop(st);
                        return Some(self.ticket(group, seq, id));
                    }
                    Some(_) => {}
                    None => {
                        let id = st.start_fill(None, VecDeque::new(), 1);
                        drop(st);
                        return Some(self.ticket(group, seq, id));
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn ticket(&self, group: &GroupName, seq: Arc<GroupSeq>, id: u64) -> ReplayHold {
        ReplayHold {
            inbox: self.clone(),
            group: group.clone(),
            seq,
            id,
            done: false,
        }
    }

    /// One replay of a hold is over: the last one releases the group's queue.
    fn release(&self, group: &str, seq: &Arc<GroupSeq>, id: u64, mut out: Vec<Out>) {
        let mut st = lock(&seq.state);
        if let Some(f) = &mut st.fill
            && f.id == id
        {
            f.replays -= 1;
            if f.replays == 0 {
                let fill = st.fill.take().expect("the hold");
                for h in fill.held {
                    self.step(&mut st, h, &mut out, true);
                }
            }
        }
        drop(st);
        if seq.live.load(Ordering::Acquire) {
            self.execute(group, seq, out);
        }
        // A hold whose session never joined (its join failed) leaves no sequence for
        // a group nobody here is in. (Lock order as in `forget`: the map, then the
        // sequence.)
        if self.local.count(group) == 0 {
            let mut groups = lock(&self.groups);
            if let Some(s) = groups.get(group)
                && Arc::ptr_eq(s, seq)
            {
                let st = lock(&seq.state);
                if st.fill.is_none() && st.fresh {
                    drop(st);
                    groups.remove(group);
                    seq.live.store(false, Ordering::Release);
                }
            }
        }
    }

    /// Tells one member that pushes of `group` it should have had are lost.
    fn tell_member_lost(&self, group: &str, member: ConnectionId, missed: u64, reason: String) {
        HubMetrics::incr(&self.metrics.backplane_gaps);
        self.metrics.backplane_pushes_missed.add(missed);
        tracing::debug!(hub = self.hub, group, conn = %member, missed, %reason, "pushes not replayed to a resumed session");
        let notice = crate::frame::pushes_lost_frame(group, missed, reason);
        if let Some(m) = self.local.member(member) {
            let _ = m.outbox.push(crate::frame::OutFrame::reply(notice));
        }
    }

    /// Queues one history entry to `member` if it is a push its target selects.
    fn replay_entry(&self, group: &str, member: &Member, envelope: Bytes, at: (u64, u64)) -> bool {
        let Ok(env) = proto::Envelope::decode(envelope) else {
            HubMetrics::incr(&self.metrics.backplane_malformed);
            return false;
        };
        if env.version != super::ENVELOPE_VERSION
            || env.group != group
            || env.lost.is_some()
            || env.ask.is_some()
            || env.answer.is_some()
            || env.command.is_some()
            || !crate::Target::from_proto(env.target.as_ref()).selects(&member.id)
        {
            return false;
        }
        let frame = super::positioned(&env.frame, group, at.0, at.1);
        member
            .outbox
            .push(crate::frame::OutFrame::push(frame))
            .is_ok()
    }
}

/// What a resumed session got back of one group's pushes ([`ReplayHold::replay`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Pushes queued to it again, from the group's history.
    pub replayed: u64,
    /// Pushes it missed that could not be (told to it as `pushes_lost`; 0 with
    /// `lost` set: how many is unknown).
    pub missed: u64,
    /// Whether some were lost (told).
    pub lost: bool,
}

/// A group held back on this server while a resumed session catches up on it
/// ([`Inbox::hold`]). Dropped without [`Self::replay`], it releases the group.
#[derive(Debug)]
pub struct ReplayHold {
    inbox: Inbox,
    group: GroupName,
    seq: Arc<GroupSeq>,
    id: u64,
    done: bool,
}

impl ReplayHold {
    /// Queues to `member` (joined to the group here since the hold was taken) the
    /// group's pushes after `after` (offset, epoch: the last one it saw, or the
    /// group's position when it joined; epoch 0: before the group's first push) up to
    /// where this server's members are, from history, then releases the group: the
    /// pushes held back meanwhile follow. What history no longer holds, or cannot be
    /// read within 3 s, is told to the member (`pushes_lost`).
    pub async fn replay(mut self, member: ConnectionId, after: (u64, u64)) -> Replayed {
        self.done = true;
        let inbox = self.inbox.clone();
        let group = self.group.clone();
        let seq = self.seq.clone();
        let id = self.id;
        let mut report = Replayed::default();
        let outcome = tokio::time::timeout(FILL_TIMEOUT, self.read_and_queue(member, after)).await;
        let out = match outcome {
            Ok(Ok(r)) => {
                report = r;
                Vec::new()
            }
            Ok(Err(why)) => {
                report.lost = true;
                inbox.tell_member_lost(group.as_str(), member, 0, why);
                Vec::new()
            }
            Err(_) => {
                report.lost = true;
                inbox.tell_member_lost(
                    group.as_str(),
                    member,
                    0,
                    format!(
                        "the pushes missed could not be read from history within {FILL_TIMEOUT:?}"
                    ),
                );
                Vec::new()
            }
        };
        inbox.release(group.as_str(), &seq, id, out);
        report
    }

    /// Reads the history after `after` until it covers the group's position here,
    /// then queues it to `member` under the group's lock.
    async fn read_and_queue(
        &self,
        member: ConnectionId,
        after: (u64, u64),
    ) -> Result<Replayed, String> {
        let store = self
            .inbox
            .history
            .get()
            .map(|h| h.store.clone())
            .ok_or_else(|| "no history".to_owned())?;
        let (mut from, mut epoch) = after;
        loop {
            let query = HistoryQuery {
                epoch,
                after: from,
                limit: MAX_FILL as usize,
            };
            let page = store
                .read(&self.group, query)
                .await
                .map_err(|e| format!("the pushes missed could not be read from history: {e}"))?;
            if epoch == 0 && page.epoch != 0 {
                // Joined before the group's first push: everything of its epoch.
                epoch = page.epoch;
                from = 0;
                continue;
            }
            match self.queue(member, from, epoch, page) {
                Some(done) => return done,
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Queues what `page` (read after `from` in `epoch`) holds to `member`, up to the
    /// group's position here, under the group's lock. `None`: the page was read before
    /// that position moved on (another replay set it): read again.
    fn queue(
        &self,
        member: ConnectionId,
        from: u64,
        epoch: u64,
        page: crate::history::HistoryPage,
    ) -> Option<Result<Replayed, String>> {
        let inbox = &self.inbox;
        let group = self.group.as_str();
        let mut st = lock(&self.seq.state);
        if st.fill.as_ref().map(|f| f.id) != Some(self.id) {
            return Some(Err(format!(
                "more than {MAX_HELD} pushes of the group came while the pushes missed were read"
            )));
        }
        // Where this server's members are: what the replay reaches.
        let end = if st.fresh {
            let first = st.fill.as_ref().and_then(|f| f.held.front());
            let end = match first {
                Some(h) if h.epoch == page.epoch => page.latest.min(h.prev),
                _ => page.latest,
            };
            st.fresh = false;
            st.epoch = page.epoch;
            st.last = end;
            end
        } else if st.epoch != page.epoch {
            return Some(Err(RESTARTED.to_owned()));
        } else {
            st.last
        };
        if page.epoch != epoch {
            return Some(Err(RESTARTED.to_owned()));
        }
        if page.latest < end {
            return None;
        }
        let Some(m) = inbox.local.member(member) else {
            return Some(Ok(Replayed::default()));
        };
        let contiguous = inbox.contiguous();
        let mut report = Replayed::default();
        // The chain: each entry follows the offset before it, else some are gone.
        let mut at = from;
        for e in page.entries {
            if e.offset <= at || e.offset > end {
                continue;
            }
            if e.prev != at {
                report.lost = true;
                report.missed += count(contiguous, at, e.offset - 1);
            }
            if inbox.replay_entry(group, &m, e.envelope, (e.offset, page.epoch)) {
                report.replayed += 1;
            }
            at = e.offset;
        }
        if at < end {
            report.lost = true;
            report.missed += count(contiguous, at, end);
        }
        drop(st);
        if report.lost {
            inbox.tell_member_lost(
                group,
                member,
                report.missed,
                if contiguous {
                    format!(
                        "{} push(es) to the group missed while the session was away are no longer in its history",
                        report.missed
                    )
                } else {
                    "push(es) to the group missed while the session was away are no longer in its history".to_owned()
                },
            );
        }
        inbox
            .metrics
            .backplane_pushes_recovered
            .add(report.replayed);
        Some(Ok(report))
    }
}

impl Drop for ReplayHold {
    fn drop(&mut self) {
        if !self.done {
            self.inbox
                .release(self.group.as_str(), &self.seq, self.id, Vec::new());
        }
    }
}

impl Inbox {
    /// The subscription to `group` broke and is back: reads what the group's history
    /// holds after the last offset seen and delivers it before anything later (what it
    /// no longer holds is told). Without a history, or before any offset was seen,
    /// does nothing: the group's next envelope shows the gap.
    pub fn catch_up(&self, group: &str) {
        if self.history.get().is_none() {
            return;
        }
        let Some(seq) = lock(&self.groups).get(group).cloned() else {
            return;
        };
        let mut st = lock(&seq.state);
        if st.fill.is_some() || st.epoch == 0 {
            return;
        }
        let id = st.start_fill(None, VecDeque::new(), 0);
        let query = HistoryQuery {
            epoch: st.epoch,
            after: st.last,
            limit: MAX_FILL as usize,
        };
        self.execute(group, &seq, vec![Out::Fill { id, query }]);
    }

    /// A group envelope with an offset, from the group's channel.
    pub(super) fn sequenced(
        &self,
        group: &str,
        offset: u64,
        prev: u64,
        epoch: u64,
        payload: Bytes,
    ) -> Received {
        let seq = {
            let mut groups = lock(&self.groups);
            // The first offset of a subscription starts the sequence.
            groups
                .entry(group.to_owned())
                .or_insert_with(GroupSeq::fresh)
                .clone()
        };
        let mut st = lock(&seq.state);
        let mut out = Vec::new();
        let item = Held {
            offset,
            prev,
            epoch,
            payload,
        };
        if let Some(fill) = &mut st.fill {
            if fill.held.len() < MAX_HELD {
                fill.held.push_back(item);
                return Received::Held;
            }
            // The history is not read in time for what keeps coming: give the fill up.
            let fill = st.fill.take().expect("a fill");
            if let Some(to) = fill.to
                && to > st.last
            {
                let contiguous = self.contiguous();
                out.push(Out::Lost {
                    missed: count(contiguous, st.last, to),
                    reason: gap_text(
                        contiguous,
                        st.last,
                        to,
                        &format!("never reached this server, and were not read from history before {MAX_HELD} later ones came"),
                    ),
                });
                st.last = to;
            }
            for h in fill.held {
                self.step(&mut st, h, &mut out, false);
            }
        }
        let fate = self.step(&mut st, item, &mut out, true);
        let delivered = self.execute(group, &seq, out);
        match fate {
            Fate::Delivered => delivered.unwrap_or(Received::Delivered),
            Fate::Held => Received::Held,
            Fate::Duplicate => Received::Duplicate,
        }
    }

    /// Moves one envelope through the sequence (`fill`: a gap may start a fill).
    fn step(&self, st: &mut Seq, item: Held, out: &mut Vec<Out>, fill: bool) -> Fate {
        if let Some(f) = &mut st.fill {
            f.held.push_back(item);
            return Fate::Held;
        }
        if st.fresh {
            st.fresh = false;
            st.epoch = item.epoch;
            st.last = item.prev;
        }
        let mut restarted = false;
        if item.epoch != st.epoch {
            if st.epoch != 0 {
                out.push(Out::Lost {
                    missed: 0,
                    reason: RESTARTED.to_owned(),
                });
                restarted = true;
            }
            st.epoch = item.epoch;
            st.last = 0;
        }
        if item.offset <= st.last {
            return Fate::Duplicate;
        }
        // In order when the group's offset before it is the last one delivered (or
        // older: a position taken between two of the group's offsets).
        if item.prev > st.last {
            let contiguous = self.contiguous();
            let missed = count(contiguous, st.last, item.prev);
            if fill && missed <= MAX_FILL && self.history.get().is_some() {
                let query = HistoryQuery {
                    epoch: st.epoch,
                    after: st.last,
                    limit: if contiguous {
                        missed as usize
                    } else {
                        MAX_FILL as usize
                    },
                };
                let to = item.prev;
                let id = st.start_fill(Some(to), VecDeque::from([item]), 0);
                out.push(Out::Fill { id, query });
                return Fate::Held;
            }
            if !restarted {
                out.push(Out::Lost {
                    missed,
                    reason: if contiguous {
                        never_reached(st.last + 1, item.prev)
                    } else {
                        gap_text(false, st.last, item.prev, "never reached this server")
                    },
                });
            }
        }
        st.last = item.offset;
        out.push(Out::Deliver(item.payload, item.offset, item.epoch));
        Fate::Delivered
    }

    /// Does what the sequence decided, under the group's lock; returns the outcome of
    /// the last envelope delivered.
    fn execute(&self, group: &str, seq: &Arc<GroupSeq>, out: Vec<Out>) -> Option<Received> {
        let mut last = None;
        for o in out {
            match o {
                Out::Deliver(payload, offset, epoch) => {
                    last = Some(self.dispatch(payload, group, offset, epoch))
                }
                Out::Recovered(payload, offset, epoch) => {
                    HubMetrics::incr(&self.metrics.backplane_pushes_recovered);
                    self.dispatch(payload, group, offset, epoch);
                }
                Out::Lost { missed, reason } => self.tell_lost(group, missed, reason),
                Out::Fill { id, query } => {
                    let Some(source) = self.history.get() else {
                        continue;
                    };
                    let task = self.clone().fill(group.to_owned(), seq.clone(), id, query);
                    source.runtime.spawn(task);
                }
            }
        }
        last
    }

    /// Reads a gap from history and delivers what it read, then what was held back.
    async fn fill(self, group: String, seq: Arc<GroupSeq>, id: u64, query: HistoryQuery) {
        let read = match (self.history.get(), GroupName::from_wire(&group)) {
            (Some(source), Ok(name)) => {
                match tokio::time::timeout(FILL_TIMEOUT, source.store.read(&name, query)).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err(format!("no answer within {FILL_TIMEOUT:?}")),
                }
            }
            _ => Err("no history".to_owned()),
        };
        if !seq.live.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&seq.state);
        if st.fill.as_ref().map(|f| f.id) != Some(id) {
            return;
        }
        let fill = st.fill.take().expect("the fill");
        let mut out = Vec::new();
        let after = query.after;
        match read {
            Ok(page) if page.epoch == query.epoch => {
                let contiguous = self.contiguous();
                let end = match fill.to {
                    Some(to) => to,
                    None if contiguous => page.latest.min(after + query.limit as u64),
                    // A shared sequence: up to the last entry if the limit cut the read.
                    None if page.entries.len() >= query.limit => {
                        page.entries.last().map_or(page.latest, |e| e.offset)
                    }
                    None => page.latest,
                }
                .max(after);
                const GONE: &str = "never reached this server and are no longer in its history";
                // The chain: each entry follows the offset before it.
                let mut at = after;
                let mut told = 0;
                let mut holes = 0;
                let mut recovered = 0u64;
                for e in page.entries {
                    if e.offset <= at || e.offset > end {
                        continue;
                    }
                    if e.prev != at {
                        let to = if contiguous {
                            e.offset - 1
                        } else {
                            e.prev.max(at)
                        };
                        let missed = count(contiguous, at, to);
                        told += missed;
                        holes += 1;
                        out.push(Out::Lost {
                            missed,
                            reason: gap_text(contiguous, at, to, GONE),
                        });
                    }
                    out.push(Out::Recovered(e.envelope, e.offset, page.epoch));
                    recovered += 1;
                    at = e.offset;
                }
                if at < end {
                    let missed = count(contiguous, at, end);
                    told += missed;
                    holes += 1;
                    out.push(Out::Lost {
                        missed,
                        reason: gap_text(contiguous, at, end, GONE),
                    });
                }
                if holes == 0 && recovered > 0 {
                    HubMetrics::incr(&self.metrics.backplane_gaps_filled);
                }
                if recovered > 0 {
                    tracing::debug!(
                        hub = self.hub,
                        group,
                        recovered,
                        missed = told,
                        "group gap filled from history"
                    );
                }
                st.last = end;
            }
            Ok(page) => {
                // The offsets restarted: nothing of the old epoch can be read. The next
                // envelope starts the new epoch's sequence (from its offset 1).
                out.push(Out::Lost {
                    missed: 0,
                    reason: RESTARTED.to_owned(),
                });
                // (Epoch 0, the broker knows nothing: any epoch is accepted next.)
                st.epoch = page.epoch;
                st.last = 0;
            }
            Err(why) => {
                if let Some(to) = fill.to {
                    let contiguous = self.contiguous();
                    out.push(Out::Lost {
                        missed: count(contiguous, after, to),
                        reason: gap_text(
                            contiguous,
                            after,
                            to,
                            &format!(
                                "never reached this server, and could not be read from history: {why}"
                            ),
                        ),
                    });
                    st.last = to;
                } else {
                    // A catch-up that failed: the next envelope shows the gap.
                    tracing::debug!(hub = self.hub, group, %why, "could not catch up from history");
                }
            }
        }
        for h in fill.held {
            if h.epoch == query.epoch && st.epoch != query.epoch {
                // Received before the restart was known: delivered, not sequenced
                // again (the restart is told).
                out.push(Out::Deliver(h.payload, h.offset, h.epoch));
            } else {
                self.step(&mut st, h, &mut out, true);
            }
        }
        self.execute(&group, &seq, out);
    }

    /// Tells the group's local members that pushes were lost, and counts it.
    pub(super) fn tell_lost(&self, group: &str, missed: u64, reason: String) {
        HubMetrics::incr(&self.metrics.backplane_gaps);
        self.metrics.backplane_pushes_missed.add(missed);
        tracing::warn!(hub = self.hub, group, missed, %reason, "group pushes lost on the backplane");
        let notice = crate::frame::pushes_lost_frame(group, missed, reason);
        for m in self.local.members(group) {
            if let Some(member) = self.local.member(m.connection) {
                let _ = member
                    .outbox
                    .push(crate::frame::OutFrame::reply(notice.clone()));
            }
        }
    }
}
