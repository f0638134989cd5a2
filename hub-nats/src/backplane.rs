//! The backplane of one hub: group subscriptions, publishing, roll calls.
//!
//! Background work (heartbeats, answering roll calls, reading the hub's own
//! subjects, reconnect handling) is in [`crate::tasks`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;

use async_nats::Client;
use async_nats::connection::State;
use bytes::{BufMut, Bytes, BytesMut};
use hub_core::proto as hub_proto;
use hub_core::{
    Backplane, BindContext, BoxFuture, ConnectionId, GroupError, GroupName, HubMetrics,
    LocalGroups, MemberInfo, NodeId, Target,
};
use prost::Message as _;
use prost::encoding::{WireType, encode_key, encode_varint};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::peers::Peers;
use crate::proto::{self, heartbeat::Kind};
use crate::subject::Subjects;
use crate::{BACKPLANE, Config, ProviderShared};

/// The `hub.v1.Envelope` version this crate writes and reads.
pub(crate) const ENVELOPE_VERSION: u32 = 1;

/// Answers one roll call may queue before the asker reads them. A roll call gets
/// one answer per server (more for very long member lists), so this is only hit by
/// a misbehaving publisher; extra answers are dropped and counted in `backplane_errors`.
const ROLL_CALL_QUEUE: usize = 1024;

/// Locks a std mutex; a panic while it was held cannot leave our maps half-updated
/// (every update is one insert or remove), so a poisoned lock is still usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts a background task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Hands envelopes from NATS to this server's members. Cloned into every reader task.
#[derive(Clone, Debug)]
pub(crate) struct Inbound {
    /// The hub's full name, for logs.
    pub(crate) hub: &'static str,
    /// This server's node id as text: envelopes from it are skipped.
    pub(crate) origin: Arc<str>,
    /// The first bytes of every envelope this server publishes (version and origin,
    /// encoded once): our own envelopes, echoed back by NATS, are recognised by this
    /// prefix and skipped without decoding.
    pub(crate) own_head: Bytes,
    /// The hub's members on this server.
    pub(crate) local: Arc<LocalGroups>,
    /// The hub's counters.
    pub(crate) metrics: Arc<HubMetrics>,
}

impl Inbound {
    /// Delivers one received envelope. `subscribed` is the group whose subject it
    /// came on (`None` for this server's own subject).
    pub(crate) fn handle(&self, payload: Bytes, subscribed: Option<&str>) {
        if payload.starts_with(&self.own_head) {
            // Our own broadcast, echoed back by NATS: local members already have it.
            return;
        }
        let env = match hub_proto::Envelope::decode(payload) {
            Ok(env) => env,
            Err(e) => {
                return self.malformed(subscribed, format_args!("not a hub.v1.Envelope: {e}"));
            }
        };
        if env.version != ENVELOPE_VERSION {
            return self.malformed(
                subscribed,
                format_args!("envelope version {} (this server reads 1)", env.version),
            );
        }
        if *env.origin == *self.origin {
            // Ours after all (written by another encoder): already delivered here.
            return;
        }
        if let Some(group) = subscribed
            && env.group != group
        {
            return self.malformed(
                subscribed,
                format_args!("envelope names group {:?}", env.group),
            );
        }
        let target = Target::from_proto(env.target.as_ref());
        if env.group.is_empty() {
            let Target::Only(ids) = &target else {
                return self.malformed(
                    subscribed,
                    format_args!("a send without a group must list its connections"),
                );
            };
            HubMetrics::incr(&self.metrics.backplane_received);
            // Connections that are gone meanwhile miss it: delivery is at-most-once.
            let _ = self.local.deliver_to(ids, &env.frame);
        } else {
            HubMetrics::incr(&self.metrics.backplane_received);
            self.local.deliver(&env.group, &target, &env.frame);
        }
    }

    fn malformed(&self, subscribed: Option<&str>, why: std::fmt::Arguments<'_>) {
        HubMetrics::incr(&self.metrics.backplane_malformed);
        tracing::warn!(
            hub = self.hub,
            group = subscribed.unwrap_or(""),
            "dropped a malformed NATS message: {why}"
        );
    }
}

/// Waiters for messages on this hub's reply inbox (`<inbox>.<token>`), by token.
#[derive(Debug)]
pub(crate) struct Pending {
    /// Token → where its messages go.
    waiters: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    /// Source of tokens.
    next: AtomicU64,
    /// Counts answers dropped because a waiter's queue was full.
    metrics: Arc<HubMetrics>,
}

