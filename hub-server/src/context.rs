use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hub_core::{
    ConnectionId, Delivery, Destination, GroupError, GroupName, HubMetrics, MemberInfo,
    MetricsSnapshot, Outbox,
};
use tonic::metadata::MetadataMap;

use crate::PushError;
use crate::hub::HubCore;
use crate::identity::{Identity, SetUserError};
use hub_core::ask::{AskOutcome, AskReply};

/// What one connection carries for its whole life.
pub(crate) struct ConnState {
    /// The connection's id.
    pub(crate) id: ConnectionId,
    /// The hub it belongs to.
    pub(crate) core: Arc<HubCore>,
    /// Metadata of the `Connect` request (auth tokens, client version...).
    pub(crate) metadata: MetadataMap,
    /// Extensions of the `Connect` request, as tower layers and interceptors left them.
    pub(crate) extensions: http::Extensions,
    /// The peer's address, when the transport knows it.
    pub(crate) remote_addr: Option<SocketAddr>,
    /// The connection's outbound queue.
    pub(crate) outbox: Outbox,
    /// The user this connection acts as: its identity's, or what `Context::set_user_id`
    /// set on a connection without one.
    pub(crate) user: Mutex<Option<Arc<str>>>,
    /// Who the `Connect` request was authenticated as (fixed for the connection's life).
    pub(crate) identity: Option<Identity>,
    /// A close asked for by `Context::close`, applied by the connection task once the
    /// running call (if any) has sent its reply. The first one stands. (A `OnceLock`:
    /// the connection task looks at it after every call, one atomic load.)
    pub(crate) kick: std::sync::OnceLock<hub_core::CloseReason>,
    /// Wakes the connection task when `kick` is set.
    pub(crate) kicked: tokio::sync::Notify,
    /// The groups it was in, once it left them all at disconnect (before
    /// `on_disconnect` runs, so that counts and member lists no longer show it).
    pub(crate) departed: std::sync::OnceLock<Vec<GroupName>>,
    /// Asks this connection's calls have in flight (`HubConfig::max_asks_per_connection`).
    pub(crate) asks_in_flight: std::sync::atomic::AtomicUsize,
    /// Wakes the connection task when its running call starts waiting on its own
    /// caller's answer (it is then parked, and the next calls run).
    pub(crate) ask_wait: tokio::sync::Notify,
}

/// The per-connection context a hub method gets: who is calling, the request
/// metadata, the caller's push proxy, and the groups API.
///
/// `P` is the hub's generated push type (`FooHubPush`), so pushes are typed:
/// `ctx.group("lobby")?.except([ctx.connection_id()]).on_message(msg).await?`.
/// Cheap to clone; may be kept beyond the call (pushes to a gone connection fail
/// with [`PushError::NotConnected`] or are dropped).
pub struct Context<P> {
    pub(crate) conn: Arc<ConnState>,
    _push: PhantomData<fn() -> P>,
}

impl<P> Clone for Context<P> {
    fn clone(&self) -> Self {
        Context {
            conn: self.conn.clone(),
            _push: PhantomData,
        }
    }
}

impl<P> std::fmt::Debug for Context<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("hub", &self.conn.core.service)
            .field("connection", &self.conn.id)
            .field(
                "user",
                &*self.conn.user.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish()
    }
}

impl<P: From<crate::Push>> Context<P> {
    pub(crate) fn new(conn: Arc<ConnState>) -> Self {
        Context {
            conn,
            _push: PhantomData,
        }
    }

    /// The calling connection's id.
    pub fn connection_id(&self) -> ConnectionId {
        self.conn.id
    }

    /// The metadata of the `Connect` request (e.g. `authorization`).
    pub fn metadata(&self) -> &MetadataMap {
        &self.conn.metadata
    }

    /// The extensions of the `Connect` request (what auth layers inserted).
    pub fn extensions(&self) -> &http::Extensions {
        &self.conn.extensions
    }

