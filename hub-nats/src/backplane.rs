//! The backplane of one hub on NATS: binding (state and tasks), its [`Transport`]
//! (core NATS subjects) and its [`Presence`] store (heartbeats, membership changes
//! and roll calls), under hub-core's [`Relay`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hub_core::relay::{Channel, Presence, Relay, Transport};
use hub_core::remote::Inbox;
use hub_core::session::SessionRecord;
use hub_core::{BindContext, BoxFuture, ConnectionId, GroupError, GroupName, MemberInfo, NodeId};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::members::Whereabouts;
use crate::peers::Peers;
use crate::proto::heartbeat::Kind;
use crate::roll_call;
use crate::sessions::SessionStore;
use crate::state::{Inner, Pending, lock};
use crate::subject::Subjects;
use crate::{BACKPLANE, MissingJetStream, ProviderShared, SharedSessions};

/// The backplane of one hub on NATS, as [`crate::NatsProvider`] binds it.
pub(crate) type NatsBackplane = Relay<NatsTransport, NatsPresence>;

/// How one hub's envelopes cross NATS. The hub's tasks stop when it is dropped or
/// shut down.
#[derive(Debug)]
pub(crate) struct NatsTransport {
    /// State shared with the tasks.
    pub(crate) inner: Arc<Inner>,
    /// Cancels the tasks when the backplane goes away.
    _stop: DropGuard,
}

/// Who is a member where, from heartbeats, membership changes and roll calls.
#[derive(Debug)]
pub(crate) struct NatsPresence {
    inner: Arc<Inner>,
    /// Why sessions are not shared, if JetStream was missing at connect.
    missing: Option<Arc<MissingJetStream>>,
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
    let client = shared.client.clone();
    let replies = client.new_inbox();
    let (ready_tx, ready) = watch::channel(false);
    let warm_until = Instant::now() + config.roll_call_timeout;
    let connects = client.statistics().connects.load(Relaxed);
    let max_payload = client.server_info().max_payload;
    let cancel = CancellationToken::new();
    let sessions = matches!(shared.sessions, SharedSessions::On).then(|| {
        Arc::new(SessionStore::new(
            client.clone(),
            crate::sessions::bucket_name(&subjects.base),
            config.op_timeout,
            config.heartbeat,
        ))
    });
    let missing = match &shared.sessions {
        SharedSessions::Missing(m) => Some(m.clone()),
        _ => None,
    };
    let history = config.history.map(|h| {
        Arc::new(crate::history::NatsHistory::new(
            client.clone(),
            subjects.clone(),
            h,
            config.op_timeout,
        ))
    });
    let inbox = Inbox::new(ctx.hub, ctx.local, ctx.metrics.clone(), ctx.events);
    if history.is_some() {
        inbox.set_shared_offsets();
    }
    let inner = Arc::new(Inner {
        hub: ctx.hub,
        peers: Mutex::new(Peers::new(node.to_string(), config.heartbeat, warm_until)),
        inbox,
        pending: Arc::new(Pending::new(ctx.metrics)),
        whereabouts: Arc::new(Mutex::new(Whereabouts::default())),
        client,
        config,
        subjects,
        node,
        groups: Mutex::new(HashMap::new()),
        replies,
        ready,
        connects: AtomicU64::new(connects),
        changes: AtomicU64::new(0),
        max_payload,
        cancel: cancel.clone(),
        sessions,
        history,
        adopted: Default::default(),
    });
    runtime.spawn(crate::tasks::control(
        inner.clone(),
        ready_tx,
        shared.events.subscribe(),
    ));
    tracing::debug!(hub = ctx.hub, %node, subjects = %inner.subjects.base, max_payload, "hub bound to NATS");
    Ok(Arc::new(Relay::new(
        inner.inbox.clone(),
        NatsTransport {
            inner: inner.clone(),
            _stop: cancel.drop_guard(),
        },
        NatsPresence { inner, missing },
    )))
}

