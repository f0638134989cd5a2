//! An in-process backplane: several hub servers in one process share their groups
//! through a [`Bus`], as they would through Redis or NATS. For tests of multi-server
//! behaviour without a broker, and the reference backend of `docs/backends.md`: it
//! is a [`Transport`] and a [`Presence`] store under a [`Relay`], nothing more.
//!
//! ```
//! use hub_core::bus::Bus;
//!
//! let bus = Bus::new();
//! // Give each hub server in the process its own provider from the same bus.
//! let (a, b) = (bus.provider(), bus.provider());
//! # let _ = (a, b);
//! ```
//!
//! Faults can be injected: [`Bus::set_down`] makes every operation fail as an
//! unreachable broker would, and [`Bus::crash`] forgets a server as if it had died,
//! telling the other servers which members it took with it. A server also dies on
//! the bus when the Tokio runtime it was bound on stops without shutting the hub
//! down (a crash of that runtime): bound inside a runtime, each hub keeps a task
//! there whose end, unless the hub shut down first, is taken as the server's death,
//! as a broker takes a lapsed heartbeat.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::history::{GroupHistory, HistoryEntry, HistoryPage, HistoryQuery};
use crate::relay::{Channel, Presence, Relay, Transport};
use crate::remote::{Inbox, Via, with_offset};
use crate::session::SessionRecord;
use crate::{
    Backplane, BindContext, BoxFuture, ConnectionId, GroupError, GroupName, GroupProvider,
    HubMetrics, MemberInfo, MembersLost, NodeId,
};

/// The name in errors and logs.
const NAME: &str = "bus";

/// A channel of one hub.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Group(GroupName),
    Node(NodeId),
}

