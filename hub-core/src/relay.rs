//! A [`Backplane`] made of a backend's two parts: a [`Transport`] that moves bytes
//! between servers and a [`Presence`] store that knows who is a member where.
//!
//! Everything else a backplane does is the same for every backend and is written
//! here once: encoding a push into an envelope ([`crate::remote`]), skipping what
//! needs no publish (a send to this server's own connections), splitting a send to
//! named connections by server, the size check against the transport's limit,
//! subscribing on a join and unsubscribing on the last leave, and the ordering of
//! shutdown. A transport's readers hand what they receive to the [`Inbox`], which
//! delivers it to this server's members.
//!
//! ```text
//!   hub runtime ──► Relay (Backplane) ──► Transport::publish(channel, envelope)
//!                     │                   Transport::subscribe / unsubscribe(group)
//!                     └──────────────────► Presence::joined / left / count / members
//!   transport reader ──► Inbox::receive(envelope, via) ──► LocalGroups
//! ```
//!
//! `docs/backends.md` walks through a complete backend.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::history::GroupHistory;
use crate::remote::{self, Inbox};
use crate::session::SessionRecord;
use crate::{
    Backplane, BoxFuture, ConnectionId, Destination, GroupError, GroupName, MemberInfo, NodeId,
    Target,
};

/// Where a transport publishes an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A group's channel (subject, stream): every server subscribed to the group
    /// receives it, and hands it to its inbox with [`remote::Via::Group`].
    Group(&'a GroupName),
    /// One server's own channel, which it subscribes to for as long as it runs: sends
    /// to its connections, handed to its inbox with [`remote::Via::Node`]. A server
    /// that holds a connection whose id names another server (a session restored
    /// there) subscribes to that server's channel too, while it holds one
    /// ([`Transport::subscribe_node`]).
    Node(NodeId),
}

/// How a backend moves envelopes between servers: what a new backend writes first.
///
/// Every method is called concurrently from many connections' tasks; none may block
/// the thread. Each resolves within the backend's own deadline: a transport never
/// leaves a caller waiting on a backplane that stopped answering.
pub trait Transport: Send + Sync + 'static {
    /// A short name for logs and errors ("redis", "nats").
    fn name(&self) -> &'static str;

    /// Sends one envelope to every server subscribed to `channel` (this server may get
    /// it back: its inbox skips its own). Envelopes published by one caller to one
    /// channel must arrive in the order they were published.
    fn publish<'a>(
        &'a self,
        channel: Channel<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Makes sure this server receives the envelopes of `group`'s channel. Called on
    /// every local join, so it must resolve at once when already subscribed; once it
    /// returns `Ok`, envelopes published to the group after that reach this server.
    fn subscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Stops receiving `group`'s channel: its last local member left. A join may race
    /// it, so a transport that unsubscribes checks that the group is still empty here
    /// ([`Inbox::local`]) and keeps its own record of what it is subscribed to.
    fn unsubscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>>;

    /// Makes sure this server receives the envelopes of server `node`'s channel (another
    /// server's), handed to the inbox with [`remote::Via::Node`]: this server holds a
    /// connection whose id names `node` (a session restored here), and sends, asks and
    /// commands for it are routed to `node`'s channel. Called for every such
    /// connection, so it resolves at once when already subscribed; once it returns
    /// `Ok`, envelopes published to that channel after that reach this server.
    ///
    /// The default fails: a transport that cannot follow a connection to the server
    /// holding it refuses to restore sessions from other servers (they resume where
    /// they were held, or answer `UNKNOWN`), rather than lose its sends unseen.
    fn subscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        let name = self.name();
        Box::pin(async move {
            Err(GroupError::Unavailable {
                backplane: name,
                message: format!(
                    "this transport cannot listen on the channel of server {node} (a session restored from there)"
                ),
                source: None,
            })
        })
    }

    /// Stops receiving server `node`'s channel: this server holds no connection whose
    /// id names it any more. A restore may race it, so a transport checks
    /// [`Inbox::is_adopted`] before it unsubscribes. Default: nothing to do.
    fn unsubscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        let _ = node;
        Box::pin(async { Ok(()) })
    }

    /// The largest envelope the transport carries, in bytes, if it has a limit. Larger
    /// envelopes fail with [`GroupError::TooLarge`] before they are published.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// Whether the relay numbers this server's pushes to each group (`origin_seq` in
    /// the envelope), so receivers detect a push lost on the way. The relay holds a
    /// lock of the group's from numbering a push until `publish` resolves (the numbers
    /// go out in order), so a transport whose `publish` waits for a broker round trip,
    /// or whose broker numbers group envelopes itself, returns `false`. Default: `true`.
    fn numbers_pushes(&self) -> bool {
        true
    }

    /// The history of group envelopes this transport keeps, if any: the [`Inbox`]
    /// fills gaps in a group's offsets from it, and the runtime may read it
    /// ([`Backplane::history`]). Default: none. Called once, by [`Relay::new`].
    fn history(&self) -> Option<Arc<dyn GroupHistory>> {
        None
    }

    /// The hub is shutting down, after [`Presence::shutdown`]: stop the readers and
    /// background tasks, flush what is buffered.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Where a backend keeps which connections are members of which groups on every