    /// The peer's address, when known.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.conn.remote_addr
    }

    /// A handle on the whole hub (pushes to any group, counts, metrics).
    pub fn hub(&self) -> HubHandle<P> {
        HubHandle::new(self.conn.core.clone())
    }

    fn push_to(&self, dest: Destination) -> P {
        let mut push = Push::new(self.conn.core.clone(), dest);
        push.asker = Some(self.conn.clone());
        push.into()
    }

    /// Pushes to (or asks) the caller only.
    pub fn caller(&self) -> P {
        self.connection(self.conn.id)
    }

    /// Pushes to (or asks) the members of a group (refine with `.except(..)` / `.only(..)`).
    pub fn group(&self, group: impl AsRef<str>) -> Result<P, GroupError> {
        Ok(self.push_to(Destination::group(GroupName::new(group.as_ref())?)))
    }

    /// Pushes to (or asks) one connection, on any server.
    pub fn connection(&self, id: ConnectionId) -> P {
        self.push_to(Destination::Connections(Arc::from([id])))
    }

    /// Pushes to (or asks) every connection of the user `user_id`, on any server: the
    /// connections authenticated as that user (see [`crate::identity`]).
    pub fn user(&self, user_id: &str) -> Result<P, GroupError> {
        Ok(self.push_to(Destination::group(GroupName::reserved("user", user_id)?)))
    }

    /// Who the `Connect` request was authenticated as, if anyone: set once, before
    /// `on_connect`, by the hub's [`crate::IdentityProvider`].
    pub fn identity(&self) -> Option<&Identity> {
        self.conn.identity.as_ref()
    }

    /// The user this connection acts as: its [`Context::identity`]'s, or (on a
    /// connection without one) what [`Context::set_user_id`] set. Member lists show it.
    pub fn user_id(&self) -> Option<Arc<str>> {
        self.conn
            .user
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sets (or clears) the user of a connection that was not authenticated when it
    /// opened, for hubs that authenticate inside the stream (a login call that checks a
    /// password itself). Only call it with a user id you have verified: a name taken
    /// from a call argument lets anyone be anyone. Refused on an authenticated
    /// connection ([`SetUserError::Authenticated`]).
    pub async fn set_user_id(&self, user_id: Option<&str>) -> Result<(), SetUserError> {
        if self.conn.identity.is_some() {
            return Err(SetUserError::Authenticated);
        }
        let user = user_id;
        let new_group = user
            .map(|u| GroupName::reserved("user", u))
            .transpose()
            .map_err(GroupError::from)?;
        let old = {
            let mut slot = self.conn.user.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *slot, user.map(Arc::from))
        };
        let core = &self.conn.core;
        core.local.set_user(self.conn.id, user.map(Arc::from));
        if let Some(old) = old {
            let g = GroupName::reserved("user", &old).map_err(GroupError::from)?;
            core.leave(&g, self.conn.id, Some(old.to_string())).await?;
        }
        if let Some(g) = new_group {
            core.join(&g, self.conn.id, user.map(str::to_owned)).await?;
        }
        Ok(())
    }

    /// Adds the caller to a group. Returns the validated name. Joining twice is a no-op.
    pub async fn join(&self, group: impl AsRef<str>) -> Result<GroupName, GroupError> {
        let g = GroupName::new(group.as_ref())?;
        let user = self.user_id().map(|u| u.to_string());
        self.conn.core.join(&g, self.conn.id, user).await?;
        Ok(g)
    }

    /// Removes the caller from a group. Returns whether it was a member.
    pub async fn leave(&self, group: impl AsRef<str>) -> Result<bool, GroupError> {
        let g = GroupName::new(group.as_ref())?;
        let user = self.user_id().map(|u| u.to_string());
        self.conn.core.leave(&g, self.conn.id, user).await
    }

    /// The groups the caller is in (reserved `$user/..` groups included).
    pub fn groups(&self) -> Vec<GroupName> {
        match self.conn.departed.get() {
            // In `on_disconnect`: the groups it was in when it left them.
            Some(groups) => groups.clone(),
            None => self.conn.core.local.groups_of(self.conn.id),
        }
    }

    /// The number of members of a group, on every server.
    pub async fn member_count(&self, group: impl AsRef<str>) -> Result<u64, GroupError> {
        self.hub().member_count(group).await
    }

    /// The members of a group, on every server.
    pub async fn members(&self, group: impl AsRef<str>) -> Result<Vec<MemberInfo>, GroupError> {
        self.hub().members(group).await
    }

    /// Closes the caller's connection with status `code` and `reason` (e.g. a kick).
    /// Called during a call, the close happens after that call's reply; the client gets
    /// what is already queued for it, a goodbye with the reason, then the status.
    /// Calls it sent after this one are not run.
    pub fn close(&self, code: tonic::Code, reason: impl Into<String>) {
        let _ = self
            .conn
            .kick
            .set(hub_core::CloseReason::draining(code, reason));
        self.conn.kicked.notify_one();
    }
}