/// Removes a waiter when its query ends, however it ends.
struct PendingGuard<'a> {
    pending: &'a Pending,
    token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.pending.waiters).remove(&self.token);
    }
}

impl Pending {
    fn new(metrics: Arc<HubMetrics>) -> Self {
        Pending {
            waiters: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            metrics,
        }
    }

    fn register(&self, capacity: usize) -> (PendingGuard<'_>, mpsc::Receiver<Bytes>) {
        let token = self.next.fetch_add(1, Relaxed);
        let (tx, rx) = mpsc::channel(capacity);
        lock(&self.waiters).insert(token, tx);
        (
            PendingGuard {
                pending: self,
                token,
            },
            rx,
        )
    }

    /// Hands a message to the waiter of `token`, if it still waits.
    pub(crate) fn deliver(&self, token: u64, payload: Bytes) {
        let waiters = lock(&self.waiters);
        if let Some(tx) = waiters.get(&token)
            && tx.try_send(payload).is_err()
        {
            HubMetrics::incr(&self.metrics.backplane_errors);
            tracing::warn!(
                token,
                "dropped a reply: its query has {ROLL_CALL_QUEUE} unread answers"
            );
        }
    }
}

/// The subscription of one group on this server.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// The reader task of the group's subscription, while subscribed (dropping it
    /// aborts the task, whose `Subscriber` then unsubscribes). An async lock because
    /// it is held across the subscribe round trip: a second joiner waits for the
    /// first one's subscription instead of returning before it is registered.
    reader: tokio::sync::Mutex<Option<AbortOnDrop>>,
}

/// What a roll call gathered.
#[derive(Debug, Default)]
struct Tally {
    count: u64,
    members: Vec<MemberInfo>,
}

/// The state of one hub bound to NATS, shared with its background tasks (which
/// hold it weakly, so dropping the backplane stops them).
#[derive(Debug)]
pub(crate) struct Inner {
    /// The hub's full name, for logs.
    pub(crate) hub: &'static str,
    /// The provider's NATS connection.
    pub(crate) client: Client,
    /// Timeouts and intervals.
    pub(crate) config: Arc<Config>,
    /// The hub's subjects.
    pub(crate) subjects: Subjects,
    /// This server.
    pub(crate) node: NodeId,
    /// Local members, counters, and the delivery of received envelopes.
    pub(crate) inbound: Inbound,
    /// Group → its subscription here. Entries exist while the group has local members
    /// (and briefly around joins and leaves).
    groups: Mutex<HashMap<GroupName, Arc<Slot>>>,
    /// This hub's reply inbox: roll-call answers and round-trip probes come to `<inbox>.<token>`.
    pub(crate) inbox: String,
    /// Waiters on the inbox.
    pub(crate) pending: Arc<Pending>,
    /// The other live servers of this hub.
    pub(crate) peers: Mutex<Peers>,
    /// Set once the hub's own subscriptions (inbox, node, heartbeat, roll call) are made.
    ready: watch::Receiver<bool>,
    /// NATS connections made so far, as last seen (a rise is a reconnect).
    pub(crate) connects: AtomicU64,
    /// Background tasks: stopped when the backplane is dropped or shut down.
    pub(crate) tasks: Mutex<Vec<AbortOnDrop>>,
}

/// The [`Backplane`] of one hub on NATS (what [`crate::NatsProvider`] binds).
#[derive(Debug)]
pub(crate) struct NatsBackplane {
    inner: Arc<Inner>,
}

