//! The [`Backplane`] of one hub on NATS: binding (state and tasks), and what the
//! runtime calls: joins and leaves, publishes, member queries, shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hub_core::remote::{self, Inbox};
use hub_core::{
    Backplane, BindContext, BoxFuture, Destination, GroupError, GroupName, MemberInfo, Target,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::members::Whereabouts;
use crate::peers::Peers;
use crate::proto::heartbeat::Kind;
use crate::roll_call;
use crate::state::{Inner, Pending, lock};
use crate::subject::Subjects;
use crate::{BACKPLANE, ProviderShared};

/// The [`Backplane`] of one hub on NATS (what [`crate::NatsProvider`] binds). Its
/// tasks stop when it is dropped or shut down.
#[derive(Debug)]
pub(crate) struct NatsBackplane {
    /// State shared with the tasks.
    inner: Arc<Inner>,
    /// Cancels the tasks when the backplane goes away.
    _stop: DropGuard,
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
    let inner = Arc::new(Inner {
        hub: ctx.hub,
        peers: Mutex::new(Peers::new(node.to_string(), config.heartbeat, warm_until)),
        inbox: Inbox::new(ctx.hub, ctx.local, ctx.metrics.clone(), ctx.events),
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
    });
    runtime.spawn(crate::tasks::control(
        inner.clone(),
        ready_tx,
        shared.events.subscribe(),
    ));
    tracing::debug!(hub = ctx.hub, %node, subjects = %inner.subjects.base, max_payload, "hub bound to NATS");
    Ok(Arc::new(NatsBackplane {
        inner,
        _stop: cancel.drop_guard(),
    }))
}

impl NatsBackplane {
    /// The state shared with the background tasks (for tests).
    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl Inner {
    /// Publishes a push for the other servers.
    async fn publish(&self, dest: &Destination, frame: &Bytes) -> Result<(), GroupError> {
        let writer = self.inbox.writer();
        match dest {
            Destination::Group { group: g, target } => {
                let payload = writer.group(g, target, frame);
                self.send("publish", self.subjects.group(g.as_str()), payload)
                    .await
            }
            Destination::Connections(ids) => {
                for (node, ids) in remote::by_server(self.node, ids) {
                    let payload = writer.connections(&ids, frame);
                    self.send("publish", self.subjects.node(node), payload)
                        .await?;
                }
                Ok(())
            }
        }
    }

    /// Says goodbye and stops every subscription and task.
    async fn shutdown(&self) {
        self.heartbeat(Kind::Bye).await;
        self.cancel.cancel();
        let groups = std::mem::take(&mut *lock(&self.groups));
        drop(groups);
        // Push the goodbye and the unsubscribes out before the process goes.
        let _ = tokio::time::timeout(self.config.op_timeout, self.client.flush()).await;
        tracing::debug!(hub = self.hub, "left NATS");
    }
}

impl Backplane for NatsBackplane {
    fn name(&self) -> &'static str {
        BACKPLANE
    }

    fn joined<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        _first: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        // `first` is a hint: a join and a leave of the same group can reach us in
        // either order, so the subscription map is what decides.
        Some(Box::pin(async move {
            if !self.inner.is_subscribed(group) {
                self.inner.ensure_subscribed(group).await?;
            }
            self.inner.announce(group, member, true).await;
            Ok(())
        }))
    }

    fn left<'a>(
        &'a self,
        group: &'a GroupName,
        member: &'a MemberInfo,
        last: bool,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        Some(Box::pin(async move {
            self.inner.announce(group, member, false).await;
            if last {
                self.inner.release(group).await;
            }
            Ok(())
        }))
    }

    fn publish<'a>(
        &'a self,
        dest: &'a Destination,
        frame: &'a Bytes,
    ) -> Option<BoxFuture<'a, Result<(), GroupError>>> {
        let remote =
            |ids: &[hub_core::ConnectionId]| ids.iter().any(|id| id.node != self.inner.node);
        match dest {
            // Only connections of this server, which the runtime already served:
            // nothing to publish (and, without a group, they are not connected).
            Destination::Group {
                target: Target::Only(ids),
                ..
            }
            | Destination::Connections(ids)
                if !remote(ids) =>
            {
                None
            }
            _ => Some(Box::pin(self.inner.publish(dest, frame))),
        }
    }

    fn max_frame_bytes(&self) -> Option<usize> {
        // Room for the envelope of a group push naming up to 16 connections.
        Some(
            self.inner
                .max_payload
                .saturating_sub(self.inner.inbox.writer().overhead(16)),
        )
    }

    fn member_count<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<u64, GroupError>>> {
        Some(Box::pin(async move {
            Ok(roll_call::ask(&self.inner, group, true).await?.count)
        }))
    }

    fn members<'a>(
        &'a self,
        group: &'a GroupName,
    ) -> Option<BoxFuture<'a, Result<Vec<MemberInfo>, GroupError>>> {
        Some(Box::pin(async move {
            let mut members = roll_call::ask(&self.inner, group, false).await?.members;
            members.sort();
            Ok(members)
        }))
    }

    fn shutdown(&self) -> Option<BoxFuture<'_, ()>> {
        Some(Box::pin(self.inner.shutdown()))
    }
}