/// server, so that counts and member lists cover all of them, and how it notices a
/// server that died (reporting its members through [`Inbox::events`]).
pub trait Presence: Send + Sync + 'static {
    /// `member` joined `group` on this server (`first`: a hint that it is the first
    /// one here).
    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        first: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// `member` left `group` on this server, or disconnected (`last`: a hint that no
    /// member is left here).
    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>>;

    /// The number of members of `group` on every live server.
    fn count<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<u64, GroupError>>;

    /// The members of `group` on every live server, in any order.
    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>;

    /// The hub is shutting down: remove this server's entries (others see its members
    /// leave now, not when an entry expires).
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Whether this store keeps session records ([`crate::session`]), so that a
    /// session can be resumed on another server. Default `false`: the session
    /// methods below are never called.
    fn shares_sessions(&self) -> bool {
        false
    }

    /// Writes the record of a session this server holds (`record.server`), unless
    /// another server holds it now (a record claimed by another is left alone). It
    /// lives `ttl` past this server's last presence heartbeat: the store refreshes
    /// the records of a live server, until [`Presence::drop_session`].
    fn save_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let _ = (record, ttl);
        Box::pin(async { Ok(()) })
    }

    /// Writes `record` (held by this server now) only if the stored record is held
    /// by `from`, atomically: of two servers resuming one session, one wins.
    /// Returns whether it did.
    fn claim_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        from: NodeId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, GroupError>> {
        let _ = (record, from, ttl);
        Box::pin(async { Ok(false) })
    }

    /// The record of the session of `connection`, if one lives.
    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, GroupError>> {
        let _ = connection;
        Box::pin(async { Ok(None) })
    }

    /// Deletes the record of `connection` if `server` (this server) holds it: the
    /// session ended here.
    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let _ = (connection, server);
        Box::pin(async { Ok(()) })
    }

    /// Whether server `node` is alive (its presence has not expired).
    fn server_alive<'a>(&'a self, node: NodeId) -> BoxFuture<'a, Result<bool, GroupError>> {
        let _ = node;
        Box::pin(async { Ok(false) })
    }
}

/// The [`Backplane`] of one hub over a [`Transport`] and a [`Presence`] store: what a
/// provider's `bind` returns.
#[derive(Debug)]
pub struct Relay<T, P> {
    inbox: Inbox,
    transport: T,
    presence: P,
}