#[derive(Default)]
struct State {
    /// Per hub and channel, the inboxes of the servers subscribed to it.
    channels: HashMap<(&'static str, Key), Vec<(NodeId, Inbox)>>,
    /// Per hub and group, its members on every server, with the server holding each
    /// (the one that issued its id, unless its session was resumed elsewhere).
    members: HashMap<(&'static str, GroupName), BTreeMap<ConnectionId, Held>>,
    /// Per hub and connection, the session records, with their time to live and,
    /// once their server died, when they expire (a live server's never do).
    sessions: HashMap<(&'static str, ConnectionId), BusSession>,
    /// Set by [`Bus::set_down`].
    down: bool,
    /// Per hub and group, its offsets and last pushes (with history).
    rings: HashMap<(&'static str, GroupName), Ring>,
}

/// One group's history on the bus: its epoch, its latest offset, and its last
/// envelopes by offset (the oldest dropped past the bus's bound).
struct Ring {
    epoch: u64,
    latest: u64,
    entries: VecDeque<(u64, Bytes)>,
}

/// The subscriber of a server's own channel among `subs`, if `key` is a server's
/// channel: one per server and hub (the servers listening on another's channel for
/// a session restored from there are not it).
fn own_node<'a>(
    key: &'a Key,
    subs: &'a [(NodeId, Inbox)],
) -> impl Iterator<Item = &'a (NodeId, Inbox)> + 'a {
    subs.iter()
        .filter(move |(n, _)| matches!(key, Key::Node(node) if node == n))
}

/// A member entry: the server holding the member, and the member.
type Held = (NodeId, MemberInfo);

/// A session record on the bus.
struct BusSession {
    record: SessionRecord,
    ttl: Duration,
    expires: Option<tokio::time::Instant>,
}

/// Groups shared by the hub servers of one process. Cheap to clone; clones share
/// the bus.
#[derive(Clone, Default)]
pub struct Bus {
    state: Arc<Mutex<State>>,
    /// Held while a group push with history takes its offset and is handed to the
    /// subscribers, so that they get a group's pushes in offset order.
    order: Arc<Mutex<()>>,
    /// [`Bus::with_history`]: the most pushes each group keeps (set once, when made).
    history: Option<usize>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bus")
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty bus whose groups keep their history, as Redis with `history` does: a
    /// ring per group of its last `max_len` pushes (at least 1), in this process's
    /// memory, each numbered with the group's next offset under the group's epoch.
    /// The hubs on it then get their groups' pushes in offset order (their own
    /// included) with positions, fill gaps from the rings, and replay to a session
    /// restored on another server what it missed; what a ring no longer holds is told
    /// (`pushes_lost`). Kept until the bus is dropped: nothing expires by age.
    pub fn with_history(max_len: usize) -> Self {
        Bus {
            history: Some(max_len.max(1)),
            ..Self::default()
        }
    }

    /// A group provider for one hub server on this bus.
    pub fn provider(&self) -> Arc<dyn GroupProvider> {
        Arc::new(self.clone())
    }

    /// While `down`, every publish, subscription and presence operation fails with
    /// [`GroupError::Unavailable`], as with a broker that cannot be reached.
    /// Subscriptions and presence entries made before are kept (a broker that comes
    /// back), so deliveries resume when it is up again; each server then counts a
    /// reconnect (`backplane_reconnects`).
    pub fn set_down(&self, down: bool) {
        let mut state = self.lock();
        let back = state.down && !down;
        let gone = !state.down && down;
        state.down = down;
        if gone {
            // Every server's link is down: asks waiting on other servers end now.
            let inboxes: Vec<Inbox> = state
                .channels
                .iter()
                .flat_map(|((_, key), subs)| own_node(key, subs))
                .map(|(_, i)| i.clone())
                .collect();
            drop(state);
            for inbox in inboxes {
                inbox.events().link_down("the bus is down");
            }
            return;
        }
        if back {
            for ((_, key), subscribers) in &state.channels {
                for (_, inbox) in own_node(key, subscribers) {
                    HubMetrics::incr(&inbox.metrics().backplane_reconnects);
                }
            }
        }
    }

    /// Forgets server `node` as if it had died: its subscriptions and members are
    /// gone, and the servers with members in its groups hear which members it took.
    pub fn crash(&self, node: NodeId) {
        self.forget(None, node);
    }

    /// Forgets server `node` for hub `hub` (every hub when `None`).
    fn forget(&self, only: Option<&'static str>, node: NodeId) {
        let of = |hub: &'static str| only.is_none_or(|h| h == hub);
        let (lost, inboxes) = {
            let mut state = self.lock();
            for ((hub, _), subscribers) in state.channels.iter_mut() {
                if of(hub) {
                    subscribers.retain(|(n, _)| *n != node);
                }
            }
            let mut lost = Vec::new();
            for ((hub, group), members) in state.members.iter_mut().filter(|((h, _), _)| of(h)) {
                let gone: Vec<MemberInfo> = members
                    .values()
                    .filter(|(holder, _)| *holder == node)
                    .map(|(_, m)| m.clone())
                    .collect();
                members.retain(|_, (holder, _)| *holder != node);
                if !gone.is_empty() {
                    lost.push((*hub, group.clone(), gone));
                }
            }
            // Its session records live on for their time to live, as a broker's would.
            let now = tokio::time::Instant::now();
            for ((hub, _), s) in state.sessions.iter_mut() {
                if of(hub) && s.record.server == node && s.expires.is_none() {
                    s.expires = Some(now + s.ttl);
                }
            }
            let inboxes: Vec<(&'static str, Inbox)> = state
                .channels
                .iter()
                .flat_map(|((hub, key), subs)| {
                    own_node(key, subs).map(move |(_, i)| (*hub, i.clone()))
                })
                .collect();
            (lost, inboxes)
        };
        for (_, inbox) in inboxes.iter().filter(|(h, _)| of(h)) {
            inbox.events().server_dead(node);
        }
        for (hub, group, members) in lost {
            for (_, inbox) in inboxes.iter().filter(|(h, _)| *h == hub) {
                if inbox.local().count(group.as_str()) > 0 {
                    inbox.events().members_lost(MembersLost {
                        group: group.clone(),
                        server: node,
                        members: members.clone(),
                    });
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it; a poisoned lock still holds valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, unless the bus is down.
    fn up(&self, op: &str) -> Result<MutexGuard<'_, State>, GroupError> {
        let state = self.lock();
        if state.down {
            return Err(GroupError::Unavailable {
                backplane: NAME,
                message: format!("{op}: the bus is down"),
                source: None,
            });
        }
        Ok(state)
    }
}

impl GroupProvider for Bus {
    fn name(&self) -> &'static str {
        NAME
    }

    fn bind(&self, ctx: BindContext) -> Result<Arc<dyn Backplane>, GroupError> {
        let node = ctx.local.node();
        let inbox = Inbox::new(ctx.hub, ctx.local, ctx.metrics, ctx.events);
        self.lock()
            .channels
            .entry((ctx.hub, Key::Node(node)))
            .or_default()
            .push((node, inbox.clone()));
        let stop = CancellationToken::new();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = Alive {
                bus: self.clone(),
                hub: ctx.hub,
                node,
                armed: true,
            };
            runtime.spawn(alive.watch(stop.clone()));
        }
        let transport = BusTransport {
            bus: self.clone(),
            hub: ctx.hub,
            node,
            inbox: inbox.clone(),
            _stop: stop.drop_guard(),
        };
        let presence = BusPresence {
            bus: self.clone(),
            hub: ctx.hub,
            node,
        };
        Ok(Arc::new(Relay::new(inbox, transport, presence)))
    }
}

/// The liveness of one hub server on the bus, as a task on the runtime it was bound
/// on: dropped without being disarmed (that runtime stopped), the server is dead.
struct Alive {
    bus: Bus,
    hub: &'static str,
    node: NodeId,
    armed: bool,
}

impl Alive {
    /// Lives until the hub is shut down or dropped (`stop`), or its runtime stops.
    async fn watch(mut self, stop: CancellationToken) {
        stop.cancelled().await;
        self.armed = false;
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if self.armed {
            self.bus.forget(Some(self.hub), self.node);
        }
    }
}

/// Moves envelopes between the servers of one hub on the bus.
struct BusTransport {
    bus: Bus,
    hub: &'static str,
    node: NodeId,
    inbox: Inbox,
    /// Disarms and ends this server's [`Alive`] task.
    _stop: DropGuard,
}

impl Transport for BusTransport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn publish<'a>(
        &'a self,
        channel: Channel<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        if let Channel::Group(g) = channel
            && self.bus.history.is_some()
        {
            return Box::pin(async move { self.publish_numbered(g, &payload) });
        }
        let (key, via) = match channel {
            Channel::Group(g) => (Key::Group(g.clone()), Via::Group(g.as_str())),
            Channel::Node(n) => (Key::Node(n), Via::Node),
        };
        let subscribers: Vec<Inbox> = match self.bus.up("publish") {
            Ok(state) => state
                .channels
                .get(&(self.hub, key))
                .into_iter()
                .flatten()
                .filter(|(n, _)| *n != self.node)
                .map(|(_, inbox)| inbox.clone())
                .collect(),
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        // Delivered here, in the publisher's task: one publisher's envelopes arrive
        // in the order it published them.
        for inbox in subscribers {
            inbox.receive(payload.clone(), via);
        }
        Box::pin(async { Ok(()) })
    }

    fn numbers_pushes(&self) -> bool {
        // With history, the bus numbers group envelopes itself.
        self.bus.history.is_none()
    }

    fn history(&self) -> Option<Arc<dyn GroupHistory>> {
        self.bus.history?;
        Some(Arc::new(BusHistory {
            bus: self.bus.clone(),
            hub: self.hub,
        }))
    }

    fn subscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>> {
        let result = self.bus.up("subscribe").map(|mut state| {
            let subs = state
                .channels
                .entry((self.hub, Key::Group(group.clone())))
                .or_default();
            if !subs.iter().any(|(n, _)| *n == self.node) {
                subs.push((self.node, self.inbox.clone()));
            }
        });
        Box::pin(async move { result })
    }

    fn unsubscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>> {
        let mut state = self.bus.lock();
        // A join may have come in meanwhile: keep the subscription for it.
        if self.inbox.local().count(group.as_str()) == 0
            && let Some(subs) = state
                .channels
                .get_mut(&(self.hub, Key::Group(group.clone())))
        {
            subs.retain(|(n, _)| *n != self.node);
        }
        Box::pin(async { Ok(()) })
    }

    fn subscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        let result = self.bus.up("subscribe").map(|mut state| {
            let subs = state
                .channels
                .entry((self.hub, Key::Node(node)))
                .or_default();
            if !subs.iter().any(|(n, _)| *n == self.node) {
                subs.push((self.node, self.inbox.clone()));
            }
        });
        Box::pin(async move { result })
    }

    fn unsubscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        let mut state = self.bus.lock();
        // A restore may have come in meanwhile: keep the subscription for it.
        if !self.inbox.is_adopted(node)
            && let Some(subs) = state.channels.get_mut(&(self.hub, Key::Node(node)))
        {
            subs.retain(|(n, _)| *n != self.node);
        }
        Box::pin(async { Ok(()) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        let mut state = self.bus.lock();
        for ((hub, _), subs) in state.channels.iter_mut() {
            if *hub == self.hub {
                subs.retain(|(n, _)| *n != self.node);
            }
        }
        Box::pin(async {})
    }
}

impl BusTransport {
    /// A group push on a bus with history: the group's next offset, kept in its ring,
    /// and handed to every server subscribed (this one too: its members get their
    /// group's pushes from the bus, in offset order), one push after the other.
    fn publish_numbered(&self, group: &GroupName, payload: &Bytes) -> Result<(), GroupError> {
        let _order = self.bus.order.lock().unwrap_or_else(|e| e.into_inner());
        let (framed, subscribers) = {
            let mut state = self.bus.up("publish")?;
            let max = self.bus.history.unwrap_or(1);
            let ring = state
                .rings
                .entry((self.hub, group.clone()))
                .or_insert_with(|| Ring {
                    epoch: (rand::random::<u64>() & crate::frame::MAX_SAFE_INTEGER) | 1,
                    latest: 0,
                    entries: VecDeque::new(),
                });
            ring.latest += 1;
            let framed = with_offset(ring.latest, ring.epoch, payload);
            ring.entries.push_back((ring.latest, payload.clone()));
            while ring.entries.len() > max {
                ring.entries.pop_front();
            }
            let subscribers: Vec<Inbox> = state
                .channels
                .get(&(self.hub, Key::Group(group.clone())))
                .into_iter()
                .flatten()
                .map(|(_, inbox)| inbox.clone())
                .collect();
            (framed, subscribers)
        };
        for inbox in subscribers {
            inbox.receive(framed.clone(), Via::Group(group.as_str()));
        }
        Ok(())
    }
}

/// The rings of one hub's groups, read as a group history.
struct BusHistory {
    bus: Bus,
    hub: &'static str,
}

impl GroupHistory for BusHistory {
    fn read<'a>(
        &'a self,
        group: &'a GroupName,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, GroupError>> {
        let page = self.bus.up("history").map(|state| {
            let Some(ring) = state.rings.get(&(self.hub, group.clone())) else {
                return HistoryPage::default();
            };
            let entries = if ring.epoch == query.epoch {
                ring.entries
                    .iter()
                    .filter(|(offset, _)| *offset > query.after)
                    .take(query.limit)
                    .map(|(offset, envelope)| HistoryEntry {
                        offset: *offset,
                        prev: offset - 1,
                        envelope: envelope.clone(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            HistoryPage {
                epoch: ring.epoch,
                latest: ring.latest,
                entries,
            }
        });
        Box::pin(async move { page })
    }
}

/// Who is a member where, for one hub on the bus.
struct BusPresence {
    bus: Bus,
    hub: &'static str,
    node: NodeId,
}

impl BusPresence {
    fn ready<T: Send + 'static>(
        result: Result<T, GroupError>,
    ) -> BoxFuture<'static, Result<T, GroupError>> {
        Box::pin(async move { result })
    }
}

impl Presence for BusPresence {
    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        _first: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Self::ready(self.bus.up("join").map(|mut state| {
            state
                .members
                .entry((self.hub, group.clone()))
                .or_default()
                .insert(member.connection, (self.node, member.clone()));
        }))
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        _last: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Self::ready(self.bus.up("leave").map(|mut state| {
            let key = (self.hub, group.clone());
            if let Some(members) = state.members.get_mut(&key) {
                // Not an entry another server wrote since (a session it resumed).
                if members
                    .get(&member.connection)
                    .is_some_and(|(holder, _)| *holder == self.node)
                {
                    members.remove(&member.connection);
                }
                if members.is_empty() {
                    state.members.remove(&key);
                }
            }
        }))
    }

    fn count<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<u64, GroupError>> {
        Self::ready(self.bus.up("count").map(|state| {
            state
                .members
                .get(&(self.hub, group.clone()))
                .map_or(0, |m| m.len() as u64)
        }))
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>> {
        Self::ready(self.bus.up("members").map(|state| {
            state
                .members
                .get(&(self.hub, group.clone()))
                .map(|m| m.values().map(|(_, m)| m.clone()).collect())
                .unwrap_or_default()
        }))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        let mut state = self.bus.lock();
        for ((hub, _), members) in state.members.iter_mut() {
            if *hub == self.hub {
                members.retain(|_, (holder, _)| *holder != self.node);
            }
        }
        Box::pin(async {})
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    fn save_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Self::ready(self.bus.up("save_session").map(|mut state| {
            let key = (self.hub, record.connection);
            let held_elsewhere = state
                .sessions
                .get(&key)
                .is_some_and(|s| s.record.server != record.server);
            if !held_elsewhere {
                state.sessions.insert(
                    key,
                    BusSession {
                        record: record.clone(),
                        ttl,
                        expires: None,
                    },
                );
            }
        }))
    }

    fn claim_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        from: NodeId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, GroupError>> {
        Self::ready(self.bus.up("claim_session").map(|mut state| {
            let key = (self.hub, record.connection);
            let now = tokio::time::Instant::now();
            let held = state
                .sessions
                .get(&key)
                .is_some_and(|s| s.record.server == from && s.expires.is_none_or(|e| e > now));
            if held {
                state.sessions.insert(
                    key,
                    BusSession {
                        record: record.clone(),
                        ttl,
                        expires: None,
                    },
                );
            }
            held
        }))
    }

    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, GroupError>> {
        Self::ready(self.bus.up("load_session").map(|mut state| {
            let key = (self.hub, connection);
            let now = tokio::time::Instant::now();
            if state
                .sessions
                .get(&key)
                .is_some_and(|s| s.expires.is_some_and(|e| e <= now))
            {
                state.sessions.remove(&key);
            }
            state.sessions.get(&key).map(|s| s.record.clone())
        }))
    }

    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Self::ready(self.bus.up("drop_session").map(|mut state| {
            let key = (self.hub, connection);
            if state
                .sessions
                .get(&key)
                .is_some_and(|s| s.record.server == server)
            {
                state.sessions.remove(&key);
            }
        }))
    }

    fn server_alive<'a>(&'a self, node: NodeId) -> BoxFuture<'a, Result<bool, GroupError>> {
        Self::ready(self.bus.up("server_alive").map(|state| {
            state
                .channels
                .get(&(self.hub, Key::Node(node)))
                .is_some_and(|subs| !subs.is_empty())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BackplaneEvents, Destination, HubMetrics, LocalGroups, Member, Next, Outbox,
        OutboxReceiver, SlowConsumerPolicy, Target,
    };
    use std::future::poll_fn;
    use std::time::Duration;

    const HUB: &str = "t.v1.T";

    struct Server {
        local: Arc<LocalGroups>,
        bp: Arc<dyn Backplane>,
        lost: Arc<Mutex<Vec<MembersLost>>>,
    }

    fn server(bus: &Bus, node: u64) -> Server {
        let local = Arc::new(LocalGroups::new(NodeId(node)));
        let lost = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let lost = lost.clone();
            BackplaneEvents::new(move |l| lost.lock().expect("lock").push(l))
        };
        let bp = bus
            .bind(BindContext {
                hub: HUB,
                local: local.clone(),
                metrics: Arc::new(HubMetrics::default()),
                events,
            })
            .expect("bind");
        Server { local, bp, lost }
    }

    impl Server {
        async fn member(&self, n: u64, group: &GroupName) -> (ConnectionId, OutboxReceiver) {
            let id = ConnectionId {
                node: self.local.node(),
                local: n,
            };
            let (outbox, rx) = Outbox::new(
                16,
                SlowConsumerPolicy::Disconnect,
                Arc::new(HubMetrics::default()),
            );
            self.local.register(Member {
                id,
                user: Some(format!("u{n}").into()),
                outbox,
            });
            let first = self.local.join(group, id).expect("joins").first_local;
            let info = MemberInfo {
                connection: id,
                user: Some(format!("u{n}")),
            };
            self.bp
                .joined(group, &info, first)
                .expect("a join future")
                .await
                .expect("joined");
            (id, rx)
        }

        /// Delivers here as the runtime does, then publishes.
        async fn push(&self, dest: Destination, frame: &'static [u8]) -> Result<(), GroupError> {
            let frame = Bytes::from_static(frame);
            match &dest {
                Destination::Group { group, target } => {
                    self.local.deliver(group.as_str(), target, &frame);
                }
                Destination::Connections(ids) => {
                    self.local.deliver_to(ids, &frame);
                }
            }
            match self.bp.publish(&dest, &frame) {
                Some(f) => f.await,
                None => Ok(()),
            }
        }
    }

    /// The frames in `rx` right now (delivery on the bus is synchronous).
    async fn frames(rx: &mut OutboxReceiver) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(Some(Next::Frame(f, _))) =
            tokio::time::timeout(Duration::from_millis(1), poll_fn(|cx| rx.poll_next(cx))).await
        {
            out.push(f.bytes);
        }
        out
    }

    fn room() -> GroupName {
        GroupName::new("room").expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn every_destination_reaches_the_other_servers_once() {
        let bus = Bus::new();
        let (a, b, c) = (server(&bus, 1), server(&bus, 2), server(&bus, 3));
        let (a1, mut ra1) = a.member(1, &room()).await;
        let (b1, mut rb1) = b.member(1, &room()).await;
        let (b2, mut rb2) = b.member(2, &room()).await;
        let (c1, mut rc1) = c.member(1, &GroupName::new("other").expect("valid")).await;

        a.push(Destination::group(room()), b"all")
            .await
            .expect("ok");
        a.push(Destination::group(room()).except(&[a1, b2]), b"except")
            .await
            .expect("ok");
        a.push(Destination::group(room()).only(&[b2, c1]), b"only")
            .await
            .expect("ok");
        a.push(Destination::Connections(Arc::from([b1, c1])), b"direct")
            .await
            .expect("ok");
        assert_eq!(frames(&mut ra1).await, [&b"all"[..]]);
        assert_eq!(
            frames(&mut rb1).await,
            [&b"all"[..], &b"except"[..], &b"direct"[..]]
        );
        assert_eq!(frames(&mut rb2).await, [&b"all"[..], &b"only"[..]]);
        // c1 is not in the room: only the direct send reaches it.
        assert_eq!(frames(&mut rc1).await, [&b"direct"[..]]);
    }

    #[tokio::test(start_paused = true)]
    async fn sends_to_this_servers_connections_publish_nothing() {
        let bus = Bus::new();
        let a = server(&bus, 1);
        let (a1, _ra1) = a.member(1, &room()).await;
        let only_local = Destination::Group {
            group: room(),
            target: Target::Only(Arc::from([a1])),
        };
        assert!(a.bp.publish(&only_local, &Bytes::new()).is_none());
        let gone = ConnectionId {
            node: NodeId(1),
            local: 9,
        };
        let direct = Destination::Connections(Arc::from([gone]));
        assert!(a.bp.publish(&direct, &Bytes::new()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn counts_members_outage_and_crash() {
        let bus = Bus::new();
        let (a, b) = (server(&bus, 1), server(&bus, 2));
        let (_a1, mut ra1) = a.member(1, &room()).await;
        let (b1, _rb1) = b.member(1, &room()).await;
        let (b2, _rb2) = b.member(2, &room()).await;
        let count = a.bp.member_count(&room()).expect("count").await;
        assert_eq!(count.expect("ok"), 3);
        let members = a.bp.members(&room()).expect("members").await.expect("ok");
        assert_eq!(members.len(), 3);
        assert!(members.windows(2).all(|w| w[0] <= w[1]), "sorted");

        bus.set_down(true);
        let err = b
            .push(Destination::group(room()), b"lost")
            .await
            .unwrap_err();
        assert!(matches!(err, GroupError::Unavailable { .. }), "{err}");
        assert!(a.bp.member_count(&room()).expect("count").await.is_err());
        bus.set_down(false);
        b.push(Destination::group(room()), b"back")
            .await
            .expect("ok");
        assert_eq!(frames(&mut ra1).await, [&b"back"[..]]);

        bus.crash(NodeId(2));
        assert_eq!(
            a.bp.member_count(&room())
                .expect("count")
                .await
                .expect("ok"),
            1
        );
        let lost = a.lost.lock().expect("lock").clone();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].server, NodeId(2));
        let gone: Vec<ConnectionId> = lost[0].members.iter().map(|m| m.connection).collect();
        assert_eq!(gone, [b1, b2]);
        assert!(b.lost.lock().expect("lock").is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_leave_unsubscribes_and_shutdown_removes_presence() {
        let bus = Bus::new();
        let (a, b) = (server(&bus, 1), server(&bus, 2));
        let (_a1, mut ra1) = a.member(1, &room()).await;
        let (b1, _rb1) = b.member(1, &room()).await;
        // b's member leaves: b unsubscribes and its entry goes.
        let left = b.local.leave(&room(), b1);
        let info = MemberInfo {
            connection: b1,
            user: Some("u1".into()),
        };
        b.bp.left(&room(), &info, left.last_local)
            .expect("a leave future")
            .await
            .expect("left");
        assert_eq!(
            a.bp.member_count(&room())
                .expect("count")
                .await
                .expect("ok"),
            1
        );
        let subscribed = bus
            .lock()
            .channels
            .get(&(HUB, Key::Group(room())))
            .map(|s| s.iter().map(|(n, _)| *n).collect::<Vec<_>>());
        assert_eq!(subscribed, Some(vec![NodeId(1)]));
        a.bp.shutdown().expect("shutdown").await;
        assert_eq!(
            b.bp.member_count(&room())
                .expect("count")
                .await
                .expect("ok"),
            0
        );
        b.push(Destination::group(room()), b"after")
            .await
            .expect("ok");
        assert!(frames(&mut ra1).await.is_empty());
    }

    #[test]
    fn a_server_whose_runtime_stops_is_dead_on_the_bus() {
        let bus = Bus::new();
        let main = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let a = main.block_on(async { server(&bus, 1) });
        let (_a1, _ra1) = main.block_on(a.member(1, &room()));
        // B lives on a runtime of its own, and dies with it.
        let doomed = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let b = doomed.block_on(async { server(&bus, 2) });
        let (b1, _rb1) = doomed.block_on(b.member(1, &room()));
        let count = |s: &Server| main.block_on(s.bp.member_count(&room()).expect("count"));
        assert_eq!(count(&a).expect("ok"), 2);
        doomed.shutdown_background();
        assert_eq!(count(&a).expect("ok"), 1);
        let lost = a.lost.lock().expect("lock").clone();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].members[0].connection, b1);
        // A hub that is dropped is not dead: it left.
        let c = main.block_on(async { server(&bus, 3) });
        let (_c1, _rc1) = main.block_on(c.member(1, &room()));
        main.block_on(c.bp.shutdown().expect("shutdown"));
        drop(c);
        main.block_on(tokio::task::yield_now());
        assert_eq!(count(&a).expect("ok"), 1);
        assert_eq!(a.lost.lock().expect("lock").len(), 1);
    }
}