impl Transport for NatsTransport {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn publish<'a>(
        &'a self,
        channel: Channel<'a>,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        let subject = self.inner.subjects.channel(channel);
        match (&self.inner.history, channel) {
            (Some(history), Channel::Group(_)) => Box::pin(async move {
                self.inner.check_sendable("publish", &payload)?;
                history.publish(subject, payload).await
            }),
            _ => Box::pin(self.inner.send("publish", subject, payload)),
        }
    }

    /// Yes without history; with it the stream numbers each group's pushes (and a
    /// group publish waits for JetStream's ack).
    fn numbers_pushes(&self) -> bool {
        self.inner.history.is_none()
    }

    fn history(&self) -> Option<Arc<dyn hub_core::history::GroupHistory>> {
        self.inner.history.clone().map(|h| {
            Arc::new(crate::history::History(h)) as Arc<dyn hub_core::history::GroupHistory>
        })
    }

    fn subscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            if !self.inner.is_subscribed(group) {
                self.inner.ensure_subscribed(group).await?;
            }
            Ok(())
        })
    }

    fn unsubscribe<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            self.inner.release(group).await;
            Ok(())
        })
    }

    fn subscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(self.inner.listen_to_node(node))
    }

    fn unsubscribe_node(&self, node: NodeId) -> BoxFuture<'_, Result<(), GroupError>> {
        Box::pin(async move {
            self.inner.stop_listening_to_node(node).await;
            Ok(())
        })
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.inner.max_payload)
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let inner = &self.inner;
            inner.cancel.cancel();
            let groups = std::mem::take(&mut *lock(&inner.groups));
            drop(groups);
            drop(std::mem::take(&mut *inner.adopted.lock().await));
            // Push the goodbye and the unsubscribes out before the process goes.
            let _ = tokio::time::timeout(inner.config.op_timeout, inner.client.flush()).await;
            tracing::debug!(hub = inner.hub, "left NATS");
        })
    }
}

impl Presence for NatsPresence {
    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        _first: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            self.inner.announce(group, member, true).await;
            Ok(())
        })
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        _last: bool,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            self.inner.announce(group, member, false).await;
            Ok(())
        })
    }

    fn count<'a>(&'a self, group: &'a GroupName) -> BoxFuture<'a, Result<u64, GroupError>> {
        Box::pin(async move { Ok(roll_call::ask(&self.inner, group, true).await?.count) })
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>> {
        Box::pin(async move { Ok(roll_call::ask(&self.inner, group, false).await?.members) })
    }

    fn shares_sessions(&self) -> bool {
        if self.inner.sessions.is_some() {
            return true;
        }
        // Asked only by hubs that keep sessions: the first one says why they stay here.
        if let Some(m) = &self.missing
            && !m.warned.swap(true, Relaxed)
        {
            tracing::warn!(
                hub = self.inner.hub,
                reason = %m.reason,
                "sessions are not shared over NATS (no JetStream at connect): a session resumes only on the server that held it, another answers UNKNOWN"
            );
        }
        false
    }

    fn save_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            match &self.inner.sessions {
                Some(s) => s.save(record, ttl).await,
                None => Ok(()),
            }
        })
    }

    fn claim_session<'a>(
        &'a self,
        record: &'a SessionRecord,
        from: NodeId,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<bool, GroupError>> {
        Box::pin(async move {
            match &self.inner.sessions {
                Some(s) => s.claim(record, from, ttl).await,
                None => Ok(false),
            }
        })
    }

    fn load_session<'a>(
        &'a self,
        connection: ConnectionId,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, GroupError>> {
        Box::pin(async move {
            match &self.inner.sessions {
                Some(s) => s.load(connection).await,
                None => Ok(None),
            }
        })
    }

    fn drop_session<'a>(
        &'a self,
        connection: ConnectionId,
        server: NodeId,
    ) -> BoxFuture<'a, Result<(), GroupError>> {
        Box::pin(async move {
            match &self.inner.sessions {
                Some(s) => s.drop_record(connection, server).await,
                None => Ok(()),
            }
        })
    }

    fn server_alive<'a>(&'a self, node: NodeId) -> BoxFuture<'a, Result<bool, GroupError>> {
        // What the heartbeats say: listed until presumed dead (or said goodbye).
        let alive = node == self.inner.node || lock(&self.inner.peers).listed(&node.to_string());
        Box::pin(async move { Ok(alive) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        // Say goodbye first: the others drop this server's members at once.
        Box::pin(self.inner.heartbeat(Kind::Bye))
    }
}