/// Binds one hub: builds its state and starts its background tasks.
pub(crate) fn bind(
    shared: &ProviderShared,
    ctx: BindContext,
) -> Result<Arc<NatsBackplane>, GroupError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
        GroupError::unavailable(BACKPLANE, "binding a hub to NATS needs a Tokio runtime", e)
    })?;
    let config = shared.config.clone();
    let subjects =
        Subjects::new(&config.prefix, ctx.hub).ok_or_else(|| GroupError::Unavailable {
            backplane: BACKPLANE,
            message: format!(
                "{}.{} is not a valid NATS subject prefix (hub names must be proto full names)",
                config.prefix, ctx.hub
            ),
            source: None,
        })?;
    let node = ctx.local.node();
    let origin: Arc<str> = Arc::from(node.to_string());
    let client = shared.client.clone();
    let inbox = client.new_inbox();
    let (ready_tx, ready) = watch::channel(false);
    let warm_until = Instant::now() + config.roll_call_timeout;
    let connects = client.statistics().connects.load(Relaxed);
    let inner = Arc::new(Inner {
        hub: ctx.hub,
        peers: Mutex::new(Peers::new(origin.to_string(), config.heartbeat, warm_until)),
        inbound: Inbound {
            hub: ctx.hub,
            own_head: envelope_head(&origin),
            origin,
            local: ctx.local,
            metrics: ctx.metrics.clone(),
        },
        pending: Arc::new(Pending::new(ctx.metrics)),
        client,
        config,
        subjects,
        node,
        groups: Mutex::new(HashMap::new()),
        inbox,
        ready,
        connects: AtomicU64::new(connects),
        tasks: Mutex::new(Vec::new()),
    });
    let control = runtime.spawn(crate::tasks::control(
        Arc::downgrade(&inner),
        ready_tx,
        shared.events.subscribe(),
    ));
    lock(&inner.tasks).push(AbortOnDrop(control.abort_handle()));
    tracing::debug!(hub = ctx.hub, %node, subjects = %inner.subjects.base, "hub bound to NATS");
    Ok(Arc::new(NatsBackplane { inner }))
}

/// Fields 1 (version) and 2 (origin) of an envelope, which never change for one hub.
fn envelope_head(origin: &str) -> Bytes {
    let mut b = BytesMut::with_capacity(8 + origin.len());
    encode_key(1, WireType::Varint, &mut b);
    encode_varint(u64::from(ENVELOPE_VERSION), &mut b);
    encode_key(2, WireType::LengthDelimited, &mut b);
    encode_varint(origin.len() as u64, &mut b);
    b.put_slice(origin.as_bytes());
    b.freeze()
}

fn put_bytes_field(tag: u32, value: &[u8], b: &mut BytesMut) {
    encode_key(tag, WireType::LengthDelimited, b);
    encode_varint(value.len() as u64, b);
    b.put_slice(value);
}

impl Inner {
    /// Encodes a `hub.v1.Envelope`: the same bytes as prost would write, without
    /// copying the origin per publish. The frame is copied once, into the message.
    pub(crate) fn envelope(&self, group: &str, target: &Target, frame: &Bytes) -> Bytes {
        let spec = target.to_proto();
        let spec_len = spec.encoded_len();
        let head = &self.inbound.own_head;
        let mut b = BytesMut::with_capacity(head.len() + group.len() + spec_len + frame.len() + 24);
        b.put_slice(head);
        if !group.is_empty() {
            put_bytes_field(3, group.as_bytes(), &mut b);
        }
        encode_key(4, WireType::LengthDelimited, &mut b);
        encode_varint(spec_len as u64, &mut b);
        spec.encode_raw(&mut b);
        if !frame.is_empty() {
            put_bytes_field(5, frame, &mut b);
        }
        b.freeze()
    }