/// A handle on one hub: pushes from outside calls (a game loop, a timer), member
/// counts, metrics and shutdown. Get it from the hub service (`FooHubServer::handle`)
/// or from [`Context::hub`].
pub struct HubHandle<P> {
    core: Arc<HubCore>,
    _push: PhantomData<fn() -> P>,
}

impl<P> Clone for HubHandle<P> {
    fn clone(&self) -> Self {
        HubHandle {
            core: self.core.clone(),
            _push: PhantomData,
        }
    }
}

impl<P> std::fmt::Debug for HubHandle<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubHandle")
            .field("hub", &self.core.service)
            .field("groups", &self.core.backplane.name())
            .finish()
    }
}

impl<P: From<crate::Push>> HubHandle<P> {
    pub(crate) fn new(core: Arc<HubCore>) -> Self {
        HubHandle {
            core,
            _push: PhantomData,
        }
    }

    /// Pushes to the members of a group.
    pub fn group(&self, group: impl AsRef<str>) -> Result<P, GroupError> {
        let g = GroupName::new(group.as_ref())?;
        Ok(Push::new(self.core.clone(), Destination::group(g)).into())
    }

    /// Pushes to one connection, on any server.
    pub fn connection(&self, id: ConnectionId) -> P {
        self.connections([id])
    }

    /// Pushes to these connections, on any server.
    pub fn connections(&self, ids: impl IntoIterator<Item = ConnectionId>) -> P {
        Push::new(
            self.core.clone(),
            Destination::Connections(ids.into_iter().collect()),
        )
        .into()
    }

    /// Pushes to every connection of the user `user_id` (the connections authenticated
    /// as that user, see [`crate::identity`]), on every server.
    pub fn user(&self, user_id: &str) -> Result<P, GroupError> {
        let g = GroupName::reserved("user", user_id)?;
        Ok(Push::new(self.core.clone(), Destination::group(g)).into())
    }

    /// The number of members of a group, on every server.
    pub async fn member_count(&self, group: impl AsRef<str>) -> Result<u64, GroupError> {
        let g = GroupName::new(group.as_ref())?;
        self.core.member_count(&g).await
    }

    /// The members of a group, on every server.
    pub async fn members(&self, group: impl AsRef<str>) -> Result<Vec<MemberInfo>, GroupError> {
        let g = GroupName::new(group.as_ref())?;
        self.core.members(&g).await
    }

    /// The number of connections of the user `user_id`, on every server.
    pub async fn user_connections(&self, user_id: &str) -> Result<u64, GroupError> {
        let g = GroupName::reserved("user", user_id)?;
        self.core.member_count(&g).await
    }

    /// Connections open on this server.
    pub fn connection_count(&self) -> usize {
        self.core.local.connections()
    }

