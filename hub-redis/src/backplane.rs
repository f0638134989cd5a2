//! The Redis backplane of one hub: its [`Transport`] (pub/sub channels, through the
//! link supervisor and the pipelining publisher) and its [`Presence`] store (keys
//! with a liveness registration per server), under hub-core's [`Relay`].

use std::sync::atomic::{AtomicBool, AtomicU32};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use hub_core::history::{GroupHistory, HistoryEntry, HistoryPage, HistoryQuery};
use hub_core::relay::{Channel, Presence, Relay, Transport};
use hub_core::remote::Inbox;
use hub_core::session::SessionRecord;
use hub_core::{
    BindContext, BoxFuture, ConnectionId, GroupError, GroupName, HubMetrics, MemberInfo, NodeId,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::Config;
use crate::keys::Keys;
use crate::link::{self, Sub, SubOp};
use crate::presence;
use crate::publish::{self, PubReq};
use crate::shared::{BACKPLANE, Link, Registration, Shared, unavailable};

/// How one hub's envelopes cross Redis. Its tasks (link supervisor, publisher) stop
/// when it is dropped or shut down.
pub(crate) struct RedisTransport {
    /// State shared with the tasks.
    shared: Arc<Shared>,
    /// Subscribe/unsubscribe requests to the supervisor (bounded: 1024; senders wait).
    ops: mpsc::Sender<SubOp>,
    /// Publishes to the publisher task (bounded by `publish_queue`; senders wait,
    /// within the publish timeout).
    publishes: mpsc::Sender<PubReq>,
    /// Cancels the tasks when the backplane goes away.
    _stop: DropGuard,
}

/// Who is a member where, in Redis keys.
pub(crate) struct RedisPresence {
    shared: Arc<Shared>,
}

impl RedisTransport {
    /// Starts the tasks of one hub on the current Tokio runtime.
    pub(crate) fn start(
        cfg: Arc<Config>,
        wire: Arc<crate::wire::Wire>,
        ctx: BindContext,
    ) -> Result<Relay<RedisTransport, RedisPresence>, GroupError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| unavailable("the Redis provider must be bound inside a Tokio runtime"))?;
        let node = ctx.local.node();
        let keys = Keys::new(&cfg.prefix, ctx.hub);
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            hub: ctx.hub,
            node_channel: keys.node_channel(node),
            keys,
            node,
            origin: node.to_string(),
            inbox: Inbox::new(ctx.hub, ctx.local.clone(), ctx.metrics.clone(), ctx.events),
            local: ctx.local,
            metrics: ctx.metrics,
            link: watch::Sender::new(Link::Connecting),
            presence: tokio::sync::RwLock::new(Registration::default()),
            next_inc: AtomicU32::new(1),
            janitor_busy: AtomicBool::new(false),
            sessions: Default::default(),
            cancel: cancel.clone(),
            hub_id: wire.hub_id(),
            wire,
            cfg,
        });
        let (ops_tx, ops_rx) = mpsc::channel(1024);
        let (pub_tx, pub_rx) = mpsc::channel(shared.cfg.publish_queue);
        runtime.spawn(link::supervise(shared.clone(), ops_rx));
        runtime.spawn(publish::run(shared.clone(), pub_rx));
        let transport = RedisTransport {
            shared: shared.clone(),
            ops: ops_tx,
            publishes: pub_tx,
            _stop: cancel.drop_guard(),
        };
        Ok(Relay::new(
            shared.inbox.clone(),
            transport,
            RedisPresence { shared },
        ))
    }

    /// Asks the supervisor to (un)subscribe a group's channel or another server's;
    /// resolves once done.
    async fn subscription(&self, sub: Sub, subscribe: bool) -> Result<(), GroupError> {
        let op = if subscribe {
            "subscribe"
        } else {
            "unsubscribe"
        };
        if subscribe {
            self.shared.conn(op).await?;
        } else if !self.shared.is_up() {
            // Nothing is subscribed on a lost connection, and a reconnect only
            // resubscribes groups that still have members here (and servers still
            // adopted).
            return Ok(());
        }
        let after = self.shared.cfg.command_timeout;
        let (done, rx) = oneshot::channel();
        let request = SubOp {
            sub,
            subscribe,
            done,
        };
        let wait = async {
            self.ops
                .send(request)
                .await
                .map_err(|_| unavailable("the hub is shut down"))?;
            rx.await.map_err(|_| unavailable("the hub is shut down"))?
        };
        hub_core::deadline(BACKPLANE, op, after, wait).await
    }

    /// Publishes one envelope: queued for the publisher, which pipelines it with others.
    async fn publish_one(
        &self,
        channel: String,
        offsets: Option<(String, Option<String>)>,
        payload: Bytes,
    ) -> Result<(), GroupError> {
        let after = self.shared.cfg.publish_timeout;
        let timed_out = || GroupError::Timeout {
            backplane: BACKPLANE,
            op: "publish",
            after,
        };
        let enqueue = async {
            // Fails at once while the link is down; waits while first connecting.
            if !self.shared.is_up() {
                self.shared.conn("publish").await?;
            }
            let (done, rx) = oneshot::channel();
            self.publishes
                .send(PubReq {
                    channel,
                    offsets,
                    payload,
                    done,
                })
                .await
                .map_err(|_| unavailable("publish: the hub is shut down"))?;
            Ok::<_, GroupError>(rx)
        };
        let rx = tokio::time::timeout(after, enqueue)
            .await
            .map_err(|_| timed_out())??;
        if !self.shared.cfg.confirm_publishes {
            // The publisher counts a later failure (nobody waits for the answer).
            return Ok(());
        }
        // The publisher answers within its own pipeline deadline, and on a timeout marks
        // the link down *before* it answers, so the next publish fails fast. (A deadline
        // of our own here would race it.) The bound only guards against a publisher held
        // up behind earlier pipelines, each of which has the same deadline.
        tokio::time::timeout(after.saturating_mul(2), rx)
            .await
            .map_err(|_| timed_out())?
            .map_err(|_| unavailable("publish: the hub is shut down"))?
    }
}