    /// Fails fast while NATS is unreachable: async-nats would queue the command and
    /// send it after a reconnect (or never), and the caller would not know.
    pub(crate) fn check_connected(&self, op: &str) -> Result<(), GroupError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(GroupError::Unavailable {
                backplane: BACKPLANE,
                message: format!("{op}: not connected to NATS ({state}); nothing was sent"),
                source: None,
            }),
        }
    }

    fn timeout(&self, op: &'static str) -> GroupError {
        GroupError::Timeout {
            backplane: BACKPLANE,
            op,
            after: self.config.op_timeout,
        }
    }

    /// Runs `fut` within the operation timeout.
    async fn bounded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, GroupError>>,
    ) -> Result<T, GroupError> {
        tokio::time::timeout(self.config.op_timeout, fut)
            .await
            .unwrap_or_else(|_| Err(self.timeout(op)))
    }

    /// Publishes one message; an error if NATS is down, refuses it, or does not take it in time.
    pub(crate) async fn send(
        &self,
        op: &'static str,
        subject: String,
        payload: Bytes,
    ) -> Result<(), GroupError> {
        self.check_connected(op)?;
        let refused =
            |e| GroupError::unavailable(BACKPLANE, format!("{op}: NATS refused the message"), e);
        let mut publish = std::pin::pin!(self.client.publish(subject, payload));
        // Usually the command queue has room and the publish is done at the first
        // poll: no timer is armed then (it costs about as much as the publish).
        if let Poll::Ready(r) = futures_util::poll!(publish.as_mut()) {
            return r.map_err(refused);
        }
        self.bounded(op, async { publish.await.map_err(refused) })
            .await
    }

    /// Waits until the hub's own subscriptions are made (right after bind).
    async fn wait_ready(&self) -> Result<(), GroupError> {
        if *self.ready.borrow() {
            return Ok(());
        }
        let mut ready = self.ready.clone();
        self.bounded("start-up", async {
            ready
                .wait_for(|r| *r)
                .await
                .map(|_| ())
                .map_err(|_| GroupError::Unavailable {
                    backplane: BACKPLANE,
                    message: "the hub's NATS subscriptions could not be made".into(),
                    source: None,
                })
        })
        .await
    }

    /// Sends an empty message to our own inbox and waits for it to come back: NATS
    /// handles one connection's commands in order, so everything sent before (a new
    /// subscription) has been registered by our NATS server.
    async fn round_trip(&self, op: &'static str) -> Result<(), GroupError> {
        let (guard, mut rx) = self.pending.register(1);
        let subject = format!("{}.{}", self.inbox, guard.token);
        self.bounded(op, async {
            self.client
                .publish(subject, Bytes::new())
                .await
                .map_err(|e| {
                    GroupError::unavailable(BACKPLANE, format!("{op}: round trip failed"), e)
                })?;
            rx.recv().await;
            Ok(())
        })
        .await
    }

    fn slot_is_current(&self, group: &GroupName, slot: &Arc<Slot>) -> bool {
        lock(&self.groups)
            .get(group)
            .is_some_and(|s| Arc::ptr_eq(s, slot))
    }

    /// Whether `group` is subscribed here (without waiting).
    fn is_subscribed(&self, group: &GroupName) -> bool {
        let slot = lock(&self.groups).get(group).cloned();
        slot.is_some_and(|s| s.reader.try_lock().is_ok_and(|r| r.is_some()))
    }

    /// Subscribes to a group's subject unless it already is, and waits until our
    /// NATS server has registered the subscription.
    pub(crate) async fn ensure_subscribed(&self, group: &GroupName) -> Result<(), GroupError> {
        loop {
            let slot = lock(&self.groups).entry(group.clone()).or_default().clone();
            let mut reader = slot.reader.lock().await;
            if !self.slot_is_current(group, &slot) {
                // Released meanwhile: start over with a fresh entry.
                continue;
            }
            if reader.is_some() {
                return Ok(());
            }
            self.wait_ready().await?;
            self.check_connected("join")?;
            let subject = self.subjects.group(group.as_str());
            let sub = self
                .bounded("subscribe", async {
                    self.client.subscribe(subject.clone()).await.map_err(|e| {
                        GroupError::unavailable(
                            BACKPLANE,
                            format!("subscribe to {subject} failed"),
                            e,
                        )
                    })
                })
                .await?;
            let task = tokio::spawn(crate::tasks::read_group(
                sub,
                group.clone(),
                self.inbound.clone(),
            ));
            let guard = AbortOnDrop(task.abort_handle());
            // On error the guard is dropped here, which unsubscribes.
            self.round_trip("subscribe").await?;
            *reader = Some(guard);
            tracing::debug!(hub = self.hub, %group, %subject, "subscribed");
            return Ok(());
        }
    }

    /// Unsubscribes from a group's subject if the group has no local member.
    pub(crate) async fn release(&self, group: &GroupName) {
        let Some(slot) = lock(&self.groups).get(group).cloned() else {
            return;
        };
        let mut reader = slot.reader.lock().await;
        if self.inbound.local.count(group.as_str()) > 0 {
            // Someone joined again meanwhile: keep it.
            return;
        }
        if reader.take().is_some() {
            tracing::debug!(hub = self.hub, %group, "unsubscribed");
        }
        let mut groups = lock(&self.groups);
        if groups.get(group).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
            groups.remove(group);
        }
    }

    /// After a reconnect: every group with local members is subscribed, no other is.
    pub(crate) async fn resync(&self) {
        let local = self.inbound.local.groups();
        for group in &local {
            if !self.is_subscribed(group) {
                tracing::warn!(hub = self.hub, %group, "group with local members was not subscribed; subscribing");
                if let Err(e) = self.ensure_subscribed(group).await {
                    HubMetrics::incr(&self.inbound.metrics.backplane_errors);
                    tracing::warn!(hub = self.hub, %group, error = %e, "resubscribe failed");
                }
            }
        }
        let stale: Vec<GroupName> = lock(&self.groups)
            .keys()
            .filter(|g| self.inbound.local.count(g.as_str()) == 0)
            .cloned()
            .collect();
        for group in stale {
            self.release(&group).await;
        }
    }

    /// Groups subscribed here.
    #[cfg(test)]
    pub(crate) fn subscribed_groups(&self) -> Vec<GroupName> {
        let slots: Vec<(GroupName, Arc<Slot>)> = lock(&self.groups)
            .iter()
            .map(|(g, s)| (g.clone(), s.clone()))
            .collect();
        slots
            .into_iter()
            .filter(|(_, s)| s.reader.try_lock().map_or(true, |r| r.is_some()))
            .map(|(g, _)| g)
            .collect()
    }

    /// Publishes a push for the other servers.
    async fn publish(
        &self,
        group: Option<&GroupName>,
        target: &Target,
        frame: &Bytes,
    ) -> Result<(), GroupError> {
        match group {
            Some(g) => {
                let payload = self.envelope(g.as_str(), target, frame);
                self.send("publish", self.subjects.group(g.as_str()), payload)
                    .await
            }
            None => {
                for (node, ids) in self.remote_by_node(target) {
                    let payload = self.envelope("", &Target::Only(ids.into()), frame);
                    self.send("publish", self.subjects.node(node), payload)
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// The connections of a `Target::Only` that live on other servers, by server.
    fn remote_by_node(&self, target: &Target) -> BTreeMap<NodeId, Vec<ConnectionId>> {
        let mut by_node: BTreeMap<NodeId, Vec<ConnectionId>> = BTreeMap::new();
        if let Target::Only(ids) = target {
            for id in ids.iter().filter(|id| id.node != self.node) {
                by_node.entry(id.node).or_default().push(*id);
            }
        }
        by_node
    }

    /// Asks every server for its members of `group` and gathers the answers: until
    /// every live server answered, or the roll-call timeout.
    async fn roll_call(&self, group: &GroupName, count_only: bool) -> Result<Tally, GroupError> {
        let local = &self.inbound.local;
        let mut tally = if count_only {
            Tally {
                count: local.count(group.as_str()) as u64,
                members: Vec::new(),
            }
        } else {
            let members = local.members(group.as_str());
            Tally {
                count: members.len() as u64,
                members,
            }
        };
        self.wait_ready().await?;
        self.check_connected("member query")?;
        let (expected, warming) = lock(&self.peers).expected(Instant::now());
        if expected.is_empty() && !warming {
            // Alone: nobody to ask.
            return Ok(tally);
        }
        let (guard, mut answers) = self.pending.register(ROLL_CALL_QUEUE);
        let query = proto::RollCall {
            origin: self.inbound.origin.to_string(),
            group: group.as_str().to_owned(),
            count_only,
        };
        let reply = format!("{}.{}", self.inbox, guard.token);
        let payload = Bytes::from(query.encode_to_vec());
        self.bounded("member query", async {
            self.client
                .publish_with_reply(self.subjects.roll_call.clone(), reply, payload)
                .await
                .map_err(|e| {
                    GroupError::unavailable(
                        BACKPLANE,
                        "member query: NATS refused the roll call",
                        e,
                    )
                })
        })
        .await?;

        let deadline = Instant::now() + self.config.roll_call_timeout;
        let mut waiting: HashSet<String> = expected.into_iter().collect();
        let mut answered: HashSet<String> = HashSet::new();
        let mut partial: HashMap<String, Vec<MemberInfo>> = HashMap::new();
        while warming || !waiting.is_empty() {
            let Ok(Some(payload)) = tokio::time::timeout_at(deadline, answers.recv()).await else {
                break;
            };
            let answer = match proto::RollCallAnswer::decode(payload) {
                Ok(a) => a,
                Err(e) => {
                    HubMetrics::incr(&self.inbound.metrics.backplane_malformed);
                    tracing::warn!(hub = self.hub, error = %e, "dropped a malformed roll-call answer");
                    continue;
                }
            };
            if answer.node == *self.inbound.origin || answered.contains(&answer.node) {
                continue;
            }
            lock(&self.peers).seen(&answer.node, Instant::now());
            let part = partial.entry(answer.node.clone()).or_default();
            for m in answer.members {
                match m.connection.parse::<ConnectionId>() {
                    Ok(connection) => part.push(MemberInfo {
                        connection,
                        user: m.user,
                    }),
                    Err(_) => HubMetrics::incr(&self.inbound.metrics.backplane_malformed),
                }
            }
            if !answer.more {
                let members = partial.remove(&answer.node).unwrap_or_default();
                if count_only {
                    tally.count += answer.count;
                } else {
                    tally.count += members.len() as u64;
                    tally.members.extend(members);
                }
                waiting.remove(&answer.node);
                answered.insert(answer.node);
            }
        }
        if !waiting.is_empty() {
            tracing::debug!(
                hub = self.hub,
                %group,
                silent = ?waiting,
                "roll call deadline: these servers did not answer (crashed or slow); their members are not counted"
            );
        }
        drop(guard);
        Ok(tally)
    }

    /// Publishes a heartbeat. Skipped while disconnected.
    pub(crate) async fn heartbeat(&self, kind: Kind) {
        if self.check_connected("heartbeat").is_err() {
            return;
        }
        let beat = proto::Heartbeat {
            node: self.inbound.origin.to_string(),
            interval_ms: u32::try_from(self.config.heartbeat.as_millis()).unwrap_or(u32::MAX),
            kind: kind as i32,
        };
        let payload = Bytes::from(beat.encode_to_vec());
        if let Err(e) = self
            .send("heartbeat", self.subjects.heartbeat.clone(), payload)
            .await
        {
            HubMetrics::incr(&self.inbound.metrics.backplane_errors);
            tracing::warn!(hub = self.hub, error = %e, "heartbeat not sent");
        }
    }

    /// Says goodbye and stops every subscription and task.
    async fn shutdown(&self) {
        self.heartbeat(Kind::Bye).await;
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        drop(tasks);
        let groups = std::mem::take(&mut *lock(&self.groups));
        drop(groups);
        // Push the goodbye and the unsubscribes out before the process goes.
        let _ = tokio::time::timeout(self.config.op_timeout, self.client.flush()).await;
        tracing::debug!(hub = self.hub, "left NATS");
    }
}

impl NatsBackplane {
    /// The state shared with the background tasks (for tests).
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Backplane for NatsBackplane {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        _member: &'a MemberInfo,
        first: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        // `first` is a hint: a join and a leave of the same group can reach us in
        // either order, so the subscription map is what decides.
        if !first && self.inner.is_subscribed(group) {
            return None;
        }
        Some(Box::pin(self.inner.ensure_subscribed(group)))
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        _member: &'a MemberInfo,
        last: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        if !last {
            return None;
        }
        Some(Box::pin(async move {
            self.inner.release(group).await;
            Ok(())
        }))
    }

    fn publish<'a>(
        &'a self,
        group: Option<&'a GroupName>,
        target: &'a Target,
        frame: &'a Bytes,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let remote = |ids: &[ConnectionId]| ids.iter().any(|id| id.node != self.inner.node);
        match (group, target) {
            // Only connections of this server, which the runtime already served:
            // nothing to publish (and, without a group, they are not connected).
            (_, Target::Only(ids)) if !remote(ids) => None,
            (None, Target::All | Target::Except(_)) => None,
            _ => Some(Box::pin(self.inner.publish(group, target, frame))),
        }
    }

    fn member_count<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<u64, GroupError>>> {
        Some(Box::pin(async move {
            Ok(self.inner.roll_call(group, true).await?.count)
        }))
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>> {
        Some(Box::pin(async move {
            let mut members = self.inner.roll_call(group, false).await?.members;
            members.sort();
            Ok(members)
        }))
    }

    fn shutdown(&self) -> Option<BoxFuture<'_, ()>> {
        Some(Box::pin(self.inner.shutdown()))
    }
}

/// Encodes a roll-call answer in parts of at most about `limit` bytes.
pub(crate) fn answer_parts(
    node: &str,
    members: Vec<MemberInfo>,
    count: u64,
    limit: usize,
) -> Vec<proto::RollCallAnswer> {
    let mut parts = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for m in members {
        let member = proto::Member {
            connection: m.connection.to_string(),
            user: m.user,
        };
        let len = member.encoded_len() + 4;
        if size + len > limit && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            size = 0;
        }
        size += len;
        current.push(member);
    }
    parts.push(current);
    let n = parts.len();
    parts
        .into_iter()
        .enumerate()
        .map(|(i, members)| proto::RollCallAnswer {
            node: node.to_owned(),
            count,
            members,
            more: i + 1 < n,
        })
        .collect()
}