impl<T: Transport, P: Presence> Relay<T, P> {
    /// The backplane of the hub whose `inbox` the transport's readers deliver to.
    /// Gives the inbox the transport's history, if it keeps one (gap fills).
    pub fn new(inbox: Inbox, transport: T, presence: P) -> Self {
        if let Some(history) = transport.history() {
            inbox.set_history(history);
        }
        Relay {
            inbox,
            transport,
            presence,
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The presence store.
    pub fn presence(&self) -> &P {
        &self.presence
    }

    /// The inbox envelopes are delivered through.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Counts one adopted connection of `node` fewer; unsubscribes from its channel
    /// with the last (a failure is counted and logged: the subscription only costs
    /// traffic, the envelopes for connections not held here are left alone).
    async fn release_node(&self, node: NodeId) {
        if !self.inbox.release_node(node) {
            return;
        }
        match self.transport.unsubscribe_node(node).await {
            Ok(()) => {
                crate::HubMetrics::incr(&self.inbox.metrics().backplane_nodes_released);
                tracing::debug!(%node, "stopped listening on another server's channel");
            }
            Err(e) => {
                crate::HubMetrics::incr(&self.inbox.metrics().backplane_errors);
                tracing::warn!(%node, error = %e, "could not stop listening on another server's channel");
            }
        }
    }

    /// Checks the size against the transport's limit, then publishes.
    async fn send(&self, channel: Channel<'_>, payload: Bytes) -> Result<(), GroupError> {
        if let Some(max) = self.transport.max_payload()
            && payload.len() > max
        {
            return Err(GroupError::TooLarge {
                backplane: self.transport.name(),
                size: payload.len(),
                max,
            });
        }
        self.transport.publish(channel, payload).await
    }
}

impl<T: Transport, P: Presence> Backplane for Relay<T, P> {
    fn name(&self) -> &'static str {
        self.transport.name()
    }

    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        first: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        Some(Box::pin(async move {
            if first {
                // A new subscription: offsets seen before it say nothing of what follows.
                self.inbox.forget(group.as_str());
            }
            // Every join waits for the subscription (at once when the group is already
            // subscribed), so a push sent after any join reaches the new member.
            let (sub, entry) = tokio::join!(
                self.transport.subscribe(group),
                self.presence.joined(group, member, first)
            );
            sub.and(entry)
        }))
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        Some(Box::pin(async move {
            if !last {
                return self.presence.left(group, member, false).await;
            }
            let (entry, unsub) = tokio::join!(
                self.presence.left(group, member, true),
                self.transport.unsubscribe(group)
            );
            self.inbox.forget(group.as_str());
            entry.and(unsub)
        }))
    }