    /// The hub's counters on this server.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.core.metrics.snapshot()
    }

    /// The hub's counters, live.
    pub fn metrics_handle(&self) -> Arc<HubMetrics> {
        self.core.metrics.clone()
    }

    /// Closes this hub's connections as [`crate::Hubs::shutdown`] does for all hubs.
    pub async fn shutdown(&self, reason: &str, grace: std::time::Duration) {
        self.core.begin_shutdown(reason);
        let _ = tokio::time::timeout(grace, self.core.wait_closed()).await;
    }
}

pub(crate) use crate::hub::SEQ_SUFFIX_BYTES;

/// An untyped push: who receives it. Generated push types (`FooHubPush`) wrap it and
/// add one method per push case, which encodes the frame once and calls
/// [`Push::send_frame`].
#[derive(Clone)]
pub struct Push {
    core: Arc<HubCore>,
    dest: Destination,
    /// Deliver to this server's connections only (see [`Push::local`]).
    local_only: bool,
    /// The connection whose call asks (bounded per connection, cancelled with it).
    asker: Option<Arc<ConnState>>,
    /// How long an ask waits ([`Push::ask_timeout`]); `None`: the hub's default.
    ask_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push").field("dest", &self.dest).finish()
    }
}

impl Push {
    pub(crate) fn new(core: Arc<HubCore>, dest: Destination) -> Self {
        Push {
            core,
            dest,
            local_only: false,
            asker: None,
            ask_timeout: None,
        }
    }