impl Transport for RedisTransport {
    /// No: a publish waits for Redis's answer (numbering under a lock would make a
    /// group's pushes wait for each other's round trips), and with group offsets on
    /// Redis numbers the pushes itself.
    fn numbers_pushes(&self) -> bool {
        false
    }

    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn publish<'a>(
        &'a self,
        channel: Channel<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let offsets = match channel {
            Channel::Group(g) if self.shared.cfg.group_offsets => Some((
                self.shared
                    .keys
                    .offsets(g.as_str(), self.shared.cfg.sharded),
                self.shared.cfg.history.map(|_| {
                    self.shared
                        .keys
                        .history(g.as_str(), self.shared.cfg.sharded)
                }),
            )),
            _ => None,
        };
        Box::pin(self.publish_one(self.shared.keys.channel(channel), offsets, payload))
    }

    fn subscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(self.subscription(Sub::Group(group.clone()), true))
    }

    fn unsubscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(self.subscription(Sub::Group(group.clone()), false))
    }

    fn subscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(self.subscription(Sub::Node(node), true))
    }

    fn unsubscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(self.subscription(Sub::Node(node), false))
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.shared.cfg.max_payload)
    }

    fn history(&self) -> Option<Arc<dyn GroupHistory>> {
        self.shared.cfg.history.map(|_| {
            Arc::new(RedisHistory {
                shared: Arc::downgrade(&self.shared),
            }) as Arc<dyn GroupHistory>
        })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        self.shared.cancel.cancel();
        Box::pin(async {})
    }
}

impl Presence for RedisPresence {
    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        first: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(presence::join(&self.shared, group, member, first))
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(presence::leave(&self.shared, group, member, last))
    }

    fn count<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<u64, GroupError>> {
        Box::pin(presence::count(&self.shared, group))
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>> {
        Box::pin(presence::members(&self.shared, group))
    }

    fn shares_sessions(&self) -> bool {
        true
    }

    fn save_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            presence::save_session(&self.shared, record, None, ttl)
                .await
                .map(|_| ())
        })
    }

    fn claim_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        from: NodeId,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, GroupError>> {
        Box::pin(presence::save_session(
            &self.shared,
            record,
            Some(from),
            ttl,
        ))
    }

    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, GroupError>> {
        Box::pin(presence::load_session(&self.shared, connection))
    }

    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(presence::drop_session(&self.shared, connection, server))
    }

    fn server_alive<'a>(&'a self, node: NodeId) -> BoxFuture<'a, Result<bool, GroupError>> {
        Box::pin(presence::server_alive(&self.shared, node))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = presence::unregister(&self.shared).await {
                HubMetrics::incr(&self.shared.metrics.backplane_errors);
                tracing::warn!(hub = self.shared.hub, error = %e, "could not remove presence entries at shutdown");
            }
        })
    }
}

/// A group's history, in its Redis stream (with `RedisProviderBuilder::history`).
/// Holds the backplane weakly: the inbox that reads it belongs to the backplane.
pub(crate) struct RedisHistory {
    shared: Weak<Shared>,
}

impl GroupHistory for RedisHistory {
    fn read<'a>(
        &'a self,
        group: &'a GroupName,
        query: HistoryQuery,
    ) -> BoxFuture<'a, Result<HistoryPage, GroupError>> {
        Box::pin(async move {
            let shared = self
                .shared
                .upgrade()
                .ok_or_else(|| unavailable("history: the hub is shut down"))?;
            read_history(&shared, group, query).await
        })
    }
}

/// Reads the offset hash and the stream in one script: the epoch and latest offset,
/// and the messages from offset `after + 1` if the epoch is the query's.
async fn read_history(
    shared: &Shared,
    group: &GroupName,
    query: HistoryQuery,
) -> Result<HistoryPage, GroupError> {
    // A gap is often seen right as the link broke (the subscriber heard of the loss
    // first): wait for the link to come back, within the command timeout.
    let mut conn = shared
        .conn_within("history", shared.cfg.command_timeout)
        .await?;
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(publish::HISTORY_READ_SCRIPT)
        .arg(2)
        .arg(shared.keys.offsets(group.as_str(), shared.cfg.sharded))
        .arg(shared.keys.history(group.as_str(), shared.cfg.sharded))
        .arg(format!("{}-0", query.after.saturating_add(1)))
        .arg(query.limit.max(1))
        .arg(query.epoch.to_string());
    let reply: Vec<Vec<u8>> = shared
        .timed(
            "history",
            shared.cfg.command_timeout,
            cmd.query_async(&mut conn),
        )
        .await?;
    let number = |b: Option<&Vec<u8>>| {
        b.and_then(|b| std::str::from_utf8(b).ok()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let latest = number(reply.first());
    let epoch = number(reply.get(1));
    let mut entries = Vec::with_capacity(reply.len().saturating_sub(2));
    for m in reply.into_iter().skip(2) {
        match hub_core::remote::split_offset(&Bytes::from(m)) {
            (Some((offset, e)), envelope) if e == epoch => entries.push(HistoryEntry {
                offset,
                prev: offset.saturating_sub(1),
                envelope,
            }),
            _ => HubMetrics::incr(&shared.metrics.backplane_malformed),
        }
    }
    Ok(HistoryPage {
        epoch,
        latest,
        entries: if epoch == query.epoch {
            entries
        } else {
            Vec::new()
        },
    })
}