    fn publish<'a>(
        &'a self,
        dest: &'a Destination,
        frame: &'a Bytes,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let me = self.inbox.local().node();
        let writer = self.inbox.writer();
        match dest {
            // Only connections of this server, which the runtime already served.
            Destination::Group {
                target: Target::Only(ids),
                ..
            } if ids
                .iter()
                .all(|id| id.node == me && self.inbox.local().moved_to(*id).is_none()) =>
            {
                None
            }
            Destination::Group { group, target } if self.transport.numbers_pushes() => Some(
                Box::pin(
                    writer.numbered(group.as_str(), target, frame, move |payload| {
                        self.send(Channel::Group(group), payload)
                    }),
                ),
            ),
            Destination::Group { group, target } => Some(Box::pin(
                self.send(Channel::Group(group), writer.group(group, target, frame)),
            )),
            Destination::Connections(ids) => {
                // One envelope per server named, on that server's own channel. Ids of
                // this server are not connected (the runtime served those that are),
                // unless they moved to another server, which listens on this one's
                // channel for them.
                let split = remote::by_server_moved(self.inbox.local(), ids);
                if split.is_empty() {
                    return None;
                }
                Some(Box::pin(async move {
                    let sends = split.into_iter().map(|(node, ids)| {
                        self.send(Channel::Node(node), writer.connections(&ids, frame))
                    });
                    futures_util::future::try_join_all(sends).await.map(|_| ())
                }))
            }
        }
    }

    fn member_count<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<u64, GroupError>>> {
        Some(self.presence.count(group))
    }

    fn ask<'a>(
        &'a self,
        node: NodeId,
        ids: &'a [crate::ConnectionId],
        ask: &'a crate::proto::Ask,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let payload = self.inbox.writer().ask(ids, ask);
        Some(Box::pin(self.send(Channel::Node(node), payload)))
    }

    fn answer<'a>(
        &'a self,
        node: NodeId,
        answer: &'a crate::proto::Answer,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let payload = self.inbox.writer().answer(answer);
        Some(Box::pin(self.send(Channel::Node(node), payload)))
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>> {
        Some(Box::pin(async move {
            let mut members = self.presence.members(group).await?;
            members.sort();
            Ok(members)
        }))
    }

    fn command<'a>(
        &'a self,
        node: NodeId,
        ids: &'a [ConnectionId],
        command: &'a crate::proto::Command,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let target = Target::Only(ids.into());
        let payload = self.inbox.writer().command("", &target, command);
        Some(Box::pin(self.send(Channel::Node(node), payload)))
    }

    fn adopt<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        if node == self.inbox.local().node() {
            return Some(Box::pin(async { Ok(()) }));
        }
        Some(Box::pin(async move {
            let first = self.inbox.adopt_node(node);
            // Every adoption waits for the subscription (at once when it is there), so
            // a send after any restore reaches the restored connection.
            match self.transport.subscribe_node(node).await {
                Ok(()) => {
                    if first {
                        crate::HubMetrics::incr(&self.inbox.metrics().backplane_nodes_adopted);
                        tracing::debug!(%node, "listening on another server's channel");
                    }
                    Ok(())
                }
                Err(e) => {
                    self.release_node(node).await;
                    Err(e)
                }
            }
        }))
    }

    fn release<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        if node == self.inbox.local().node() {
            return Some(Box::pin(async { Ok(()) }));
        }
        Some(Box::pin(async move {
            self.release_node(node).await;
            Ok(())
        }))
    }

    fn shares_sessions(&self) -> bool {
        self.presence.shares_sessions()
    }

    fn save_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.presence
            .shares_sessions()
            .then(|| self.presence.save_session(record, ttl))
    }

    fn claim_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        from: NodeId,
        ttl: Duration,
    ) -> Option<BoxFuture<'a, Result<bool, GroupError>>> {
        self.presence
            .shares_sessions()
            .then(|| self.presence.claim_session(record, from, ttl))
    }

    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> Option<BoxFuture<'a, Result<Option<SessionRecord>, GroupError>>> {
        self.presence
            .shares_sessions()
            .then(|| self.presence.load_session(connection))
    }

    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        self.presence
            .shares_sessions()
            .then(|| self.presence.drop_session(connection, server))
    }

    fn server_alive<'a>(&'a self, node: NodeId) -> Option<BoxFuture<'a, Result<bool, GroupError>>> {
        self.presence
            .shares_sessions()
            .then(|| self.presence.server_alive(node))
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        // Room for the envelope of a group push naming up to 16 connections.
        let overhead = self.inbox.writer().overhead(16);
        self.transport
            .max_payload()
            .map(|max| max.saturating_sub(overhead))
    }

    fn history(&self) -> Option<Arc<dyn GroupHistory>> {
        self.inbox.history()
    }

    fn echoes_own_pushes(&self, _group: &GroupName) -> bool {
        self.inbox.history().is_some()
    }

    fn group_position<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<(u64, u64), GroupError>>> {
        let history = self.inbox.history()?;
        Some(Box::pin(async move {
            if let Some(at) = self.inbox.position(group.as_str()) {
                return Ok(at);
            }
            // Nothing delivered here since the subscription began: the group's latest
            // offset (a push after it reaches the new member live).
            let query = crate::history::HistoryQuery {
                epoch: 0,
                after: u64::MAX - 1,
                limit: 1,
            };
            let page = history.read(group, query).await?;
            Ok((page.latest, page.epoch))
        }))
    }

    fn hold_group<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Option<crate::remote::ReplayHold>>> {
        self.inbox.history()?;
        Some(Box::pin(self.inbox.hold(group)))
    }

    fn shutdown(&self) -> Option<BoxFuture<'_, ()>> {
        Some(Box::pin(async move {
            self.presence.shutdown().await;
            self.transport.shutdown().await;
        }))
    }
}