    /// How long an ask waits for each target's answer (default
    /// [`crate::HubConfig::ask_timeout`], 5 s).
    pub fn ask_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.ask_timeout = Some(timeout);
        self
    }

    /// Sends one encoded ask frame (a response with one ask case set; generated ask
    /// methods encode it) to every selected connection, on any server, and waits for
    /// each one's answer, up to the ask's timeout. Returns one [`AskReply`] per target,
    /// in the order the member list (or the connection list) gives them; the answer
    /// is the client's request frame. A group or user ask lists its members first
    /// (every server): if that fails (backplane down), the error, and nobody is asked.
    ///
    /// Asked from a call ([`Context`]), the ask counts against the asking
    /// connection's [`crate::HubConfig::max_asks_per_connection`] and ends (every
    /// outcome `CANCELLED`) if that connection goes away.
    pub async fn ask_frame(&self, frame: Bytes) -> Result<Vec<AskReply<Bytes>>, GroupError> {
        let core = &self.core;
        let mut targets: Vec<(ConnectionId, Option<String>)> = match &self.dest {
            Destination::Group { group, target } => core
                .members(group)
                .await?
                .into_iter()
                .filter(|m| target.selects(&m.connection))
                .map(|m| (m.connection, m.user))
                .collect(),
            Destination::Connections(ids) => ids
                .iter()
                .map(|id| {
                    let user = core
                        .local
                        .member(*id)
                        .and_then(|m| m.user.as_deref().map(str::to_owned));
                    (*id, user)
                })
                .collect(),
        };
        if self.local_only {
            targets.retain(|(c, _)| core.local.answers_for(*c));
        }
        let timeout = self.ask_timeout.unwrap_or(core.config.ask_timeout);
        let Some(asker) = &self.asker else {
            return Ok(core.ask(targets, frame, timeout, true).await);
        };
        let max = core.config.max_asks_per_connection;
        let in_flight = &asker.asks_in_flight;
        if in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= max {
            in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            let refused = || {
                HubMetrics::incr(&core.metrics.asks);
                HubMetrics::incr(&core.metrics.asks_refused);
                AskOutcome::Failed(tonic::Status::resource_exhausted(format!(
                    "this connection already has {max} asks in flight"
                )))
            };
            return Ok(targets
                .into_iter()
                .map(|(connection, user)| AskReply {
                    connection,
                    user,
                    outcome: refused(),
                })
                .collect());
        }
        struct Release<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let _release = Release(in_flight);
        // Asking its own caller from the call itself: the connection parks this call
        // and goes on with the next ones until the answer comes.
        struct SelfAsk(Arc<crate::ask_table::CallState>);
        impl Drop for SelfAsk {
            fn drop(&mut self) {
                self.0
                    .self_asks
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let _self_ask = if targets.iter().any(|(c, _)| *c == asker.id) {
            crate::ask_table::CALL
                .try_with(|call| call.clone())
                .ok()
                .map(|call| {
                    call.self_asks
                        .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                    asker.ask_wait.notify_one();
                    SelfAsk(call)
                })
        } else {
            None
        };
        let listed = targets.clone();
        // Counts the targets as cancelled unless the ask finished: the asking
        // connection closed while it waited, or its call was dropped with it.
        struct Cancelled<'a> {
            metrics: &'a HubMetrics,
            targets: usize,
            finished: bool,
        }
        impl Drop for Cancelled<'_> {
            fn drop(&mut self) {
                if !self.finished {
                    self.metrics.asks_cancelled.add(self.targets as u64);
                }
            }
        }
        let mut cancelled = Cancelled {
            metrics: &core.metrics,
            targets: listed.len(),
            finished: false,
        };
        tokio::select! {
            replies = core.ask(targets, frame, timeout, true) => {
                cancelled.finished = true;
                Ok(replies)
            }
            _ = asker.outbox.closed() => {
                Ok(listed
                    .into_iter()
                    .map(|(connection, user)| AskReply {
                        connection,
                        user,
                        outcome: AskOutcome::Failed(tonic::Status::cancelled(
                            "the asking connection went away",
                        )),
                    })
                    .collect())
            }
        }
    }

    /// Delivers to the selected connections on this server only: nothing is published
    /// to the backplane. For what every server does for its own members, such as
    /// telling them about members lost with another server (`on_members_lost`).
    pub fn local(mut self) -> Self {
        self.local_only = true;
        self
    }

    /// Leaves these connections out (typically the caller: "everyone else in the room").
    pub fn except(mut self, ids: impl IntoIterator<Item = ConnectionId>) -> Self {
        let ids: Vec<ConnectionId> = ids.into_iter().collect();
        self.dest = self.dest.except(&ids);
        self
    }

    /// Keeps only these connections (of the group's members).
    pub fn only(mut self, ids: impl IntoIterator<Item = ConnectionId>) -> Self {
        let ids: Vec<ConnectionId> = ids.into_iter().collect();
        self.dest = self.dest.only(&ids);
        self
    }

    /// Sends one encoded response frame (a push: `id` 0, one `on_*` case set) to the
    /// selected connections. The bytes are shared by every local recipient and
    /// published once to the backplane; nothing is re-encoded.
    pub async fn send_frame(&self, frame: Bytes) -> Result<Delivery, PushError> {
        let core = &self.core;
        // Each recipient's writer appends the push sequence number (a key byte and up
        // to ten varint bytes), so leave room for it: a client whose limit equals the
        // server's must be able to read every frame.
        let max = core.max_outbound().saturating_sub(SEQ_SUFFIX_BYTES);
        if frame.len() > max {
            HubMetrics::incr(&core.metrics.frames_too_large);
            return Err(PushError::TooLarge {
                size: frame.len(),
                max,
            });
        }
        match &self.dest {
            Destination::Group { group, target } => {
                if !self.local_only && core.backplane.echoes_own_pushes(group) {
                    // With history, this server's members get it from the backplane
                    // too, in the group's offset order and with its position.
                    let mut d = Delivery::default();
                    if let Some(publish) = core.backplane.publish(&self.dest, &frame) {
                        core.published(timed(&core.metrics, publish).await, &mut d)?;
                    }
                    return Ok(d);
                }
                let mut d = core.local.deliver(group.as_str(), target, &frame);
                core.metrics.push_fanout.record(f64::from(d.local));
                if self.local_only {
                    return Ok(d);
                }
                if let Some(publish) = core.backplane.publish(&self.dest, &frame) {
                    core.published(timed(&core.metrics, publish).await, &mut d)?;
                }
                Ok(d)
            }
            Destination::Connections(ids) if let Some(dests) = self.own_groups(ids) => {
                // Through each connection's own group (`connection_history`): its
                // offsets and history, whichever server holds it, this one included.
                // (If any of them has none, a shard without history, all go straight
                // to their servers below: delivered, without history.)
                let mut d = Delivery::default();
                let publishes = dests
                    .iter()
                    .filter_map(|dest| core.backplane.publish(dest, &frame));
                let results = futures_util::future::join_all(
                    publishes.map(|publish| timed(&core.metrics, publish)),
                )
                .await;
                // Each outcome counted; the first failure is the error.
                let mut first_error = None;
                for result in results {
                    if let Err(e) = core.published(result, &mut d) {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(d), Err)
            }
            Destination::Connections(ids) => {
                let (mut d, missing) = core.local.deliver_to(ids, &frame);
                core.metrics.push_fanout.record(f64::from(d.local));
                if !missing.is_empty() && !self.local_only {
                    let rest = Destination::Connections(missing.clone().into());
                    match core.backplane.publish(&rest, &frame) {
                        Some(publish) => {
                            core.published(timed(&core.metrics, publish).await, &mut d)?
                        }
                        None if d.local == 0 && d.dropped == 0 => {
                            return Err(PushError::NotConnected(missing[0]));
                        }
                        None => {}
                    }
                }
                Ok(d)
            }
        }
    }

    /// The groups of their own that pushes to `ids` go through
    /// ([`HubCore::connection_group`]), if every one has one and the push is not local
    /// only; `None`: they go straight to the servers holding them.
    fn own_groups(&self, ids: &[ConnectionId]) -> Option<Vec<Destination>> {
        if self.local_only || ids.is_empty() {
            return None;
        }
        ids.iter()
            .map(|id| self.core.connection_group(*id).map(Destination::group))
            .collect()
    }
}

/// Runs a backplane publish, recording how long it took to resolve.
async fn timed<T>(metrics: &HubMetrics, publish: impl std::future::Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let result = publish.await;
    metrics.backplane_publish_seconds.record(started.elapsed());
    result
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, OnceLock};

    use hub_core::{ConnectionId, GroupName, HubMetrics, LocalGroups, LocalOnly, NodeId, Target};
    use tokio::sync::Notify;
    use tokio_util::sync::CancellationToken;

    use super::Push;
    use crate::HubConfig;
    use crate::hub::HubCore;
    use hub_core::Destination;

    fn core() -> Arc<HubCore> {
        let node = NodeId(1);
        Arc::new(HubCore {
            service: "test.v1.Test",
            node,
            local: Arc::new(LocalGroups::new(node)),
            backplane: Arc::new(LocalOnly),
            config: HubConfig::default(),
            metrics: Arc::new(HubMetrics::default()),
            shutdown: CancellationToken::new(),
            shutdown_reason: OnceLock::new(),
            next_conn: AtomicU64::new(0),
            conn_closed: Notify::new(),
            outbound: Arc::new(hub_core::OutboundBudget::unlimited()),
            sessions: None,
            asks: Default::default(),
        })
    }

    /// Connection `n` of a universe of four.
    fn id(n: u64) -> ConnectionId {
        ConnectionId {
            node: NodeId(1),
            local: n,
        }
    }

    fn ids(mask: u8) -> Vec<ConnectionId> {
        (0..4).filter(|n| mask & (1 << n) != 0).map(id).collect()
    }

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Except(u8),
        Only(u8),
    }

    fn apply(push: Push, op: Op) -> Push {
        match op {
            Op::Except(m) => push.except(ids(m)),
            Op::Only(m) => push.only(ids(m)),
        }
    }

    /// Whether connection `n` receives the push, from the push's destination.
    fn receives(push: &Push, n: u64) -> bool {
        push.dest.selects(&id(n))
    }

    /// The selection as sets: `except(X)` removes X, `only(Y)` keeps Y.
    fn expected(start: u8, ops: &[Op]) -> u8 {
        ops.iter().fold(start, |sel, op| match op {
            Op::Except(m) => sel & !m,
            Op::Only(m) => sel & m,
        })
    }

    fn check(start: Push, start_mask: u8, ops: &[Op]) {
        let push = ops.iter().fold(start, |p, op| apply(p, *op));
        let want = expected(start_mask, ops);
        for n in 0..4 {
            assert_eq!(
                receives(&push, n),
                want & (1 << n) != 0,
                "connection {n} after {ops:?} from {start_mask:04b}"
            );
        }
    }

    /// Every sequence of up to three `except`/`only` steps, on a group and on a
    /// connection list, selects exactly what the set algebra says.
    #[test]
    fn except_and_only_compose_like_sets() {
        let core = core();
        let group = GroupName::new("room").expect("valid");
        let masks = 0..16u8;
        let steps: Vec<Op> = masks
            .clone()
            .flat_map(|m| [Op::Except(m), Op::Only(m)])
            .collect();
        let mut sequences: Vec<Vec<Op>> = steps.iter().map(|s| vec![*s]).collect();
        for a in &steps {
            for b in &steps {
                sequences.push(vec![*a, *b]);
            }
        }
        for a in [Op::Except(0b0011), Op::Only(0b0110)] {
            for b in &steps {
                for c in [
                    Op::Except(0b1000),
                    Op::Only(0b0101),
                    Op::Except(0),
                    Op::Only(0b1111),
                ] {
                    sequences.push(vec![a, *b, c]);
                }
            }
        }
        for ops in &sequences {
            let on_group = Push::new(core.clone(), Destination::group(group.clone()));
            check(on_group, 0b1111, ops);
            for start in masks.clone() {
                let on_list = Push::new(core.clone(), Destination::Connections(ids(start).into()));
                check(on_list, start, ops);
            }
        }
    }

    #[test]
    fn composition_keeps_the_group_and_the_simplest_target() {
        let core = core();
        let g = GroupName::new("room").expect("valid");
        let push = Push::new(core.clone(), Destination::group(g.clone()));
        let except = push.clone().except([id(0)]).except([id(1)]);
        assert!(
            matches!(&except.dest, Destination::Group { group: name, target: Target::Except(x) } if *name == g && x[..] == [id(0), id(1)])
        );
        let only = push.clone().except([id(0)]).only([id(0), id(2)]);
        assert!(
            matches!(&only.dest, Destination::Group { group: name, target: Target::Only(x) } if *name == g && x[..] == [id(2)])
        );
        let none = push.only([id(1)]).only([id(2)]);
        assert!(
            matches!(&none.dest, Destination::Group { target: Target::Only(x), .. } if x.is_empty())
        );
    }

    #[tokio::test]
    async fn an_oversized_push_is_refused_before_anything_is_sent() {
        let core = core();
        // The limit leaves room for the sequence number each recipient's copy gets.
        let max = core.config.max_message_bytes - super::SEQ_SUFFIX_BYTES;
        let push = Push::new(
            core,
            Destination::group(GroupName::new("room").expect("valid")),
        );
        let err = push
            .send_frame(bytes::Bytes::from(vec![0u8; max + 1]))
            .await
            .unwrap_err();
        assert!(
            matches!(err, crate::PushError::TooLarge { size, max: m } if size == max + 1 && m == max)
        );
        assert!(
            push.send_frame(bytes::Bytes::from(vec![0u8; max]))
                .await
                .is_ok()
        );
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::OutOfRange);
        // Nobody is connected: an empty group is not an error, a missing connection is.
        assert_eq!(
            push.send_frame(bytes::Bytes::from_static(b"x"))
                .await
                .unwrap()
                .local,
            0
        );
        let direct = Push::new(
            push.core.clone(),
            Destination::Connections(Arc::from([id(3)])),
        );
        let err = direct
            .send_frame(bytes::Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, crate::PushError::NotConnected(c) if c == id(3)),
            "{err:?}"
        );
    }

    /// A frame's `control` (field 15), as an ask frame carries it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct WithControl {
        #[prost(message, optional, tag = "15")]
        control: Option<hub_core::proto::ServerControl>,
    }

    /// Registers connection `n` on `core`; returns its outbox's receiver.
    fn member(core: &HubCore, n: u64) -> hub_core::OutboxReceiver {
        let (outbox, rx) = hub_core::Outbox::new(
            8,
            hub_core::SlowConsumerPolicy::Disconnect,
            Arc::new(HubMetrics::default()),
        );
        core.local.register(hub_core::Member {
            id: id(n),
            user: None,
            outbox,
        });
        rx
    }

    /// The ask id of the next frame queued to `rx`.
    async fn asked(rx: &mut hub_core::OutboxReceiver) -> u64 {
        let next = std::future::poll_fn(|cx| rx.poll_next(cx)).await;
        let Some(hub_core::Next::Frame(f, _)) = next else {
            panic!("no frame: {next:?}");
        };
        let frame = <WithControl as prost::Message>::decode(f.bytes).expect("decodes");
        match frame.control.and_then(|c| c.kind) {
            Some(hub_core::proto::server_control::Kind::Ask(a)) => a.id,
            other => panic!("not an ask: {other:?}"),
        }
    }

    /// On paused time: an ask nobody answers ends at the default timeout (5 s), not
    /// before; an answer from the asked connection resolves its ask, one from another
    /// connection (or a second one) matches nothing.
    #[tokio::test(start_paused = true)]
    async fn asks_time_out_at_the_default_and_answers_resolve_them() {
        use hub_core::ask::AskOutcome;
        let core = core();
        let mut rx = member(&core, 1);
        let push = Push::new(core.clone(), Destination::Connections(Arc::from([id(1)])));
        let started = tokio::time::Instant::now();
        let r = push
            .ask_frame(bytes::Bytes::from_static(b"\x08\x00"))
            .await
            .expect("ask");
        assert_eq!(started.elapsed(), hub_core::ask::DEFAULT_ASK_TIMEOUT);
        assert!(matches!(r[0].outcome, AskOutcome::TimedOut), "{r:?}");
        let first = asked(&mut rx).await;

        let waiting = tokio::spawn({
            let push = push.clone().ask_timeout(std::time::Duration::from_secs(60));
            async move { push.ask_frame(bytes::Bytes::from_static(b"\x08\x00")).await }
        });
        let second = asked(&mut rx).await;
        assert_ne!(first, second);
        let answer = |ask| hub_core::proto::AnswerInfo {
            id: ask,
            error: None,
        };
        // A late answer to the first, and an answer from another connection: unmatched.
        core.asks
            .answered(&core.metrics, id(1), answer(first), bytes::Bytes::new());
        core.asks
            .answered(&core.metrics, id(2), answer(second), bytes::Bytes::new());
        core.asks.answered(
            &core.metrics,
            id(1),
            answer(second),
            bytes::Bytes::from_static(b"yes"),
        );
        let r = waiting.await.expect("task").expect("ask");
        assert!(
            matches!(&r[0].outcome, AskOutcome::Answered(b) if &b[..] == b"yes"),
            "{r:?}"
        );
        let m = core.metrics.snapshot();
        assert_eq!(
            (
                m.asks,
                m.asks_timed_out,
                m.asks_answered,
                m.answers_unmatched
            ),
            (2, 1, 1, 2)
        );
        // The answered ask holds nothing: the connection can be asked again at once.
        assert!(core.asks_idle());
    }
}
